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
    """Train in this pod (DDP) or on nodes (training.launcher), resuming; curves live to the registry's tracker.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        imagery: Every tile's imagery.
        labels: Every tile's labels.
        stats: DatasetStats JSON (normalisation, class weights).
        split: TileSplit JSON.
        bundle: The model bundle directory (weights + lulc.json).
        metrics: Training metrics (best validation loss, epochs run).
    """
    import os
    import tempfile
    from pathlib import Path

    from components._runtime import CACHE_ENV, copy_dir, load_config
    from lulc_core import training
    from lulc_core.registry import tracked
    from lulc_core.split import TileSplit
    from lulc_core.stats import DatasetStats
    from pipelines.trainjob import train_on_cluster

    cfg = load_config(config)
    durable = Path(os.environ.get(CACHE_ENV) or cfg.work_dir).resolve()
    imagery_p, labels_p, stats_p, split_p = (Path(a.path) for a in (imagery, labels, stats, split))
    key = training.training_key(cfg, stats_p, split_p)
    if cfg.training.launcher != "none":  # the job's rank 0 logs into this step's tracker run
        with tracked(cfg) as run:
            trained = train_on_cluster(cfg, imagery_p, labels_p, stats_p, split_p, durable, key, tracking=run)
        copy_dir(trained, bundle.path)
        return
    cfg.training.checkpoint_dir = cfg.training.checkpoint_dir or durable / "checkpoints" / key
    with tempfile.TemporaryDirectory(prefix="lulc-train-") as work, tracked(cfg) as run:
        data = (imagery_p, labels_p, DatasetStats.load(stats_p), TileSplit.load(split_p))
        result = training.train(cfg, *data, Path(work), progress=False, resume=True, tracking=run)
        if result.global_rank:  # a DDP process Lightning started by re-running this step: rank 0 reports
            raise SystemExit(0)
        copy_dir(result.bundle_dir, bundle.path)
    if result.best_val_loss is not None:
        metrics.log_metric("best_val_loss", float(result.best_val_loss))
    metrics.log_metric("epochs_run", int(result.epochs_run))
    bundle.metadata.update(architecture="segformer", variant=cfg.model.variant, train_config_hash=cfg.fingerprint())
