"""Cloud masking and composites: SCL/CLM flags, median and least-cloudy composites, the local store over real cloud
shapes, nodata that is never a class, and tiles skipped below `imagery.min_valid_share`."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from standins.cloudy import CLOUD_DN, DATES, clear_scene, cloudy_tile, observations

from lulc_core.config import S2_BANDS, ImageryConfig
from lulc_core.geo import Tile
from lulc_core.imagery import build_imagery_store, fetch_tiles_report, read_report
from lulc_core.imagery.clouds import SCL_INVALID, cloud_invalid, composite, valid_share
from lulc_core.imagery.local import LocalGeoTiffStore

REPO = Path(__file__).resolve().parents[1]


def test_cloud_invalid_flags_scl_classes_and_clm() -> None:
    scl = np.arange(12, dtype=np.float32).reshape(3, 4)
    flagged = set(np.flatnonzero(cloud_invalid(scl)).tolist())
    assert flagged == set(SCL_INVALID) == {1, 3, 8, 9, 10}
    clm = np.zeros((3, 4))
    clm[0, 0] = 1
    assert cloud_invalid(scl, clm)[0, 0] and cloud_invalid(None, clm).sum() == 1
    with pytest.raises(ValueError):
        cloud_invalid(None, None)


def test_composite_median_and_least_cloudy_ignore_masked_observations() -> None:
    nan = np.nan
    stack = np.array([[[[1.0, nan]]], [[[3.0, nan]]], [[[nan, nan]]], [[[2.0, 7.0]]]])  # (T=4, B=1, 1, 2)
    med = composite(stack, "median")
    assert med[0, 0, 0] == 2.0 and med[0, 0, 1] == 7.0
    first = composite(stack, "least_cloudy", order=[3, 0, 1, 2])
    assert first[0, 0, 0] == 2.0 and first[0, 0, 1] == 7.0
    none = composite(np.full((2, 1, 1, 1), nan), "median")
    assert np.isnan(none).all()  # no valid observation: nodata
    with pytest.raises(ValueError, match="composite"):
        composite(stack, "mean")


def _write_observations(directory: Path, keep: tuple[int, ...] = (0, 1, 2, 3)) -> None:
    """Cloudy observations as GeoTIFFs with B01..B12, SCL and CLM, as a local store directory holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    for obs in [observations()[i] for i in keep]:
        data = np.concatenate([obs.s2, obs.scl[None], obs.clm[None]]).astype("float32")
        profile = {"driver": "GTiff", "count": 14, "dtype": "float32", "crs": obs.crs, "transform": obs.transform}
        with rasterio.open(directory / f"s2_{obs.day}.tif", "w", width=224, height=224, **profile) as dst:
            dst.write(data)
            dst.descriptions = (*S2_BANDS, "SCL", "CLM")
            dst.update_tags(ACQUISITION_DATE=obs.day.isoformat())


def _contaminated(image: np.ndarray, truth: np.ndarray) -> float:
    """Share of pixels whose finite value is not the clear truth (cloud left in the image)."""
    finite = np.isfinite(image).all(axis=0)
    wrong = finite & (np.abs(image - truth) > 1e-3).any(axis=0)
    return float(wrong.mean())


@pytest.mark.parametrize("method", ["median", "least_cloudy"])
def test_cloud_composite_local_store_masks_real_cloud_shapes_and_is_cleaner_than_any_date(
    tmp_path: Path, method: str
) -> None:
    _write_observations(tmp_path / "obs")
    truth = clear_scene()[0].astype(np.float32)
    tile = cloudy_tile()
    store = LocalGeoTiffStore(tmp_path / "obs", composite=method)
    raster = store.fetch(tile, S2_BANDS)
    assert _contaminated(raster.data, truth) == 0.0  # every flagged pixel masked: no cloud reflectance left
    assert not (raster.data == CLOUD_DN).any()
    all_cloudy = np.logical_and.reduce([o.clm.astype(bool) for o in observations()])
    assert np.isnan(raster.data[:, all_cloudy]).all() and (~raster.valid_mask == all_cloudy).all()
    single_dates = [o.s2.astype(np.float32) for o in observations()]
    assert all(_contaminated(obs, truth) > 0.2 for obs in single_dates)  # every date alone is > 20 % cloud
    assert valid_share(raster.data) > max(1 - o.cloud_percent / 100 for o in observations())
    unmasked = LocalGeoTiffStore(tmp_path / "obs", cloud_mask=False).fetch(tile, S2_BANDS)
    assert _contaminated(unmasked.data, truth) > 0.2  # without masking the first date's clouds stay


def test_cloud_nodata_is_never_a_class_in_training_or_prediction(tmp_path: Path, registry_tiny_bundle: Path) -> None:
    from lulc_core.bundle import ModelBundle
    from lulc_core.inference import predict_raster

    _write_observations(tmp_path / "obs")
    tile = cloudy_tile()
    raster = LocalGeoTiffStore(tmp_path / "obs").fetch(tile, ["B02", "B03", "B04"])
    holes = ~raster.valid_mask
    assert holes.any()
    bundle = ModelBundle.load(registry_tiny_bundle)
    prediction = predict_raster(bundle, raster, window=64, overlap=16, threshold=0.0)
    classes = prediction.classes.data[0]
    assert (classes[holes] == 0).all() and (classes[~holes] > 0).all()  # cloud -> unknown, never a class


