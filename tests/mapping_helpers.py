"""Shared by the mapping tests: a registered model (random SegFormer-b0 on B02/B03/B04 with a test confusion matrix)
in a temporary SQLite MLflow, and the sample run configuration pointing at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import REPO, make_registry_bundle

from lulc_core.config import RunConfig, load_run_config

MODEL = "lulc-sample@production"
# rows = reference, columns = predicted, classes 1..6 of the v3 label set (built-up .. grass)
CONFUSION = [
    [80, 5, 0, 10, 0, 5],
    [2, 150, 3, 5, 10, 30],
    [0, 2, 60, 0, 0, 3],
    [5, 5, 0, 200, 10, 30],
    [0, 10, 0, 20, 40, 5],
    [5, 20, 2, 30, 5, 120],
]


def register_sample_model(work_dir: Path, *, confusion: bool = True) -> None:
    """Register a tiny bundle as lulc-sample v1 in production in `<work_dir>/mlflow.db`."""
    from lulc_core.bundle import ModelBundle, Normalisation
    from lulc_core.registry import build_registry

    bundle_dir = make_registry_bundle(work_dir / "bundle-src")
    meta = ModelBundle.read_metadata(bundle_dir)
    meta.normalisation = Normalisation(mean=[900.0, 900.0, 900.0], std=[500.0, 500.0, 500.0])
    if confusion:
        meta.metrics["confusion_matrix"] = CONFUSION
        meta.metrics["class_names"] = meta.label_set.names[1:]
    (bundle_dir / "lulc.json").write_text(meta.model_dump_json(indent=2))
    cfg = sample_config(work_dir)
    registry = build_registry(cfg.registry, cfg.work_dir)
    ref = registry.register(bundle_dir)
    registry.promote(ref, "production")


def copy_sample_registry(source_work: Path, work_dir: Path) -> None:
    """Give `work_dir` the registry `register_sample_model(source_work)` made: a copy of its MLflow database (its
    versions' artifacts stay under `source_work` and are only read), so one registration serves many runs."""
    import shutil

    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source_work / "mlflow.db", work_dir / "mlflow.db")


def sample_config(work_dir: Path, **mapping: Any) -> RunConfig:
    """conf/run.yaml with its work_dir in `work_dir`, CPU mapping, small blocks and a fixed throughput."""
    settings = {"block_px": 128, "accelerator_type": None, "throughput_px_s": 50_000.0, "shards": 3, **mapping}
    return load_run_config(REPO / "conf" / "run.yaml", {"work_dir": str(work_dir), "mapping": settings})
