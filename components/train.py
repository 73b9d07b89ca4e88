"""Step 5 — train: a SegFormer on the training tiles; the model bundle is the output artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(
    config: str,
    imagery: Input[Dataset],
    labels: Input[Dataset],
    stats: Input[Dataset],
    split: Input[Dataset],
    bundle: Output[Model],
    metrics: Output[Metrics],
) -> None:
    """Train with the run configuration (GPU when the task has one), curves live to the registry's tracker.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        imagery: Every tile's imagery.
        labels: Every tile's labels.
        stats: DatasetStats JSON (normalisation, class weights).
        split: TileSplit JSON.
        bundle: The model bundle directory (weights + lulc.json).
        metrics: Training metrics (best validation loss, epochs run).
    """
    import tempfile
    from pathlib import Path

    from components._runtime import copy_dir, load_config
    from lulc_core.dataset import TileSplit
    from lulc_core.registry import build_registry
    from lulc_core.registry.tracking import tracked
    from lulc_core.stats import DatasetStats
    from lulc_core.training import train as run_training

    cfg = load_config(config)
    tile_split = TileSplit.model_validate_json(Path(split.path).read_text())
    ds = DatasetStats.load(Path(stats.path))
    registry = build_registry(cfg.registry, cfg.work_dir)
    with tempfile.TemporaryDirectory(prefix="lulc-train-") as work, tracked(registry, cfg) as run:
        result = run_training(
            cfg, Path(imagery.path), Path(labels.path), ds, tile_split, Path(work), progress=False, tracking=run
        )
        copy_dir(result.bundle_dir, bundle.path)
    if result.best_val_loss is not None:
        metrics.log_metric("best_val_loss", float(result.best_val_loss))
    metrics.log_metric("epochs_run", int(result.epochs_run))
    bundle.metadata.update(
        {"architecture": "segformer", "variant": cfg.model.variant, "train_config_hash": cfg.fingerprint()}
    )
