"""Which bundle and which run configuration a predictor uses, for every entry point alike.

`lulc serve`, `python -m serving` (KServe) and `lulc predict --model` take a model source — a bundle directory
(KServe's /mnt/models) or a registry reference (`lulc-sample@production`, a Neptune version id) — and an optional
run configuration. Without one, the configuration saved in the bundle at training time is used, else
./conf/run.yaml.
"""

from __future__ import annotations

from pathlib import Path

from lulc_core.bundle import ModelBundle
from lulc_core.config import RunConfig, load_run_config
from lulc_core.errors import ConfigError, NotFoundError

DEFAULT_CONFIG = Path("conf/run.yaml")


def resolve_source(source: str | Path, config: RunConfig | None) -> tuple[Path, RunConfig]:
    """The local bundle directory of `source` (a path or registry ref) and the run configuration to predict with.

    The configuration is `config` if given, else the one saved in the bundle, else ./conf/run.yaml.
    """
    path = Path(source)
    if not path.is_dir():
        from lulc_core.registry import build_registry, is_model_ref

        if not is_model_ref(str(source)):
            raise NotFoundError(
                f"model {str(source)!r} is neither a bundle directory nor a registry ref (name@stage, or a Neptune "
                "version id such as LULC-SEG-2)"
            )
        cfg = config or default_config()
        path = build_registry(cfg.registry, cfg.work_dir, ref=str(source)).resolve(str(source))
    if config is not None:
        return path, config
    meta = ModelBundle.read_metadata(path)
    if meta.run_config:
        return path, RunConfig.model_validate(meta.run_config)
    return path, default_config()


def default_config() -> RunConfig:
    """./conf/run.yaml, or a clear error when there is none."""
    if not DEFAULT_CONFIG.is_file():
        raise ConfigError("config", "no run configuration given and the bundle has none", "pass --config run.yaml")
    return load_run_config(DEFAULT_CONFIG)
