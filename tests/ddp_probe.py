"""Run by tests/test_distributed_training.py as a script: one training step of lulc's task and data module under
Lightning (1 process, or DDP with N gloo processes), with the model in evaluation mode (no dropout, BatchNorm on
its running statistics) so the step is deterministic; writes the gradient after DDP's all-reduce to OUT.

    python tests/ddp_probe.py CONFIG IMAGERY LABELS STATS SPLIT DEVICES BATCH OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

from lulc_core.config import load_run_config
from lulc_core.data_parallel import GlooSyncBatchNorm
from lulc_core.datamodule import LulcDataModule
from lulc_core.labels import LabelSet
from lulc_core.split import TileSplit
from lulc_core.stats import DatasetStats
from lulc_core.training import SegmentationTask


class _Probe(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
            torch.save(grads, self.out)


def main() -> None:
    config, imagery, labels, stats_path, split_path, devices, batch, out = sys.argv[1:9]
    cfg = load_run_config(config, {"training": {"batch_size": int(batch)}})
    stats = DatasetStats.load(Path(stats_path))
    L.seed_everything(cfg.training.seed, verbose=False)
    dm = LulcDataModule.from_config(cfg, imagery, labels, stats, TileSplit.load(split_path))
    task = SegmentationTask(
        num_channels=len(stats.band_names),
        num_classes=LabelSet.from_yaml(cfg.labels.label_set).num_classes,
        class_weights=list(stats.class_weights),
        max_epochs=1,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=int(devices),
        strategy="ddp" if int(devices) > 1 else "auto",
        plugins=[GlooSyncBatchNorm()] if int(devices) > 1 else None,
        max_steps=1,
        callbacks=[_Probe(Path(out))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
    )
    trainer.fit(task, datamodule=dm)


if __name__ == "__main__":
    main()
