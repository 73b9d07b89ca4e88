"""Local GeoTIFF imagery store: windowed read + warp onto the tile grid, mosaics, dates, coverage, fetch_tiles."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from lulc_core.config import DEFAULT_BANDS, ImageryConfig
from lulc_core.errors import InputError, LulcError, NotCoveredError
from lulc_core.geo import Tile
from lulc_core.imagery import ImageryStore, build_imagery_store, fetch_tiles, is_complete
from lulc_core.imagery.local import LocalGeoTiffStore

PATCH = "637U_59R_1_3"


@pytest.fixture(scope="module")
def sample_store(repo_root: Path) -> LocalGeoTiffStore:
    return LocalGeoTiffStore(repo_root / "data" / "sample" / "imagery")


@pytest.fixture(scope="module")
def s2_file(repo_root: Path) -> Path:
    return repo_root / "data" / "sample" / "imagery" / f"{PATCH}_s2.tif"


def _tile(bounds, crs="EPSG:32632", start=date(2017, 10, 25), end=date(2017, 11, 4), tile_id="t") -> Tile:
    return Tile(id=tile_id, crs=crs, bounds=bounds, resolution=10.0, start=start, end=end)


def _write(path: Path, data: np.ndarray, transform, crs, names, tags=None, nodata=None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=str(data.dtype),
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)
        if tags:
            dst.update_tags(**tags)
    return path


def test_fetch_returns_the_tile_grid_with_exact_pixels(sample_store, data_sample_tiles, s2_file):
    tile = data_sample_tiles[0]
    assert tile.crs == "EPSG:32632"
    raster = sample_store.fetch(tile, DEFAULT_BANDS)
    assert isinstance(sample_store, ImageryStore)
    assert raster.data.shape == (15, 64, 64) and raster.data.dtype == np.float32
    assert raster.band_names == DEFAULT_BANDS
    assert raster.crs.to_string() == tile.crs
    assert raster.bounds == pytest.approx(tile.bounds)
    assert raster.valid is not None and raster.valid.all()
    # the tile grid is 2.7 m off the file's grid: nearest resampling keeps each source pixel value
    with rasterio.open(s2_file) as src:
        expected = src.read(4, window=Window(0, 0, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(raster.data[DEFAULT_BANDS.index("B04")], expected)
    assert -40 < float(raster.data[DEFAULT_BANDS.index("VV")].mean()) < 5  # dB


def test_band_subset_in_requested_order(sample_store, data_sample_tiles):
    tile = data_sample_tiles[10]
    raster = sample_store.fetch(tile, ["DEM", "B04"])
    full = sample_store.fetch(tile, DEFAULT_BANDS)
    assert raster.band_names == ["DEM", "B04"]
    np.testing.assert_array_equal(raster.data[0], full.data[DEFAULT_BANDS.index("DEM")])
    np.testing.assert_array_equal(raster.data[1], full.data[DEFAULT_BANDS.index("B04")])


def test_other_crs_and_mosaic_of_two_halves(tmp_path: Path, s2_file: Path, data_sample_tiles):
    tile = data_sample_tiles[4]  # the centre tile of the Danish patch, across the halves' seam
    names = ["B03", "B04"]
    halves, geographic = tmp_path / "halves", tmp_path / "geographic"
    halves.mkdir()
    geographic.mkdir()
    with rasterio.open(s2_file) as src:
        data, transform, crs = src.read([3, 4]), src.transform, src.crs
        _write(halves / "left.tif", data[:, :, :112].copy(), transform, crs, names)
        right = transform @ rasterio.Affine.translation(112, 0)
        _write(halves / "right.tif", data[:, :, 112:].copy(), right, crs, names)
        dst_t, w, h = calculate_default_transform(crs, "EPSG:4326", src.width, src.height, *src.bounds)
        warped = np.zeros((2, h, w), np.int16)
        reproject(data, warped, src_transform=transform, src_crs=crs, dst_transform=dst_t, dst_crs="EPSG:4326")
    _write(geographic / "wgs84.tif", warped, dst_t, "EPSG:4326", names, nodata=0)
    reference = LocalGeoTiffStore(s2_file.parent).fetch(tile, names)
    mosaic = LocalGeoTiffStore(halves).fetch(tile, names)
    assert mosaic.valid is not None and mosaic.valid.all()
    np.testing.assert_array_equal(mosaic.data, reference.data)
    lonlat = LocalGeoTiffStore(geographic).fetch(tile, names)
    assert lonlat.valid is not None and lonlat.valid.mean() > 0.95
    # two nearest-neighbour warps of the same place: most pixels keep their value, all stay close
    assert np.isclose(lonlat.data, reference.data)[:, lonlat.valid].mean() > 0.5
    corr = np.corrcoef(lonlat.data[1][lonlat.valid], reference.data[1][lonlat.valid])[0, 1]
    assert corr > 0.8


def test_partial_coverage_has_a_mask(sample_store, data_sample_tiles):
    t = data_sample_tiles[0]
    shifted = _tile((t.bounds[0] - 320, t.bounds[1], t.bounds[2] - 320, t.bounds[3]))
    raster = sample_store.fetch(shifted, ["B04", "DEM"])
    assert raster.valid is not None
    assert 0.4 < raster.valid.mean() < 0.65
    assert np.isnan(raster.data[0][~raster.valid]).all()
    assert np.isfinite(raster.data[:, raster.valid]).all()


def test_date_preference(tmp_path: Path):
    transform = from_origin(500000, 6000000, 10, 10)
    ones = np.ones((1, 32, 32), np.float32)
    _write(tmp_path / "june.tif", ones, transform, "EPSG:32632", ["B04"], {"ACQUISITION_DATE": "2023-06-10"})
    _write(tmp_path / "august.tif", ones * 2, transform, "EPSG:32632", ["B04"], {"ACQUISITION_DATE": "2023-08-20"})
    _write(tmp_path / "dem.tif", ones * 7, transform, "EPSG:32632", ["DEM"])  # undated: always usable
    store = LocalGeoTiffStore(tmp_path)
    bounds = (500000.0, 5999680.0, 500320.0, 6000000.0)
    in_june = store.fetch(_tile(bounds, start=date(2023, 6, 1), end=date(2023, 6, 30)), ["B04", "DEM"])
    assert (in_june.data[0] == 1).all() and (in_june.data[1] == 7).all()
    in_august = store.fetch(_tile(bounds, start=date(2023, 8, 1), end=date(2023, 8, 31)), ["B04"])
    assert (in_august.data[0] == 2).all()
    # no file in range: the nearest date wins
    late_july = store.fetch(_tile(bounds, start=date(2023, 7, 25), end=date(2023, 7, 31)), ["B04"])
    assert (late_july.data[0] == 2).all()
    early_july = store.fetch(_tile(bounds, start=date(2023, 7, 1), end=date(2023, 7, 5)), ["B04"])
    assert (early_july.data[0] == 1).all()


def test_not_covered_names_tile_and_bands(sample_store, data_sample_tiles):
    far = _tile((300000.0, 5000000.0, 300640.0, 5000640.0), tile_id="far-away")
    with pytest.raises(NotCoveredError) as err:
        sample_store.fetch(far, ["B04", "VV"])
    assert "far-away" in str(err.value) and "B04" in str(err.value) and "VV" in str(err.value)
    with pytest.raises(NotCoveredError, match="SCL"):
        sample_store.fetch(data_sample_tiles[0], ["B04", "SCL"])
    with pytest.raises(InputError):
        sample_store.fetch(data_sample_tiles[0], ["B04", "B04"])


def test_bad_directories(tmp_path: Path):
    with pytest.raises(InputError) as err:
        LocalGeoTiffStore(tmp_path / "nope")
    assert err.value.field == "imagery.local_dir"
    with pytest.raises(InputError, match="no readable GeoTIFF"):
        LocalGeoTiffStore(tmp_path).fetch(_tile((0.0, 0.0, 640.0, 640.0)), ["B04"])
    with pytest.raises(InputError, match="resampling"):
        LocalGeoTiffStore(tmp_path, resampling="magic")


def test_fetch_tiles_writes_resumes_and_names_the_failing_tile(sample_store, data_sample_tiles, tmp_path: Path):
    tiles = data_sample_tiles[:4]
    out = tmp_path / "imagery"
    paths = fetch_tiles(sample_store, tiles, DEFAULT_BANDS, out, concurrency=2)
    assert [p.name for p in paths] == [f"{t.id}.tif" for t in tiles]
    with rasterio.open(paths[0]) as src:
        assert src.count == 15 and src.dtypes[0] == "float32"
        assert list(src.descriptions) == DEFAULT_BANDS
        assert np.isnan(src.nodata)
    assert all(is_complete(p, t, DEFAULT_BANDS) for p, t in zip(paths, tiles, strict=True))
    mtimes = [p.stat().st_mtime_ns for p in paths]
    fetch_tiles(sample_store, tiles, DEFAULT_BANDS, out, concurrency=2)  # resume: nothing rewritten
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    assert not is_complete(paths[0], tiles[0], ["B04"])  # other bands: not complete
    far = _tile((300000.0, 5000000.0, 300640.0, 5000640.0), tile_id="nowhere-tile")
    with pytest.raises(NotCoveredError, match="nowhere-tile"):
        fetch_tiles(sample_store, [*data_sample_tiles[4:6], far], ["B04"], tmp_path / "partial", concurrency=1)
    assert not (tmp_path / "partial" / "nowhere-tile.tif").exists()
    assert not list((tmp_path / "partial").glob(".*"))  # no partial files left


def test_fetch_tiles_wraps_foreign_errors(data_sample_tiles, tmp_path: Path):
    class Broken:
        def fetch(self, tile, bands):
            raise OSError("disk on fire")

    with pytest.raises(LulcError, match=data_sample_tiles[0].id):
        fetch_tiles(Broken(), data_sample_tiles[:1], ["B04"], tmp_path)


def test_build_imagery_store(repo_root: Path, tmp_path: Path):
    store = build_imagery_store(ImageryConfig(store="local", local_dir=repo_root / "data" / "sample" / "imagery"))
    assert isinstance(store, LocalGeoTiffStore)
    with pytest.raises(InputError) as err:
        build_imagery_store(ImageryConfig(store="local", local_dir=tmp_path / "missing"))
    assert err.value.field == "imagery.local_dir"


def test_build_imagery_store_dispatches_to_sentinelhub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from lulc_core.imagery.sentinelhub import SentinelHubStore

    monkeypatch.setenv("SH_CLIENT_ID", "client")
    monkeypatch.setenv("SH_CLIENT_SECRET", "secret")
    cfg = ImageryConfig(
        store="sentinelhub",
        sentinelhub={"base_url": "http://127.0.0.1:9", "token_url": "http://127.0.0.1:9/token"},
    )
    assert isinstance(build_imagery_store(cfg, cache_dir=tmp_path), SentinelHubStore)


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_tile_on_the_file_grid_is_read_without_warping_with_the_same_pixels(tmp_path: Path, resampling: str):
    """A tile whose grid is the file's shifted by whole pixels (partly outside it, with nodata pixels) gets exactly
    what rasterio's reproject onto the tile grid gives."""
    rng = np.random.default_rng(3)
    data = rng.normal(size=(2, 40, 50)).astype(np.float32)
    data[:, 5:9, 7:12] = -9999.0
    transform = from_origin(500_000.0, 6_200_000.0, 10.0, 10.0)
    _write(tmp_path / "f.tif", data, transform, "EPSG:32632", ["B04", "B08"], nodata=-9999.0)
    store = LocalGeoTiffStore(tmp_path, resampling)
    tile = _tile((500_000.0 - 30, 6_200_000.0 - 420, 500_000.0 + 290, 6_200_000.0 + 20))  # 32 x 44 px
    raster = store.fetch(tile, ["B08", "B04"])
    expected = np.full((2, 44, 32), np.nan, np.float32)
    source = np.where(data == -9999.0, np.nan, data)[::-1]
    reproject(source, expected, src_transform=transform, src_crs="EPSG:32632", src_nodata=np.nan,
              dst_transform=from_origin(tile.bounds[0], tile.bounds[3], 10.0, 10.0), dst_crs="EPSG:32632",
              dst_nodata=np.nan, resampling=rasterio.enums.Resampling[resampling])  # fmt: skip
    np.testing.assert_array_equal(raster.data, expected)
    assert raster.valid is not None and raster.valid.sum() == 29 * 40 - 4 * 5  # 29 columns and 40 rows inside the file
