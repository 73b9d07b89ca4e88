"""Training data: spatial tile splits, chips cut from tile rasters and joint augmentations.

Inputs are the per-tile artifacts of the data steps: ``<imagery_dir>/<tile_id>.tif`` (float32 bands with band
descriptions and nodata) and ``<labels_dir>/<tile_id>.tif`` (uint8 classes, 0 = unknown) on the same grid.

* :func:`lulc_core.split.split_tiles` assigns whole *spatial blocks* of tiles to train/val/test (TorchGeo's habit): all time
  frames of a location and all tiles of a block share a split, and separate UTM zones never share a block, so
  neighbouring tiles meet across splits only along block borders.
* :class:`ChipDataset` cuts each tile into ``chip_size`` chips (the last row/column aligned to the tile edge),
  normalises bands with the dataset statistics, sets nodata pixels to input 0 and label 0 (ignored), and skips
  chips with too few labelled pixels.
* :func:`augment_pair` applies one random element of the dihedral group (flips and 90-degree rotations) to an
  image and its mask together.
* :func:`loader_settings`: DataLoader workers and pinned memory (`lulc_core.datamodule.LulcDataModule`, the
  Lightning wrapper, uses them; it lives apart so that reading tiles does not import Lightning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import Dataset, DistributedSampler

from lulc_core.errors import InputError
from lulc_core.labels import UNKNOWN

log = logging.getLogger(__name__)

PRELOAD_LIMIT_BYTES = 2 * 1024**3
"""Tiles are kept in memory when their normalised bands take less than this."""


class NormalisationStats(Protocol):
    """What the dataset needs of `lulc_core.stats.DatasetStats`."""

    band_names: list[str]
    mean: list[float]
    std: list[float]
    class_names: list[str]


# --------------------------------------------------------------------------------------------------- splits


@dataclass
class TileData:
    """One tile's normalised bands (C, H, W) and labels (H, W), or just the paths when read lazily."""

    tile_id: str
    image_path: Path
    label_path: Path
    band_indexes: list[int]
    height: int
    width: int
    image: np.ndarray | None = None
    labels: np.ndarray | None = None