def test_cloud_nodata_pixels_get_label_0_for_the_loss(tmp_path: Path, v3_label_set) -> None:
    from lulc_core.dataset import read_tile_window
    from lulc_core.raster import Raster, write_geotiff

    _write_observations(tmp_path / "obs")
    tile = cloudy_tile()
    raster = LocalGeoTiffStore(tmp_path / "obs").fetch(tile, ["B02", "B03", "B04"])
    img = write_geotiff(tmp_path / "img.tif", raster, nodata=float("nan"), dtype="float32")
    labels = Raster(np.full((1, 224, 224), 2, np.uint8), raster.transform, raster.crs, ["class"])
    lab = write_geotiff(tmp_path / "lab.tif", labels, dtype="uint8")

    class Stats:
        band_names = ["B02", "B03", "B04"]
        mean = [500.0, 500.0, 500.0]
        std = [100.0, 100.0, 100.0]
        class_names = list(v3_label_set.names)

    from lulc_core.dataset import TileData

    data = TileData(tile_id="t", image_path=img, label_path=lab, band_indexes=[1, 2, 3], height=224, width=224)
    image, y = read_tile_window(data, rasterio.windows.Window(0, 0, 224, 224), Stats(), v3_label_set.num_classes)
    holes = ~raster.valid_mask
    assert (y[holes] == 0).all() and (y[~holes] == 2).all()  # class 0 is the loss's ignore_index
    assert (image[:, holes] == 0).all()


def test_cloud_min_valid_share_skips_tiles_with_a_count(tmp_path: Path) -> None:
    _write_observations(tmp_path / "obs", keep=(0, 1))  # two dates: some places cloudy in both
    base = cloudy_tile()
    x0, y0 = base.bounds[0], base.bounds[3]
    tiles = [
        Tile(id=f"t{r}{c}", crs=base.crs, bounds=(x0 + c * 640, y0 - (r + 1) * 640, x0 + (c + 1) * 640, y0 - r * 640),
             resolution=10.0, start=base.start, end=base.end)
        for r in range(3) for c in range(3)
    ]  # fmt: skip
    store = build_imagery_store(ImageryConfig(store="local", local_dir=tmp_path / "obs", min_valid_share=0.5))
    shares = {t.id: valid_share(store.fetch(t, ["B04"]).data) for t in tiles}
    low = {tid for tid, share in shares.items() if share < 0.5}
    assert len(low) == 3  # t00 (3 % valid), t01 (21 %), t10 (47 %): cloudy on both dates
    report = fetch_tiles_report(
        store, tiles, ["B04"], tmp_path / "out", min_valid_share=0.5, report_path=tmp_path / "report.json"
    )
    assert set(report.skipped_low_valid) == low and len(report.written) == 6
    for tid in report.written:
        with rasterio.open(tmp_path / "out" / f"{tid}.tif") as src:
            assert abs(float(src.tags()["VALID_SHARE"]) - shares[tid]) < 1e-3
    for tid in report.skipped_low_valid:
        assert not (tmp_path / "out" / f"{tid}.tif").exists()
    assert read_report(tmp_path / "report.json") == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"{t}.tif" for t in report.written)
    assert report.metadata()["tiles_skipped_low_valid"] == 3
    from typer.testing import CliRunner

    from lulc.cli import app
    from lulc_core.grid import write_tiles
    from lulc_core.split import TileSplit

    write_tiles(tiles, tmp_path / "tiles.geojson")
    result = CliRunner().invoke(
        app,
        ["model", "split", "-c", str(REPO / "conf" / "run.yaml"), "-t", str(tmp_path / "tiles.geojson"),
         "-o", str(tmp_path / "split.json"), "--imagery", str(tmp_path / "out")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    split = TileSplit.load(tmp_path / "split.json")
    assert sorted(split.train + split.val + split.test) == sorted(report.written)  # skipped tiles never split


def test_cloud_observation_dates_are_inside_the_sample_frame() -> None:
    assert all(date(2017, 10, 25) <= d <= date(2017, 11, 4) for d in DATES)
    assert all(20 < o.cloud_percent < 70 for o in observations())


def test_per_sensor_normalisation_standardises_the_dem_per_tile_and_follows_the_bundle(
    repo_root: Path, registry_tiny_bundle: Path
) -> None:
    from lulc_core.bundle import ModelBundle
    from lulc_core.imagery import PerSensorNormalised
    from lulc_core.inference import Predictor

    sample = repo_root / "data" / "sample" / "imagery"
    tile = cloudy_tile(640.0)
    plain = build_imagery_store(ImageryConfig(store="local", local_dir=sample))
    store = build_imagery_store(ImageryConfig(store="local", local_dir=sample, sensor_normalisation="per_sensor"))
    assert isinstance(store, PerSensorNormalised)
    raw, norm = plain.fetch(tile, ["B04", "VV", "DEM"]), store.fetch(tile, ["B04", "VV", "DEM"])
    dem = norm.data[2]
    assert abs(float(dem.mean())) < 1e-4 and abs(float(dem.std()) - 1.0) < 1e-3  # mean 0, std 1 on this tile
    assert float(raw.data[2].mean()) > 3.0  # metres above sea level before
    np.testing.assert_array_equal(norm.data[:2], raw.data[:2])  # S2 as is, S1 already in dB
    bundle = ModelBundle.load(registry_tiny_bundle)
    assert not isinstance(Predictor(bundle, store).store, PerSensorNormalised)  # the bundle was trained without
    bundle.metadata.run_config = {"imagery": {"sensor_normalisation": "per_sensor"}}
    assert isinstance(Predictor(bundle, plain).store, PerSensorNormalised)  # ... or with it: the bundle decides
