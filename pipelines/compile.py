"""Compile the training or the mapping pipeline to KFP IR YAML (`lulc pipeline compile -o pipeline.yaml`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from lulc_core.config import RunConfig
from lulc_core.errors import InputError
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)


def compile_pipeline(
    cfg: RunConfig, output: str | Path, image: str | None = None, *, which: Literal["training", "mapping"] = "training"
) -> Path:
    """Write the pipeline for `cfg` as IR YAML to `output` (atomically) and return its path.

    Args:
        cfg: Run configuration: default of the `run_config` parameter and source of the task settings.
        output: Target file, `.yaml` or `.yml`.
        image: Project image (pinned); default env LULC_IMAGE, else `cfg.pipeline.image`.
        which: "training" (lulc-training) or "mapping" (lulc-mapping).
    """
    from kfp import compiler

    if which == "mapping":
        from pipelines.mapping import build_mapping_pipeline as build_pipeline
    else:
        from pipelines.training import build_pipeline

    out = Path(output)
    if out.suffix not in (".yaml", ".yml"):
        raise InputError("--output", f"{out} does not end in .yaml or .yml", "e.g. -o pipeline.yaml")
    pipeline = build_pipeline(cfg, image)
    with atomic_path(out) as tmp:
        staged = tmp.with_suffix(".yaml")
        try:
            compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(staged))
            staged.replace(tmp)
        finally:
            staged.unlink(missing_ok=True)
    log.info("pipeline %s written to %s", pipeline.name, out)
    return out
