"""Dataset statistics: streaming nodata-aware mean/std and class weights from pixel frequencies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from typer.testing import CliRunner

from lulc_core.errors import InputError, NotFoundError
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster, write_geotiff
from lulc_core.stats import DatasetStats, class_weights, compute_stats

CRS32632 = CRS.from_epsg(32632)


def _tile(root: Path, name: str, data: np.ndarray, labels: np.ndarray, nodata: float, bands=("B04", "VV")) -> None:
    transform = Affine(10, 0, 500000, 0, -10, 6000000)
    write_geotiff(root / "imagery" / f"{name}.tif", Raster(data, transform, CRS32632, list(bands)), nodata=nodata)
    write_geotiff(root / "labels" / f"{name}.tif", Raster(labels[None], transform, CRS32632, ["class"]))


@pytest.fixture
def two_tiles(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    a = rng.normal(1000, 200, (2, 300, 300)).astype(np.float32)  # > one 256 block: streamed in pieces
    b = rng.normal(-15, 3, (2, 40, 40)).astype(np.float32)
    a[0, :10, :] = np.nan  # nodata in one band only
    b[:, 5:9, 5:9] = -9999.0
    la = np.zeros((300, 300), np.uint8)
    la[:100] = 1
    la[100:250] = 4
    lb = np.full((40, 40), 6, np.uint8)
    _tile(tmp_path, "a", a, la, float("nan"))
    _tile(tmp_path, "b", b, lb, -9999.0)
    return tmp_path, a, b


def test_mean_std_ignore_nodata_and_match_numpy(two_tiles, v3_label_set: LabelSet):
    root, a, b = two_tiles
    stats = compute_stats(root / "imagery", root / "labels", v3_label_set)
    assert stats.band_names == ["B04", "VV"] and stats.tiles == 2
    for band in range(2):
        values = np.concatenate([a[band].ravel(), b[band].ravel()]).astype(np.float64)
        values = values[np.isfinite(values) & (values != -9999.0)]
        assert stats.valid_pixels[band] == values.size
        assert stats.mean[band] == pytest.approx(values.mean(), rel=1e-9)
        assert stats.std[band] == pytest.approx(values.std(), rel=1e-9)


def test_class_counts_where_imagery_is_valid_and_weights(two_tiles, v3_label_set: LabelSet):
    root, _, _ = two_tiles
    stats = compute_stats(root / "imagery", root / "labels", v3_label_set)
    assert stats.class_names == v3_label_set.names
    counts = stats.class_pixel_counts
    assert counts[1] == 90 * 300  # first 10 rows are nodata in B04
    assert counts[4] == 150 * 300 and counts[0] == 50 * 300
    assert counts[6] == 40 * 40 - 16
    w = stats.class_weights
    assert w[0] == 0 and w[2] == w[3] == w[5] == 0  # class 0 and absent classes
    present = [w[1], w[4], w[6]]
    assert np.mean(present) == pytest.approx(1.0)
    assert w[6] > w[1] > w[4]  # rarer class, larger weight
    assert w[1] / w[4] == pytest.approx(counts[4] / counts[1])


def test_class_weights_function():
    assert class_weights([5, 10, 0, 30]) == pytest.approx([0, 1.5, 0, 0.5])
    assert class_weights([7, 0, 0]) == [0.0, 0.0, 0.0]


def test_tile_ids_subset_and_roundtrip(two_tiles, v3_label_set: LabelSet, tmp_path: Path):
    root, _, _ = two_tiles
    only_b = compute_stats(root / "imagery", root / "labels", v3_label_set, tile_ids=["b"])
    assert only_b.tiles == 1 and only_b.class_pixel_counts[6] == 40 * 40 - 16
    path = only_b.save(tmp_path / "out" / "stats.json")
    assert DatasetStats.load(path) == only_b
    assert json.loads(path.read_text())["band_names"] == ["B04", "VV"]


def test_sample_stats_equal_a_direct_computation(repo_root: Path, data_sample_tiles, v3_label_set, tmp_path: Path):
    from lulc_core.config import DEFAULT_BANDS
    from lulc_core.imagery import fetch_tiles
    from lulc_core.imagery.local import LocalGeoTiffStore

    tiles = data_sample_tiles[::3]
    paths = fetch_tiles(LocalGeoTiffStore(repo_root / "data/sample/imagery"), tiles, DEFAULT_BANDS, tmp_path / "img")
    (tmp_path / "lab").mkdir()
    for p in paths:  # labels are irrelevant to mean/std: all class 4
        with rasterio.open(p) as src:
            write_geotiff(
                tmp_path / "lab" / p.name,
                Raster(np.full((1, src.height, src.width), 4, np.uint8), src.transform, src.crs, ["class"]),
            )
    stats = compute_stats(tmp_path / "img", tmp_path / "lab", v3_label_set)
    stack = np.concatenate([rasterio.open(p).read().reshape(15, -1) for p in paths], axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.mean, stack.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(stats.std, stack.std(axis=1), rtol=1e-9)
    assert stats.class_weights[4] == pytest.approx(1.0)


def test_bad_inputs(two_tiles, v3_label_set: LabelSet, tmp_path: Path):
    root, _, _ = two_tiles
    with pytest.raises(InputError) as err:
        compute_stats(tmp_path / "nope", root / "labels", v3_label_set)
    assert err.value.field == "imagery_dir"
    with pytest.raises(InputError) as err:
        compute_stats(root / "imagery", root / "labels", v3_label_set, tile_ids=["a", "zzz"])
    assert err.value.field == "tile_ids"
    (root / "labels" / "b.tif").unlink()
    with pytest.raises(InputError) as err:
        compute_stats(root / "imagery", root / "labels", v3_label_set)
    assert err.value.field == "labels_dir"
    tiny = LabelSet(name="one", classes=[v3_label_set.classes[0]])
    with pytest.raises(InputError, match="holds class 4"):
        compute_stats(root / "imagery", root / "labels", tiny, tile_ids=["a"])
    _tile(root, "c", np.zeros((1, 8, 8), np.float32), np.zeros((8, 8), np.uint8), -9999.0, bands=("B02",))
    with pytest.raises(InputError, match="has bands"):
        compute_stats(root / "imagery", root / "labels", v3_label_set, tile_ids=["a", "c"])
    with pytest.raises(NotFoundError):
        DatasetStats.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"band_names": []}')
    with pytest.raises(InputError):
        DatasetStats.load(tmp_path / "bad.json")


def test_cli_stats(two_tiles, repo_root: Path, tmp_path: Path):
    from lulc.cli import app

    root, _, _ = two_tiles
    out = tmp_path / "stats.json"
    (tmp_path / "split.json").write_text(json.dumps({"train": ["a"], "val": ["b"], "test": []}))
    result = CliRunner().invoke(
        app,
        [
            "data",
            "stats",
            "--imagery",
            str(root / "imagery"),
            "--labels",
            str(root / "labels"),
            "--label-set",
            str(repo_root / "conf/labels/v3.yaml"),
            "-o",
            str(out),
            "--split",
            str(tmp_path / "split.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert DatasetStats.load(out).tiles == 1
    assert "farmland" in result.output