def normalise(data: np.ndarray, invalid: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(data - mean) / std per band as float32; invalid values (per band, same shape as data) become 0."""
    m = np.asarray(mean, dtype=np.float32)[:, None, None]
    s = np.asarray(std, dtype=np.float32)[:, None, None]
    s = np.where(s > 0, s, 1.0).astype(np.float32)
    out = (data.astype(np.float32) - m) / s
    out[invalid] = 0.0
    return out


def band_indexes(path: Path, band_names: Sequence[str]) -> list[int]:
    """1-based indexes of `band_names` in the GeoTIFF at `path` (by band description)."""
    with rasterio.open(path) as src:
        names = list(src.descriptions)
        count = src.count
    if all(n is None for n in names) and count == len(band_names):
        log.debug("%s has no band descriptions; assuming the statistics' band order", path.name)
        return list(range(1, count + 1))
    missing = [b for b in band_names if b not in names]
    if missing:
        raise InputError(
            "imagery.bands",
            f"{path.name} has bands {names} but the statistics need {list(band_names)} (missing {missing})",
            "fetch the imagery and compute the statistics with the same band list",
        )
    return [names.index(b) + 1 for b in band_names]


def read_tile_window(
    tile: TileData, window: Window, stats: NormalisationStats, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read a window of a tile: normalised bands (C, h, w) float32 and labels (h, w) uint8 with nodata -> 0."""
    with rasterio.open(tile.image_path) as src:
        raw = src.read(tile.band_indexes, window=window, masked=True, boundless=False)
    invalid = np.ma.getmaskarray(raw) | ~np.isfinite(raw.data)
    image = normalise(np.asarray(raw.data), invalid, stats.mean, stats.std)
    with rasterio.open(tile.label_path) as src:
        lab = src.read(1, window=window, masked=True)
    labels = np.asarray(lab.filled(0), dtype=np.uint8)
    top = int(labels.max(initial=0))
    if top >= num_classes:
        raise InputError(
            "labels",
            f"{tile.label_path.name} holds class value {top} but the label set has only {num_classes} values "
            f"(0..{num_classes - 1})",
            "rasterise the labels with the label set the statistics were computed for",
        )
    labels[invalid.any(axis=0)] = 0
    return image, labels


def open_tile(tile_id: str, imagery_dir: Path, labels_dir: Path, stats: NormalisationStats) -> TileData:
    """Check a tile's two rasters (present, same grid, bands as in the statistics) and describe them."""
    image_path = Path(imagery_dir) / f"{tile_id}.tif"
    label_path = Path(labels_dir) / f"{tile_id}.tif"
    if not image_path.is_file():
        raise InputError("imagery_dir", f"no imagery raster for tile {tile_id!r} at {image_path}", "fetch imagery")
    if not label_path.is_file():
        raise InputError(
            "labels_dir", f"no label raster for tile {tile_id!r} at {label_path}", "rasterise labels for every tile"
        )
    indexes = band_indexes(image_path, stats.band_names)
    with rasterio.open(image_path) as img, rasterio.open(label_path) as lab:
        same = (
            img.crs == lab.crs
            and img.width == lab.width
            and img.height == lab.height
            and img.transform.almost_equals(lab.transform, precision=1e-6 * max(1.0, abs(img.transform.a)))
        )
        if not same:
            raise InputError(
                "labels_dir",
                f"tile {tile_id!r}: label grid ({lab.crs}, {lab.width}x{lab.height}, {tuple(lab.transform)[:6]}) "
                f"differs from imagery grid ({img.crs}, {img.width}x{img.height}, {tuple(img.transform)[:6]})",
                "rasterise labels on the imagery grid of the same tile",
            )
        if lab.count != 1:
            raise InputError("labels_dir", f"{label_path.name} has {lab.count} bands", "labels have one band")
        return TileData(tile_id, image_path, label_path, indexes, img.height, img.width)


def num_classes_of(stats: NormalisationStats) -> int:
    """Raster values of the statistics' label set, class 0 (unknown) included."""
    names = list(stats.class_names)
    return len(names) if names and names[0] == UNKNOWN else len(names) + 1


def chip_offsets(size: int, chip: int) -> list[int]:
    """Start offsets of chips along one axis; the last chip is aligned to the edge (0 if size < chip)."""
    if size <= chip:
        return [0]
    starts = list(range(0, size - chip + 1, chip))
    if starts[-1] + chip < size:
        starts.append(size - chip)
    return starts


def augment_pair(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random flip/90-degree-rotation (of the 8 dihedral transforms) to image (C,H,W) and mask (H,W).

    A horizontal flip with probability 1/2 followed by 0-3 quarter turns reaches all eight symmetries of the
    square (a vertical flip is a horizontal flip and a half turn), each with probability 1/8.
    """
    flip = bool(torch.randint(0, 2, (1,), generator=generator).item())
    turns = int(torch.randint(0, 4, (1,), generator=generator).item())
    if flip:
        image, mask = image.flip(-1), mask.flip(-1)
    if turns:
        image, mask = torch.rot90(image, turns, (-2, -1)), torch.rot90(mask, turns, (-2, -1))
    return image.contiguous(), mask.contiguous()


# ----------------------------------------------------------------------------------------------- dataset


class ChipDataset(Dataset[dict[str, torch.Tensor]]):
    """Chips of ``chip_size`` pixels cut from tile rasters, normalised, as ``{"image", "mask"}`` tensors.

    ``image`` is float32 (bands, chip, chip); ``mask`` is int64 (chip, chip) with 0 for unknown or nodata.
    Tiles smaller than a chip are padded with input 0 and label 0.
    """

    def __init__(
        self,
        imagery_dir: str | Path,
        labels_dir: str | Path,
        tile_ids: Sequence[str],
        stats: NormalisationStats,
        *,
        chip_size: int = 64,
        min_labelled_share: float = 0.05,
        augment: bool = False,
        preload: bool | None = None,
    ) -> None:
        """Index the chips of `tile_ids`.

        Args:
            imagery_dir: directory of ``<tile_id>.tif`` band rasters.
            labels_dir: directory of ``<tile_id>.tif`` class rasters on the same grids.
            tile_ids: the tiles of this dataset (e.g. one split).
            stats: dataset statistics (band names, per-band mean/std, class names).
            chip_size: chip edge in pixels.
            min_labelled_share: chips with a smaller share of labelled (class > 0) pixels are skipped.
            augment: apply random flips and 90-degree rotations.
            preload: keep normalised tiles in memory (None: when they take less than PRELOAD_LIMIT_BYTES).
        """
        if chip_size < 1:
            raise InputError("data.chip_size", f"{chip_size} must be positive")
        if not 0 <= min_labelled_share <= 1:
            raise InputError("data.min_labelled_share", f"{min_labelled_share} is outside [0, 1]")
        if len(stats.mean) != len(stats.band_names) or len(stats.std) != len(stats.band_names):
            raise InputError("stats", "mean/std must have one value per band", "recompute the statistics")
        self.stats = stats
        self.chip_size = chip_size
        self.augment = augment
        self.num_classes = num_classes_of(stats)
        self.tiles = [open_tile(t, Path(imagery_dir), Path(labels_dir), stats) for t in tile_ids]
        nbytes = sum(4 * len(t.band_indexes) * t.height * t.width for t in self.tiles)
        self.preloaded = nbytes <= PRELOAD_LIMIT_BYTES if preload is None else preload
        self.chips: list[tuple[int, int, int]] = []
        skipped = 0
        for i, tile in enumerate(self.tiles):
            image, labels = read_tile_window(tile, Window(0, 0, tile.width, tile.height), stats, self.num_classes)
            if self.preloaded:
                tile.image, tile.labels = image, labels
            for row in chip_offsets(tile.height, chip_size):
                for col in chip_offsets(tile.width, chip_size):
                    window = labels[row : row + chip_size, col : col + chip_size]
                    if np.count_nonzero(window) / float(chip_size * chip_size) >= min_labelled_share and window.any():
                        self.chips.append((i, row, col))
                    else:
                        skipped += 1
        log.info(
            "%d chips of %d px from %d tiles (%d skipped below %.0f%% labelled, %s)",
            len(self.chips),
            chip_size,
            len(self.tiles),
            skipped,
            100 * min_labelled_share,
            "in memory" if self.preloaded else "read on demand",
        )

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        """The chip at `index`; an `(index, seed)` pair (from :class:`ShardedSampler`) seeds its augmentation and
        comes back as ``seed`` (the model's dropout masks of this chip: `lulc_core.data_parallel`)."""
        generator = None
        seed: int | None = None
        if isinstance(index, tuple):
            index, seed = index
            generator = torch.Generator().manual_seed(seed)
        i, row, col = self.chips[index]
        tile = self.tiles[i]
        c = self.chip_size
        if tile.image is not None and tile.labels is not None:
            image = tile.image[:, row : row + c, col : col + c]
            labels = tile.labels[row : row + c, col : col + c]
        else:
            h, w = min(c, tile.height - row), min(c, tile.width - col)
            image, labels = read_tile_window(tile, Window(col, row, w, h), self.stats, self.num_classes)
        if image.shape[1:] != (c, c):
            pad = ((0, 0), (0, c - image.shape[1]), (0, c - image.shape[2]))
            image = np.pad(image, pad)
            labels = np.pad(labels, pad[1:])
        img_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        mask_t = torch.from_numpy(np.ascontiguousarray(labels)).long()
        if self.augment:
            img_t, mask_t = augment_pair(img_t, mask_t, generator)
        item = {"image": img_t, "mask": mask_t}
        if seed is not None:
            item["seed"] = torch.tensor(seed, dtype=torch.int64)
        return item


class ShardedSampler(DistributedSampler[int]):
    """Lightning's DistributedSampler, also on one process, yielding `(index, augmentation seed)` pairs.

    The order is a permutation seeded by `seed + epoch` (Lightning calls `set_epoch`), each rank takes every
    `num_replicas`-th index of it, so the ranks' batch k together hold the chips of the single-process batch k; the
    augmentation of a chip depends only on (seed, epoch, index). An epoch is therefore the same whether the run
    was resumed from a checkpoint or not, and whatever the number of processes or DataLoader workers.

    Without shuffling (validation, test) the shards are not padded: every chip is scored exactly once, as on one
    process (DistributedSampler would repeat chips to even the shards out).
    """

    epoch_of: Callable[[], int] | None = None
    """Where the epoch comes from when set (the trainer's epoch: Lightning's `set_epoch` count differs after a
    resume, and its data fetcher starts iterating before `on_train_epoch_start`)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if self.epoch_of is not None:
            self.epoch = self.epoch_of()
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_033
        indexes = super().__iter__() if self.shuffle else iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]
        for index in indexes:
            yield int(index), (base + int(index)) % (2**63)

    def __len__(self) -> int:
        if self.shuffle:
            return self.num_samples
        return len(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


def loader_settings(num_workers: int | None, devices: int, on_gpu: bool) -> tuple[int, bool]:
    """DataLoader workers and pinned memory: explicit workers win; by default none on CPU (the model needs the
    cores and preloaded chips are cheap), on GPU nodes a share of the node's cores per device (at most 8), pinned.
    """
    import os

    if num_workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        num_workers = min(8, max(1, cpus // max(1, devices) - 1)) if on_gpu else 0
    return num_workers, on_gpu
