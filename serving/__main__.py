"""Entry point of the predictor container: `python -m serving --model-dir /mnt/models --model-name lulc`.

Defaults come from the environment where an operator sets them: the model from `LULC_MODEL` (a bundle directory,
a registry ref NAME@STAGE or a Neptune version id such as CA-LULC-21), else `--model-dir`, else (when that does
not exist and Neptune credentials are set) the newest staging version on Neptune, as lulc-utility chose; the port
from `PORT` (8080, KServe's, when unset), the run YAML from `LULC_CONFIG`, the URL prefix behind a proxy from
`ROOT_PATH` and the log level from `LULC_LOG_LEVEL`. The original lulc-utility's variable names are accepted as
deprecated aliases (`lulc_core.legacy_env`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from serving import isolated_argv


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The predictor's command line."""
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    p.add_argument("--model-dir", default="/mnt/models", help="Bundle directory (KServe's storage initializer).")
    p.add_argument(
        "--model",
        default=os.environ.get("LULC_MODEL") or None,
        help="Bundle directory, registry ref NAME@STAGE or Neptune version id (overrides --model-dir; env LULC_MODEL).",
    )
    p.add_argument("--model-name", default="lulc", help="Name on /v1/models/<name> and /v2/models/<name>.")
    p.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("LULC_CONFIG") or None,
        help="Run YAML (imagery store, OSM source, serving; env LULC_CONFIG).",
    )
    p.add_argument("--host", default="127.0.0.1", help="Bind address (0.0.0.0 in a container).")
    p.add_argument(
        "--port",
        "--http_port",
        dest="port",
        type=int,
        default=os.environ.get("PORT") or 8080,  # argparse applies `type` to a string default
        help="HTTP port (env PORT; 8080).",
    )
    p.add_argument(
        "--root-path",
        default=os.environ.get("ROOT_PATH") or None,
        help="URL prefix behind a proxy, e.g. /lulc (env ROOT_PATH; else serving.root_path of the run YAML).",
    )
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="Largest request body (MB); larger -> 413.")
    p.add_argument("--max-concurrency", type=int, default=1, help="Predictions run at once (memory bound).")
    p.add_argument("--timeout-s", type=float, default=600.0, help="Deadline of one prediction (-> 504).")
    p.add_argument("--grace-period-s", type=int, default=30, help="Graceful shutdown: time for requests in flight.")
    p.add_argument(
        "--log-level",
        default=os.environ.get("LULC_LOG_LEVEL") or "INFO",
        help="Logging level of lulc's JSON logs (env LULC_LOG_LEVEL).",
    )
    return p.parse_args(argv)


def default_source(model_dir: str) -> str:
    """`model_dir` if it exists; else, like lulc-utility without MODEL_VERSION, the newest staging version of model
    LULC on the Neptune server of NEPTUNE_API_TOKEN/NEPTUNE_PROJECT (when they are set)."""
    if Path(model_dir).is_dir() or not (os.environ.get("NEPTUNE_API_TOKEN") and os.environ.get("NEPTUNE_PROJECT")):
        return model_dir
    import tempfile

    from lulc_core.config import RegistryConfig
    from lulc_core.registry.neptune_backend import NeptuneRegistry

    registry = NeptuneRegistry.from_env(RegistryConfig(backend="neptune"), Path(tempfile.gettempdir()) / "lulc-neptune")
    version_id = registry.get(f"{registry.model_key}@staging").version_id
    logging.getLogger("serving").info(
        "no LULC_MODEL and no %s: serving %s, the newest staging version on Neptune", model_dir, version_id
    )
    return version_id


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, load the model once and serve until SIGTERM."""
    from lulc_core.legacy_env import apply_legacy_env

    notices = apply_legacy_env()  # before the defaults are read from the environment
    args = parse_args(argv)
    from lulc_core.config import load_run_config
    from lulc_core.errors import InputError, LulcError

    with isolated_argv():
        from serving.observability import configure_logging
        from serving.predictor import LulcModel
        from serving.server import checked_root_path, run_server

    configure_logging(getattr(logging, str(args.log_level).upper(), logging.INFO))
    for notice in notices:
        logging.getLogger("serving").warning(notice)
    try:
        config = load_run_config(args.config) if args.config else None
        model = LulcModel(
            args.model_name,
            args.model or default_source(args.model_dir),
            config,
            device=args.device,
            max_concurrency=args.max_concurrency,
            timeout_s=args.timeout_s,
        )
        model.load()
        root_path = checked_root_path(model.root_path if args.root_path is None else args.root_path)
    except LulcError as exc:
        logging.getLogger("serving").error("cannot start: %s", exc)
        sys.exit(2 if isinstance(exc, InputError) else 1)
    run_server(
        model,
        host=args.host,
        port=args.port,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        grace_period_s=args.grace_period_s,
        root_path=root_path,
    )


if __name__ == "__main__":
    main()
