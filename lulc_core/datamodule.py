"""`LulcDataModule`: the chip datasets of a tile split and their DataLoaders, for Lightning.

Apart from `lulc_core.dataset` so that reading tiles (evaluation, int8 calibration, every pipeline step that is
not training) does not import Lightning, which takes seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from torch.utils.data import DataLoader

from lulc_core.dataset import ChipDataset, NormalisationStats, ShardedSampler, loader_settings
from lulc_core.errors import InputError
from lulc_core.split import TileSplit

if TYPE_CHECKING:
    from lulc_core.config import RunConfig


class LulcDataModule(L.LightningDataModule):
    """Train/val/test chip datasets and their DataLoaders for Lightning.

    Loaders pin memory on CUDA and keep worker processes alive between epochs; chips are preloaded when small.
    """

    def __init__(
        self,
        imagery_dir: str | Path,
        labels_dir: str | Path,
        split: TileSplit,
        stats: NormalisationStats,
        *,
        chip_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        min_labelled_share: float = 0.05,
        augment: bool = True,
        preload: bool | None = None,
        seed: int = 0,
        pin_memory: bool | None = None,
    ) -> None:
        """Describe the data; datasets are built in :meth:`setup`.

        Args:
            imagery_dir: directory of ``<tile_id>.tif`` band rasters.
            labels_dir: directory of ``<tile_id>.tif`` class rasters.
            split: tile ids per split.
            stats: dataset statistics used for normalisation.
            chip_size: chip edge in pixels.
            batch_size: chips per batch.
            num_workers: DataLoader worker processes (0: load in the main process).
            min_labelled_share: skip chips with fewer labelled pixels.
            augment: random flips and rotations of training chips.
            preload: keep tiles in memory (None: automatic by size).
            seed: seed of the per-epoch shuffle and augmentation (see :class:`ShardedSampler`).
            pin_memory: page-locked batches for fast copies to the GPU (None: when CUDA is available).
        """
        super().__init__()
        if batch_size < 1:
            raise InputError("training.batch_size", f"{batch_size} must be at least 1")
        if num_workers < 0:
            raise InputError("training.num_workers", f"{num_workers} must not be negative")
        self.imagery_dir = Path(imagery_dir)
        self.labels_dir = Path(labels_dir)
        self.split = split
        self.stats = stats
        self.chip_size = chip_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.min_labelled_share = min_labelled_share
        self.augment = augment
        self.preload = preload
        self.seed = seed
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.datasets: dict[str, ChipDataset] = {}

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        imagery_dir: str | Path,
        labels_dir: str | Path,
        stats: NormalisationStats,
        split: TileSplit,
        on_gpu: bool = False,
    ) -> LulcDataModule:
        """A DataModule with the data and training settings of a run configuration (loader defaults by device)."""
        workers, pin = loader_settings(cfg.training.num_workers, cfg.training.devices, on_gpu)
        return cls(
            imagery_dir,
            labels_dir,
            split,
            stats,
            chip_size=cfg.data.chip_size,
            batch_size=cfg.training.batch_size,
            num_workers=workers,
            min_labelled_share=cfg.data.min_labelled_share,
            augment=cfg.training.augment,
            seed=cfg.training.seed,
            pin_memory=pin,
        )

    def _dataset(self, stage: str) -> ChipDataset:
        if stage not in self.datasets:
            self.datasets[stage] = ChipDataset(
                self.imagery_dir,
                self.labels_dir,
                self.split.ids(stage),
                self.stats,
                chip_size=self.chip_size,
                min_labelled_share=self.min_labelled_share,
                augment=self.augment and stage == "train",
                preload=self.preload,
            )
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets a Lightning stage ("fit", "validate", "test") needs."""
        if stage in (None, "fit"):
            train = self._dataset("train")
            if len(train) == 0:
                raise InputError(
                    "data.min_labelled_share",
                    f"no training chip has {self.min_labelled_share:.0%} labelled pixels "
                    f"in {len(self.split.train)} training tiles",
                    "lower data.min_labelled_share or check that the labels cover the tiles",
                )
        if stage in (None, "fit", "validate") and self.split.val:
            self._dataset("val")
        if stage in (None, "test") and self.split.test:
            self._dataset("test")

    def has_validation(self) -> bool:
        """Whether the validation split yields any chip."""
        return bool(self.split.val) and len(self._dataset("val")) > 0

    def _loader(self, stage: str, shuffle: bool) -> DataLoader[dict[str, torch.Tensor]]:
        """A loader over this rank's shard (the whole dataset on one process); see :class:`ShardedSampler`."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset = self._dataset(stage)
        sampler = ShardedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        if trainer is not None:
            sampler.epoch_of = lambda: trainer.current_epoch
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader[dict[str, torch.Tensor]]:
        return self._loader("test", shuffle=False)
