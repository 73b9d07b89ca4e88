"""Model registry: store model bundles as versions, move them between stages, and fetch them back.

References (`ModelRef.parse`)::

    lulc-segformer              latest version (highest number)
    lulc-segformer@latest       the same
    lulc-segformer@3            version 3
    lulc-segformer@production   the version in stage/alias `production` (also `staging`; `archived`/`none`
                                give the latest version in that stage)
    models:/lulc-segformer@production, models:/lulc-segformer/3   MLflow model URIs are accepted too
    @production                 the configured model name (CLI shorthand)
    LULC-SEG-2                  a Neptune model-version id (project key, model key, number), as the original
                                lulc-utility's MODEL_VERSION named them: model SEG, version 2, on Neptune

Stages: `none`, `staging`, `production`, `archived`. One version holds `staging` and one `production` at a time:
promoting a version displaces the previous holder (production -> archived, staging -> none).

Layout (imports go one way: backends, `gate` and `tracking` import `base`, this module imports them lazily):
`base` (references, registration records, the bundle cache, the `ModelRegistry` interface), `mlflow_backend`
and `neptune_backend` (their client libraries imported lazily), `gate` (the promotion gate), `tracking` (the
training run the curves are logged to, which registration turns into the version), `storage` (pulling a
version's bundle to a directory, as KServe's storage initializer does).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from lulc_core.config import RegistryConfig, RunConfig
from lulc_core.errors import InputError
from lulc_core.registry.base import (
    ALIAS_STAGES,
    REF_HELP,
    STAGES,
    TAG_BANDS,
    TAG_LABEL_SET,
    TAG_METRIC,
    TAG_ONNX,
    TAG_STAGE,
    TAG_TEST_SET,
    BundleCache,
    ModelRef,
    ModelRegistry,
    ModelVersionInfo,
    Registration,
    RegistrationInfo,
    Stage,
    flatten_metrics,
    flatten_params,
    is_model_ref,
    is_neptune_version_id,
    metrics_from_tags,
    parse_stage,
    prepare_registration,
    registration_info,
)
from lulc_core.registry.gate import GateDecision, apply_gate

if TYPE_CHECKING:
    from lulc_core.registry.tracking import TrainingRun

log = logging.getLogger(__name__)


def build_registry(cfg: RegistryConfig, work_dir: Path, ref: str | None = None) -> ModelRegistry:
    """The registry backend of `cfg`; MLflow defaults to `sqlite:///<work_dir>/mlflow.db` (or MLFLOW_TRACKING_URI).

    Resolved bundles are cached under `cfg.cache_dir` or `<work_dir>/registry-cache`. A `ref` that is a Neptune
    model-version id (`LULC-SEG-2`) selects the Neptune backend whatever `cfg.backend` says.
    """
    work_dir = Path(work_dir)
    if ref is not None and cfg.backend != "neptune" and is_neptune_version_id(ref):
        log.info("%s is a Neptune model-version id: resolving it on Neptune", ref)
        cfg = cfg.model_copy(update={"backend": "neptune"})
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else work_dir / "registry-cache"
    if cfg.backend == "mlflow":
        from lulc_core.registry.mlflow_backend import MlflowRegistry

        uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(work_dir)
        root = cfg.artifact_root or work_dir / "mlruns"
        return MlflowRegistry(uri, cfg.model_name, cache_dir, artifact_root=root)
    if cfg.backend == "neptune":
        from lulc_core.registry.neptune_backend import NeptuneRegistry

        return NeptuneRegistry.from_env(cfg, cache_dir)
    raise InputError("registry.backend", f"unknown backend {cfg.backend!r}", "choose 'mlflow' or 'neptune'")


@contextlib.contextmanager
def tracked(
    cfg: RunConfig, registry: ModelRegistry | None = None, join: str | None = None
) -> Iterator[TrainingRun | None]:
    """`training_run(registry, cfg.name)` when `registry.track_training` is on (the registry of `cfg` unless
    given), else None; also None in the extra processes of a multi-process (DDP) run: rank 0 tracks.

    `join`: the id of a run another process started (the pipeline's train step, for the training job it launched):
    the curves go into that run instead of a new one."""
    ranks = (os.environ.get(k, "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    if not cfg.registry.track_training or any(r != "0" for r in ranks):
        yield None
        return
    from lulc_core.registry.tracking import training_run

    with training_run(registry or build_registry(cfg.registry, cfg.work_dir), cfg.name, join=join) as run:
        yield run


def default_tracking_uri(work_dir: Path) -> str:
    """The embedded MLflow store: `sqlite:///<work_dir>/mlflow.db` (absolute)."""
    return f"sqlite:///{(Path(work_dir) / 'mlflow.db').resolve()}"


__all__ = [
    "ALIAS_STAGES",
    "REF_HELP",
    "STAGES",
    "TAG_BANDS",
    "TAG_LABEL_SET",
    "TAG_METRIC",
    "TAG_ONNX",
    "TAG_STAGE",
    "TAG_TEST_SET",
    "BundleCache",
    "GateDecision",
    "ModelRef",
    "ModelRegistry",
    "ModelVersionInfo",
    "Registration",
    "RegistrationInfo",
    "Stage",
    "apply_gate",
    "build_registry",
    "default_tracking_uri",
    "flatten_metrics",
    "flatten_params",
    "is_model_ref",
    "is_neptune_version_id",
    "metrics_from_tags",
    "parse_stage",
    "prepare_registration",
    "registration_info",
    "tracked",
]
