"""Shared pytest fixtures. Engineers add fixtures here with unique names; never rewrite others'."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE = REPO / "data" / "sample"
V3_LABELS = REPO / "conf" / "labels" / "v3.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"../shared/data is missing beside the repository (expected {SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def v3_label_set():
    from lulc_core.labels import LabelSet

    return LabelSet.from_yaml(V3_LABELS)


# --- training engineer: tiny synthetic tile rasters (imagery + labels on the same grid) -------------------------


class SyntheticTiles:
    """A grid of tiny tiles written as `<dir>/imagery/<id>.tif` (float32 bands) and `<dir>/labels/<id>.tif`."""

    def __init__(self, root: Path, tiles: list, bands: list[str], stats, label_set_path: Path) -> None:
        self.root = root
        self.imagery_dir = root / "imagery"
        self.labels_dir = root / "labels"
        self.tiles = tiles
        self.bands = bands
        self.stats = stats
        self.label_set_path = label_set_path

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tiles]


def _training_stats(bands: list[str], class_names: list[str], imagery_dir: Path, labels_dir: Path, ids: list[str]):
    """DatasetStats of the synthetic tiles (the real class once lulc_core.stats exists)."""
    import numpy as np

    from lulc_core.raster import read_geotiff

    try:
        from lulc_core.stats import DatasetStats, compute_stats
    except ImportError:  # the data engineer's module has not landed yet
        compute_stats = None
    if compute_stats is not None:
        from lulc_core.labels import LabelSet

        return compute_stats(imagery_dir, labels_dir, LabelSet.from_yaml(V3_LABELS), tile_ids=ids)
    stacks = [read_geotiff(imagery_dir / f"{i}.tif") for i in ids]
    data = np.concatenate([r.data.reshape(len(bands), -1) for r in stacks], axis=1)
    data = np.where(np.isfinite(data) & (data != -9999), data, np.nan)
    counts = np.zeros(len(class_names), dtype=np.int64)
    for i in ids:
        lab = read_geotiff(labels_dir / f"{i}.tif").data[0]
        counts += np.bincount(lab.ravel(), minlength=len(class_names))[: len(class_names)]
    freq = counts[1:] / max(1, counts[1:].sum())
    weights = [0.0] + [float(1 / np.sqrt(f)) if f > 0 else 0.0 for f in freq]
    from pydantic import BaseModel

    class DatasetStats(BaseModel):  # type: ignore[no-redef]
        band_names: list[str]
        mean: list[float]
        std: list[float]
        class_names: list[str]
        class_pixel_counts: list[int]
        class_weights: list[float]

    return DatasetStats(
        band_names=bands,
        mean=[float(v) for v in np.nanmean(data, axis=1)],
        std=[float(v) for v in np.nanstd(data, axis=1)],
        class_names=class_names,
        class_pixel_counts=[int(c) for c in counts],
        class_weights=weights,
    )


def make_synthetic_tiles(
    root: Path,
    *,
    cols: int = 4,
    rows: int = 3,
    size: int = 64,
    bands: tuple[str, ...] = ("B02", "B03", "B04", "B08"),
    seed: int = 0,
    nodata_tile: int | None = 0,
) -> SyntheticTiles:
    """Tiles on a `cols` x `rows` UTM grid whose classes 1..4 are separable by their spectra (plus noise).

    Each tile holds blobs of four classes; a band of class 0 (unlabelled) crosses every tile; tile
    `nodata_tile` has a nodata (-9999) corner. Written with lulc_core.raster.write_geotiff.
    """
    from datetime import date

    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS

    from lulc_core.geo import Tile
    from lulc_core.labels import LabelSet
    from lulc_core.raster import Raster, write_geotiff

    rng = np.random.default_rng(seed)
    label_set = LabelSet.from_yaml(V3_LABELS)
    spectra = np.array([[0, 0, 0, 0], [3, 1, 0, 2], [0, 3, 1, 0], [1, 0, 3, 1], [2, 2, 2, 3]], dtype=np.float32)
    res = 10.0
    x0, y0 = 500_000.0, 6_000_000.0
    tiles = []
    imagery_dir, labels_dir = root / "imagery", root / "labels"
    yy, xx = np.mgrid[0:size, 0:size]
    for r in range(rows):
        for c in range(cols):
            idx = r * cols + c
            minx, maxy = x0 + c * size * res, y0 - r * size * res
            bounds = (minx, maxy - size * res, minx + size * res, maxy)
            tile = Tile(
                id=f"t{r}_{c}",
                crs="EPSG:32632",
                bounds=bounds,
                resolution=res,
                start=date(2023, 6, 1),
                end=date(2023, 6, 30),
            )
            tiles.append(tile)
            # Blobs: each pixel gets the class of the nearest of a few random seed points.
            pts = rng.uniform(0, size, (6, 2))
            cls = rng.integers(1, 5, 6)
            dist = (yy[None] - pts[:, 0, None, None]) ** 2 + (xx[None] - pts[:, 1, None, None]) ** 2
            labels = cls[dist.argmin(axis=0)].astype(np.uint8)
            labels[:, size // 2 : size // 2 + 4] = 0  # an unlabelled stripe
            image = spectra[labels.astype(int)].transpose(2, 0, 1)[: len(bands)]
            image = image + rng.normal(0, 0.3, image.shape).astype(np.float32) + 10.0
            valid = np.ones((size, size), bool)
            if nodata_tile is not None and idx == nodata_tile:
                valid[:8, :8] = False
            transform = Affine(res, 0, bounds[0], 0, -res, bounds[3])
            crs = CRS.from_epsg(32632)
            write_geotiff(
                imagery_dir / f"{tile.id}.tif",
                Raster(image.astype(np.float32), transform, crs, list(bands), valid),
                nodata=-9999.0,
            )
            write_geotiff(
                labels_dir / f"{tile.id}.tif",
                Raster(labels[None], transform, crs, ["class"]),
                colormap=label_set.colormap(),
            )
    stats = _training_stats(list(bands), label_set.names, imagery_dir, labels_dir, [t.id for t in tiles])
    return SyntheticTiles(root, tiles, list(bands), stats, V3_LABELS)


@pytest.fixture(scope="session")
def synthetic_training_tiles(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTiles:
    """12 synthetic 64x64 tiles (4 bands, classes 1..4, one nodata corner), shared read-only by tests."""
    return make_synthetic_tiles(tmp_path_factory.mktemp("synthetic_tiles"))
