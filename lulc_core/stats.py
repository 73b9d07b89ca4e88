"""Dataset statistics: per-band mean/std for normalisation and class weights from pixel frequencies.

Means and standard deviations are streamed block by block (Chan's parallel update, float64 accumulators) over
valid pixels only (finite, not nodata, inside the mask), so memory does not grow with the dataset. Class pixels are
counted where the tile's imagery is valid. Class weights are inverse frequencies normalised to mean 1 over the
classes present; class 0 (`unknown`, ignored by the loss) and absent classes weigh 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from lulc_core.errors import InputError, NotFoundError
from lulc_core.labels import LabelSet
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

MIN_STD = 1e-6


class DatasetStats(BaseModel):
    """Normalisation and class-balance numbers of a dataset (the training tiles)."""

    model_config = ConfigDict(extra="forbid")

    band_names: list[str] = Field(description="Bands in raster order.")
    mean: list[float] = Field(description="Per-band mean over valid pixels.")
    std: list[float] = Field(description=f"Per-band population std over valid pixels (at least {MIN_STD}).")
    valid_pixels: list[int] = Field(default_factory=list, description="Per-band count of valid pixels.")
    class_names: list[str] = Field(description="Class names by raster value, 'unknown' first.")
    class_pixel_counts: list[int] = Field(description="Pixels per class value (where the imagery is valid).")
    class_weights: list[float] = Field(description="Loss weights: inverse frequency, mean 1 over present classes.")
    tiles: int = Field(default=0, ge=0, description="Number of tiles the numbers come from.")

    def save(self, path: str | Path) -> Path:
        """Write as JSON, atomically."""
        target = Path(path)
        with atomic_path(target) as tmp:
            tmp.write_text(self.model_dump_json(indent=2))
        return target

    @classmethod
    def load(cls, path: str | Path) -> DatasetStats:
        """Read a file written by `save`."""
        p = Path(path)
        if not p.is_file():
            raise NotFoundError(f"stats file {str(p)!r} does not exist; run `lulc data stats` first")
        try:
            return cls.model_validate_json(p.read_text())
        except ValidationError as exc:
            raise InputError("stats", f"{p} is not a statistics file: {exc.errors()[0]['msg']}") from exc


def class_weights(counts: Sequence[int]) -> list[float]:
    """Inverse-frequency weights normalised to mean 1 over classes with pixels; 0 for class 0 and absent ones."""
    c = np.asarray(counts, dtype=np.float64)
    weights = np.zeros_like(c)
    present = c > 0
    present[0] = False
    if present.any():
        inv = c[present].sum() / c[present]
        weights[present] = inv / inv.mean()
    return [float(w) for w in weights]


class _Moments:
    """Streaming count/mean/M2 per band (Chan et al.'s pairwise update)."""

    def __init__(self, bands: int) -> None:
        self.n = np.zeros(bands, dtype=np.int64)
        self.mean = np.zeros(bands, dtype=np.float64)
        self.m2 = np.zeros(bands, dtype=np.float64)

    def update(self, data: np.ndarray, valid: np.ndarray) -> None:
        for b in range(data.shape[0]):
            x = data[b][valid[b]].astype(np.float64)
            if x.size == 0:
                continue
            n_b, mean_b = x.size, float(x.mean())
            m2_b = float(((x - mean_b) ** 2).sum())
            n = self.n[b] + n_b
            delta = mean_b - self.mean[b]
            self.mean[b] += delta * n_b / n
            self.m2[b] += m2_b + delta**2 * self.n[b] * n_b / n
            self.n[b] = n


def _tile_files(imagery_dir: Path, tile_ids: Sequence[str] | None) -> list[Path]:
    if not imagery_dir.is_dir():
        raise InputError("imagery_dir", f"directory {str(imagery_dir)!r} does not exist", "run `lulc data imagery`")
    if tile_ids is None:
        files = sorted(p for p in imagery_dir.glob("*.tif") if not p.name.startswith("."))
    else:
        files = [imagery_dir / f"{t}.tif" for t in tile_ids]
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise InputError("tile_ids", f"{len(missing)} tiles have no imagery in {imagery_dir}: {missing[:5]}")
    if not files:
        raise InputError("imagery_dir", f"no tile GeoTIFF in {imagery_dir}", "run `lulc data imagery` first")
    return files


def compute_stats(
    imagery_dir: Path, labels_dir: Path, label_set: LabelSet, tile_ids: Sequence[str] | None = None
) -> DatasetStats:
    """Per-band mean/std and class pixel counts/weights over the tiles (all `*.tif` in `imagery_dir` by default).

    Raises:
        InputError: missing directories/tiles, tiles with different bands, label values outside the label set,
            or a band without any valid pixel.
    """
    imagery_dir, labels_dir = Path(imagery_dir), Path(labels_dir)
    files = _tile_files(imagery_dir, tile_ids)
    band_names: list[str] | None = None
    moments: _Moments | None = None
    counts = np.zeros(label_set.num_classes, dtype=np.int64)
    for path in tqdm(files, desc="statistics", unit="tile", leave=False):
        label_path = labels_dir / path.name
        if not label_path.is_file():
            raise InputError(
                "labels_dir", f"no label raster {label_path.name} in {labels_dir}", "run `lulc data labels`"
            )
        with rasterio.open(path) as src, rasterio.open(label_path) as lab:
            names = [d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1)]
            if band_names is None:
                band_names, moments = names, _Moments(len(names))
            elif names != band_names:
                raise InputError("imagery_dir", f"{path.name} has bands {names}, the first tile {band_names}")
            assert moments is not None
            if (lab.width, lab.height) != (src.width, src.height):
                raise InputError("labels_dir", f"{label_path.name} is not on the grid of its imagery")
            for _, window in src.block_windows(1):
                data = src.read(window=window)
                valid = np.isfinite(data) & (src.read_masks(window=window) > 0)
                if src.nodata is not None and not np.isnan(src.nodata):
                    valid &= data != src.nodata
                moments.update(data, valid)
                classes = lab.read(1, window=window)
                top = int(classes.max(initial=0))
                if top >= label_set.num_classes:
                    raise InputError(
                        "label_set",
                        f"{label_path.name} holds class {top}, label set {label_set.name!r} has "
                        f"values 0..{label_set.num_classes - 1}",
                        "use the label set the labels were made with",
                    )
                counts += np.bincount(classes[valid.all(axis=0)].ravel(), minlength=label_set.num_classes)
    assert band_names is not None and moments is not None
    empty = [b for b, n in zip(band_names, moments.n, strict=True) if n == 0]
    if empty:
        raise InputError("imagery_dir", f"bands {empty} have no valid pixel in {len(files)} tiles")
    std = np.sqrt(moments.m2 / moments.n)
    if counts[1:].sum() == 0:
        log.warning("no labelled pixel in %d tiles: class weights are all 0", len(files))
    return DatasetStats(
        band_names=band_names,
        mean=[float(m) for m in moments.mean],
        std=[float(max(s, MIN_STD)) for s in std],
        valid_pixels=[int(n) for n in moments.n],
        class_names=label_set.names,
        class_pixel_counts=[int(c) for c in counts],
        class_weights=class_weights([int(c) for c in counts]),
        tiles=len(files),
    )
