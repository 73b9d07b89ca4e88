"""Run the training pipeline without a cluster: `kfp.local` with the SubprocessRunner in this environment.

The same pipeline function as on a cluster; every component runs as a subprocess of the current Python
(`use_venv=False`), artifacts are plain files under the pipeline root, the registry is the configured one
(MLflow on SQLite in the embedded default) and deploy target 'local' skips Kubernetes.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lulc_core.config import RunConfig
from lulc_core.errors import InputError, LulcError

log = logging.getLogger(__name__)

LOCAL_TARGETS = ("none", "local")


class LocalRunError(LulcError):
    """A step of the local pipeline run failed (its log is printed above the error)."""


class LocalRun(BaseModel):
    """Where the outputs of a local run are, and the headline numbers."""

    pipeline_root: Path
    bundle_dir: Path = Field(description="The evaluated model bundle (weights + lulc.json with test metrics).")
    metrics: dict[str, float] = Field(description="Test metrics logged by the evaluate step.")
    registration: dict[str, Any] = Field(description="registration.json: ref, version, uri, gate decision.")
    seconds: float


@contextmanager
def loop_parameter_fix() -> Iterator[None]:
    """Work around a kfp.local 2.17 bug: inside a dsl.ParallelFor, every parameter that comes from another task's
    output (here the `config` from the configure step) is replaced by the loop item.

    `kfp.local.orchestrator.task_spec_utils.create_parameter_loop_iteration_task_spec` turns each
    `task_output_parameter` input of the loop task into the item; this wrapper puts those inputs back, so only the
    loop item itself is substituted (what a cluster does). Scoped to the local run; `tests/test_pipeline_local.py`
    checks that the bug still exists so the workaround goes when kfp fixes it.
    """
    from kfp.local.orchestrator import task_spec_utils

    original = task_spec_utils.create_parameter_loop_iteration_task_spec

    def fixed(original_task_spec: Any, loop_item: Any, loop_task_name: str) -> Any:
        spec = original(original_task_spec, loop_item, loop_task_name)
        for name, param in original_task_spec.inputs.parameters.items():
            if param.HasField("task_output_parameter"):
                spec.inputs.parameters[name].CopyFrom(param)
        return spec

    task_spec_utils.create_parameter_loop_iteration_task_spec = fixed
    try:
        yield
    finally:
        task_spec_utils.create_parameter_loop_iteration_task_spec = original


def _local_setup(cfg: RunConfig, pipeline_root: Path | None) -> tuple[RunConfig, Path]:
    """The pipeline root (created) and `cfg` without retries: kfp.local honours them with their backoff (30 s,
    60 s, ...), locally a failure should fail at once."""
    root = (pipeline_root or cfg.work_dir / "kfp").resolve()
    root.mkdir(parents=True, exist_ok=True)
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update={"retries": 0})}), root


def _run(pipeline: Any, root: Path, what: str, **params: Any) -> Any:
    """Run `pipeline` with kfp.local's SubprocessRunner in this environment; a failing step is a LocalRunError."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings(), loop_parameter_fix():
        # The SubprocessRunner runs the components in this environment, not in the image, and ignores
        # Kubernetes-only task settings (display names, resources): it warns about both.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*", category=UserWarning)
        try:
            return pipeline(**params)
        except RuntimeError as exc:
            raise LocalRunError(f"local {what} run failed: {exc} (artifacts under {root})") from exc


def run_local(
    cfg: RunConfig,
    pipeline_root: Path | None = None,
    *,
    deploy_target: str = "local",
    params: dict[str, Any] | None = None,
) -> LocalRun:
    """Run the pipeline on `cfg` with kfp.local and return its outputs.

    Args:
        cfg: Run configuration (the embedded default is conf/run.yaml).
        pipeline_root: Where artifacts go (default `<work_dir>/kfp`).
        deploy_target: 'local' (report how to serve) or 'none'; Kubernetes targets need a cluster.
        params: Further pipeline parameters (e.g. {"epochs": 1}).
    """
    from lulc_core.corine import check_corine_config
    from pipelines.training import build_pipeline

    check_corine_config(cfg)  # the steps inherit this environment: refuse missing credentials before any step

    if deploy_target not in LOCAL_TARGETS:
        raise InputError(
            "deploy_target", f"{deploy_target!r} needs a cluster", "use 'local' or 'none', or `lulc pipeline submit`"
        )
    started = time.perf_counter()
    cfg, root = _local_setup(cfg, pipeline_root)
    values = {"run_config": cfg.model_dump_json(), "deploy_target": deploy_target, **(params or {})}
    task = _run(build_pipeline(cfg), root, "pipeline", **values)
    outputs = task.outputs
    registration = json.loads(Path(outputs["registration"].path).read_text())
    metrics = {k: float(v) for k, v in outputs["metrics"].metadata.items() if isinstance(v, int | float)}
    run = LocalRun(
        pipeline_root=root,
        bundle_dir=Path(outputs["bundle"].path),
        metrics=metrics,
        registration=registration,
        seconds=round(time.perf_counter() - started, 1),
    )
    log.info("local run done in %.0f s: %s, mIoU %s", run.seconds, registration.get("ref"), metrics.get("miou"))
    return run


class LocalMapRun(BaseModel):
    """Where the outputs of a local mapping run are."""

    pipeline_root: Path
    output_dir: Path = Field(description="Blocks, zone mosaics and STAC (mapping.output_dir).")
    collection: Path = Field(description="The STAC collection.json.")
    areas_dir: Path = Field(description="areas.csv, areas.json, area_chart.png.")
    gaps_dir: Path = Field(description="gaps.parquet, conflicts.parquet/.csv, gap_stats.json, gap_map.png.")
    complete: bool = Field(description="Every block of every zone is in its mosaic.")
    statuses: dict[str, int] = Field(description="Blocks per status.")
    metrics: dict[str, float] = Field(description="The gap step's metrics.")
    seconds: float


def run_mapping_local(cfg: RunConfig, pipeline_root: Path | None = None, *, model: str = "") -> LocalMapRun:
    """Run the mapping pipeline on `cfg` with kfp.local (the model: `model`, else mapping.model)."""
    from pipelines.mapping import build_mapping_pipeline

    started = time.perf_counter()
    cfg, root = _local_setup(cfg, pipeline_root)
    pipeline = build_mapping_pipeline(cfg)
    task = _run(pipeline, root, "mapping", run_config=cfg.model_dump_json(), model=model or cfg.mapping.model or "")
    outputs = task.outputs
    doc = json.loads(Path(outputs["catalog"].path).read_text())
    counts: dict[str, int] = {}
    for s in doc["statuses"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    run = LocalMapRun(
        pipeline_root=root,
        output_dir=Path(doc["output_dir"]),
        collection=Path(doc["collection"]),
        areas_dir=Path(outputs["areas"].path),
        gaps_dir=Path(outputs["gaps"].path),
        complete=all(not z["missing"] for z in doc["zones"]),
        statuses=counts,
        metrics={k: float(v) for k, v in outputs["metrics"].metadata.items() if isinstance(v, int | float)},
        seconds=round(time.perf_counter() - started, 1),
    )
    log.info("local mapping run done in %.0f s: %s", run.seconds, counts)
    return run
