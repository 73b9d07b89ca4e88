"""Shared pytest fixtures. Engineers add fixtures here with unique names; never rewrite others'."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
V3_LABELS = REPO / "conf" / "labels" / "v3.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from shared import shared_path

    return shared_path("data")


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


def _training_stats(imagery_dir: Path, labels_dir: Path, ids: list[str]):
    """DatasetStats of the synthetic tiles, computed by lulc_core.stats."""
    from lulc_core.labels import LabelSet
    from lulc_core.stats import compute_stats

    return compute_stats(imagery_dir, labels_dir, LabelSet.from_yaml(V3_LABELS), tile_ids=ids)


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
    stats = _training_stats(imagery_dir, labels_dir, [t.id for t in tiles])
    return SyntheticTiles(root, tiles, list(bands), stats, V3_LABELS)


@pytest.fixture(scope="session")
def synthetic_training_tiles(tmp_path_factory: pytest.TempPathFactory) -> SyntheticTiles:
    """12 synthetic 64x64 tiles (4 bands, classes 1..4, one nodata corner), shared read-only by tests."""
    return make_synthetic_tiles(tmp_path_factory.mktemp("synthetic_tiles"))


# --- data engineer: the bundled sample area as tiles ---------------------------------------------------------------

SAMPLE_TIME_FRAMES = [
    {"start": "2017-10-25", "end": "2017-11-04"},
    {"start": "2020-04-03", "end": "2020-04-16"},
    {"start": "2023-06-05", "end": "2023-06-15"},
]


@pytest.fixture(scope="session")
def data_sample_area():
    """AreaConfig of data/sample/aoi.geojson: 640 m tiles, whole tiles only, one time frame per patch."""
    from lulc_core.config import AreaConfig

    return AreaConfig(
        name="sample",
        aoi=SAMPLE / "aoi.geojson",
        time_frames=SAMPLE_TIME_FRAMES,
        tile_size_m=640,
        min_land_share=0.9,
    )


@pytest.fixture(scope="session")
def data_sample_tiles(data_sample_area) -> list:
    """The 27 tiles (9 per patch, 64 x 64 px at 10 m) of the sample area."""
    from lulc_core.grid import build_grid

    return build_grid(data_sample_area, 10.0)


# --- registry engineer: a tiny model bundle (random SegFormer-b0, 3 bands, v3 label set) -------------------------


def make_registry_bundle(path: Path, miou: float = 0.42, accuracy: float = 0.81, test_tiles: int = 3) -> Path:
    """Write a bundle with random weights and the given test metrics (no training) to `path`."""
    from lulc_core.bundle import BundleMetadata, Normalisation, Provenance, save_bundle
    from lulc_core.labels import LabelSet
    from lulc_core.model import build_segformer

    label_set = LabelSet.from_yaml(V3_LABELS)
    metadata = BundleMetadata(
        variant="b0",
        bands=["B02", "B03", "B04"],
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[0.1, 0.1, 0.1], std=[0.05, 0.05, 0.05]),
        label_set=label_set,
        metrics={
            "miou": miou,
            "overall_accuracy": accuracy,
            "per_class": {"forest": {"iou": miou, "f1": 0.5}, "water": {"iou": 0.3, "f1": 0.4}},
            "test_tile_ids": [f"t{i}" for i in range(test_tiles)],
        },
        hyperparameters={"training": {"learning_rate": 6e-4, "epochs": 1}, "model": {"variant": "b0"}},
        provenance=Provenance(area="test bbox", time_frames=["2023-06-01/2023-06-30"], imagery_source="local"),
    )
    model = build_segformer("b0", 3, label_set.num_classes)
    return save_bundle(path, model, metadata)


@pytest.fixture(scope="session")
def registry_tiny_bundle_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle `registry_tiny_bundle` copies, written once; only fixtures that copy it again may read it."""
    return make_registry_bundle(tmp_path_factory.mktemp("registry_bundle") / "bundle")


def copy_bundle(source: Path, target: Path) -> Path:
    """A private copy of the bundle at `source` (a few MB: milliseconds)."""
    import shutil

    return Path(shutil.copytree(source, target))


@pytest.fixture
def registry_tiny_bundle(registry_tiny_bundle_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle directory (random weights; test mIoU 0.42, accuracy 0.81), a fresh copy for each test:
    registering a bundle exports model.onnx into it, so a shared directory would let test order change results."""
    return copy_bundle(registry_tiny_bundle_source, tmp_path_factory.mktemp("registry_bundle_copy") / "bundle")


@pytest.fixture(scope="session")
def mapping_sample_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work dir where mapping_helpers.register_sample_model registered lulc-sample v1 (production), once per
    session (seconds: MLflow's schema migrations and the ONNX export); tests take a copy of its database with
    mapping_helpers.copy_sample_registry and never write to this one."""
    from mapping_helpers import register_sample_model

    work = tmp_path_factory.mktemp("mapping-registry")
    register_sample_model(work)
    return work


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run torch on one intra-op thread for the module (the shared 2-core box thrashes with more)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_addoption(parser: pytest.Parser) -> None:
    """`--update-golden`: rewrite golden files (tests/golden/) from the current output instead of comparing."""
    parser.addoption(
        "--update-golden", action="store_true", default=False, help="rewrite tests/golden/* from the current output"
    )
