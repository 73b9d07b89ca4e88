"""lulc_core.inference: sliding windows, blending, blocks, threshold, uncertainty, Predictor, outputs."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from lulc_core.bundle import BundleMetadata, ModelBundle, Normalisation, save_bundle
from lulc_core.config import ServingConfig
from lulc_core.errors import InputError, NotCoveredError, TooLargeError
from lulc_core.geo import BBox, Tile, tile_for_bbox
from lulc_core.inference import (
    FusionMode,
    Prediction,
    PredictOptions,
    Predictor,
    predict_raster,
    prediction_paths,
    write_prediction,
    write_preview_png,
    write_uncertainty,
    write_uncertainty_preview_png,
)
from lulc_core.inference.windows import plan_axis, ramp_weights, sliding_window
from lulc_core.labels import LabelSet
from lulc_core.model import build_segformer, logits_at_input_size
from lulc_core.raster import Raster, write_geotiff

BANDS = ["B02", "B03", "B04", "B08"]
CRS_UTM = CRS.from_epsg(32632)
# A patch in Jutland on UTM 32N, 10 m pixels.
ORIGIN = (550_000.0, 6_345_000.0)


def _metadata(label_set: LabelSet) -> BundleMetadata:
    return BundleMetadata(
        variant="b0",
        bands=BANDS,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[1000.0] * 4, std=[500.0] * 4),
        label_set=label_set,
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, v3_label_set: LabelSet) -> ModelBundle:
    """A random-init SegFormer-b0 bundle, saved and loaded like a trained one."""
    torch.manual_seed(0)
    model = build_segformer("b0", len(BANDS), v3_label_set.num_classes)
    path = save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", model, _metadata(v3_label_set))
    return ModelBundle.load(path)


def _imagery(height: int, width: int, origin: tuple[float, float] = ORIGIN, seed: int = 0) -> Raster:
    """Smooth synthetic reflectances (fields of different brightness) with a nodata corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    data = np.stack(
        [1000 + 400 * np.sin(yy / (11 + 3 * k) + k) * np.cos(xx / (17 + 5 * k)) for k in range(len(BANDS))]
    ).astype(np.float32)
    data += rng.normal(0, 20, data.shape).astype(np.float32)
    valid = np.ones((height, width), bool)
    valid[:10, :12] = False
    data[:, ~valid] = np.nan
    return Raster(data, Affine(10.0, 0, origin[0], 0, -10.0, origin[1]), CRS_UTM, list(BANDS), valid)


class _Pointwise(torch.nn.Module):
    """A 1x1-convolution segmenter: its output at a pixel depends on that pixel only, so windowed prediction
    with correct blending must equal a whole-image forward pass exactly."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(n_in, n_out, 1)
        torch.nn.init.normal_(self.conv.weight, std=2.0)
        self.config = SimpleNamespace(num_labels=n_out, num_channels=n_in)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.conv(pixel_values))


def _whole_image_probabilities(bundle: ModelBundle, raster: Raster) -> np.ndarray:
    meta = bundle.metadata
    mean = np.asarray(meta.normalisation.mean, np.float32)[:, None, None]
    std = np.asarray(meta.normalisation.std, np.float32)[:, None, None]
    x = np.nan_to_num((raster.data - mean) / std)
    with torch.inference_mode():
        logits = logits_at_input_size(bundle.model, torch.from_numpy(x)[None])  # type: ignore[arg-type]
    return torch.softmax(logits[:, 1:], dim=1)[0].numpy()


# --- windows --------------------------------------------------------------------------------------------------


def test_window_plan_covers_axis_and_shrinks_for_small_areas() -> None:
    plan = plan_axis(1000, 256, 32, 1024)
    assert plan.origins[0] == 0 and plan.origins[-1] + plan.window == 1000
    assert all(b - a <= 256 - 32 for a, b in zip(plan.origins, plan.origins[1:], strict=False))
    small = plan_axis(70, 256, 32, 1024)
    assert small.window == 96 and small.origins == (0,)  # padded to a multiple of 32, one window
    w = ramp_weights(64, 16)
    assert w.min() > 0 and w.max() == 1 and np.allclose(w, w[::-1])


@pytest.mark.parametrize(("window", "overlap"), [(100, 16), (64, 40), (0, 0)])
def test_bad_window_geometry_is_an_input_error(bundle: ModelBundle, window: int, overlap: int) -> None:
    with pytest.raises(InputError, match=r"serving\.(window|overlap)"):
        predict_raster(bundle, _imagery(40, 40), window=window, overlap=overlap)


@pytest.mark.parametrize("block_px", [40, 100, 4096])
def test_blending_is_the_weighted_mean_of_covering_windows(block_px: int) -> None:
    """Each window predicts one constant (its id); every pixel must get sum(w_k * id_k) / sum(w_k) over the
    windows covering it, with w the 2D cosine ramp — also across block borders (carried strips)."""
    height, width, window, overlap = 110, 150, 64, 24
    rows = plan_axis(height, window, overlap, block_px)
    cols = plan_axis(width, window, overlap, block_px)
    ids = np.arange(height * width, dtype=np.float32).reshape(1, height, width)

    def source(region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = region
        return ids[:, r0:r1, c0:c1], np.ones((r1 - r0, c1 - c0), bool)

    def predict_batch(x: torch.Tensor) -> tuple[torch.Tensor, None]:
        origin = x[:, 0, 0, 0].reshape(-1, 1, 1, 1)  # the pixel id of the window's top-left corner
        return origin.expand(-1, 1, x.shape[2], x.shape[3]).clone(), None

    out = np.zeros((height, width), np.float64)
    regions: list[tuple[int, int, int, int]] = []

    def on_final(region: tuple[int, int, int, int], mean: np.ndarray, sq: np.ndarray | None, valid: np.ndarray) -> None:
        regions.append(region)
        out[region[0] : region[1], region[2] : region[3]] = mean[0]

    sliding_window(height, width, 1, source, predict_batch, on_final, window=window, overlap=overlap, block_px=block_px)
    num = np.zeros((height, width))
    den = np.zeros((height, width))
    w2 = np.outer(ramp_weights(window, overlap), ramp_weights(window, overlap))
    for oy in rows.origins:
        for ox in cols.origins:
            num[oy : oy + window, ox : ox + window] += w2 * ids[0, oy, ox]
            den[oy : oy + window, ox : ox + window] += w2
    np.testing.assert_allclose(out, num / den, rtol=1e-5)
    covered = np.zeros((height, width), int)
    for r0, r1, c0, c1 in regions:
        covered[r0:r1, c0:c1] += 1
    assert (covered == 1).all(), "finished regions tile the grid exactly once"


def test_parallel_batches_give_the_same_bits_in_the_same_order() -> None:
    """Batches predicted on several threads, finishing in any order (random delays), are blended in raster order:
    the regions and every bit of the means equal the one-thread run's."""
    import time

    height, width = 150, 230
    data = np.random.default_rng(5).random((3, height, width), dtype=np.float32)
    delays = np.random.default_rng(6)

    def source(region: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = region
        return data[:, r0:r1, c0:c1], np.ones((r1 - r0, c1 - c0), bool)

    def predict_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        time.sleep(float(delays.uniform(0, 0.01)))
        p = torch.softmax(x * 3, dim=1)
        return p, p * p

    calls: list[int] = []  # threads of each call: 1, or those the last round's batches share

    def predict_on(threads: int) -> Any:
        def shared(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(threads)
            return predict_batch(x)

        return shared

    def run(workers: int) -> tuple[list[tuple[int, int, int, int]], list[np.ndarray]]:
        regions: list[tuple[int, int, int, int]] = []
        means: list[np.ndarray] = []
        calls.clear()

        def on_final(region: tuple[int, int, int, int], mean: np.ndarray, sq: np.ndarray | None, v: np.ndarray) -> None:
            assert sq is not None
            regions.append(region)
            means.extend([mean.copy(), sq.copy()])

        sliding_window(height, width, 3, source, predict_batch, on_final, window=64, overlap=24, batch_size=2,
                       block_px=80, with_squares=True, workers=workers, predict_on=predict_on)  # fmt: skip
        return regions, means

    regions, means = run(1)
    assert calls == []
    regions5, means5 = run(5)  # 6 blocks of 2 x 2 windows = 12 batches: the last 2 share the 5 threads, 2 each
    assert calls == [2, 2]
    assert regions5 == regions and len(regions) == 6
    for a, b in zip(means, means5, strict=True):
        np.testing.assert_array_equal(a, b)


def test_blending_equals_whole_image_for_a_pixelwise_model(v3_label_set: LabelSet) -> None:
    """Window offsets, shifted last windows and padding are exact: a 1x1 model gives the whole-image answer."""
    torch.manual_seed(1)
    model = _Pointwise(len(BANDS), v3_label_set.num_classes).eval()
    pointwise = ModelBundle(Path("pointwise"), _metadata(v3_label_set), model)
    raster = _imagery(150, 230)  # not multiples of 32: the last windows are shifted back, 40 px block edges
    whole = _whole_image_probabilities(pointwise, raster)
    pred = predict_raster(pointwise, raster, window=64, overlap=24, return_probabilities=True, block_px=80)
    assert pred.probabilities is not None
    got = pred.probabilities.data.astype(np.float32)
    assert np.abs(got - whole).max() < 2e-3  # float16 storage
    expected = (whole.argmax(0) + 1).astype(np.uint8)
    expected[~raster.valid_mask] = 0
    assert (pred.classes.data[0] == expected).mean() > 0.999


def test_blending_close_to_whole_image_segformer_at_overlaps(bundle: ModelBundle) -> None:
    """SegFormer attends over its whole input, so windows differ from one big pass — but only slightly."""
    raster = _imagery(192, 256)  # multiples of 32: the whole-image pass needs no padding
    raster.valid = None
    raster.data = np.nan_to_num(raster.data, nan=1000.0)
    whole = _whole_image_probabilities(bundle, raster)
    pred = predict_raster(bundle, raster, window=128, overlap=32, return_probabilities=True)
    assert pred.probabilities is not None
    got = pred.probabilities.data.astype(np.float32)
    seam_cols = slice(96 - 16, 96 + 48)  # windows at x = 0, 96 and 128: overlap zones 96..128(+)
    diff = np.abs(got - whole)
    assert diff[:, :, seam_cols].mean() < 0.01
    assert diff.max() < 0.05


def test_blocks_do_not_change_the_result(bundle: ModelBundle) -> None:
    """Processing in small blocks (imagery per block, carried overlap strips) equals one big block."""
    raster = _imagery(130, 170)
    one = predict_raster(bundle, raster, window=64, overlap=16, return_probabilities=True, block_px=4096)
    many = predict_raster(bundle, raster, window=64, overlap=16, return_probabilities=True, block_px=48)
    assert one.probabilities is not None and many.probabilities is not None
    np.testing.assert_allclose(
        many.probabilities.data.astype(np.float32), one.probabilities.data.astype(np.float32), atol=2e-3
    )
    assert (many.classes.data == one.classes.data).mean() > 0.999


# --- predict_raster -------------------------------------------------------------------------------------------


def test_predict_raster_keeps_georeference_and_classes(bundle: ModelBundle, v3_label_set: LabelSet) -> None:
    raster = _imagery(100, 140)
    pred = predict_raster(bundle, raster, window=64, overlap=16)
    cls = pred.classes
    assert cls.data.shape == (1, 100, 140) and cls.data.dtype == np.uint8
    assert cls.transform == raster.transform and cls.crs == raster.crs and cls.bounds == raster.bounds
    assert cls.data.max() < v3_label_set.num_classes
    assert (cls.data[0][~raster.valid_mask] == 0).all(), "nodata pixels are unknown"
    assert (cls.data[0][raster.valid_mask] > 0).all(), "threshold 0: every valid pixel gets a class"
    assert pred.probabilities is None and pred.uncertainty is None
    assert cls.tags["CLASS_NAMES"].startswith('["unknown"')


def test_band_order_comes_from_the_bundle(bundle: ModelBundle) -> None:
    raster = _imagery(64, 64)
    shuffled = Raster(raster.data[::-1].copy(), raster.transform, raster.crs, BANDS[::-1], raster.valid)
    a = predict_raster(bundle, raster, window=64, overlap=0, return_probabilities=True)
    b = predict_raster(bundle, shuffled, window=64, overlap=0, return_probabilities=True)
    assert a.probabilities is not None and b.probabilities is not None
    np.testing.assert_array_equal(a.probabilities.data, b.probabilities.data)


def test_missing_bands_are_an_input_error(bundle: ModelBundle) -> None:
    raster = _imagery(64, 64).select(["B02", "B03", "B04"])
    with pytest.raises(InputError, match=r"raster\.bands.*B08"):
        predict_raster(bundle, raster)


def test_threshold_turns_unsure_pixels_unknown(bundle: ModelBundle) -> None:
    raster = _imagery(96, 96)
    base = predict_raster(bundle, raster, window=64, overlap=16, return_probabilities=True)
    assert base.probabilities is not None
    top = base.probabilities.data.astype(np.float32).max(axis=0)
    t = float(np.median(top[raster.valid_mask]))
    pred = predict_raster(bundle, raster, window=64, overlap=16, threshold=t)
    classes = pred.classes.data[0]
    assert (classes[top < t - 1e-3] == 0).all()
    assert (classes[(top > t + 1e-3) & raster.valid_mask] > 0).all()
    assert 0.2 < (classes == 0).mean() < 0.8
    everything = predict_raster(bundle, raster, window=64, overlap=16, threshold=1.0)
    assert (everything.classes.data == 0).all()
    with pytest.raises(InputError, match="threshold"):
        predict_raster(bundle, raster, threshold=1.5)


def test_uncertainty_bounds_and_consistency(bundle: ModelBundle) -> None:
    raster = _imagery(64, 96)
    pred = predict_raster(
        bundle, raster, window=64, overlap=16, uncertainty=True, tta_variants=4, return_probabilities=True
    )
    assert pred.uncertainty is not None and pred.probabilities is not None
    assert pred.uncertainty.band_names == ["variance", "entropy"]
    assert pred.uncertainty.data.dtype == np.float32
    variance, entropy = pred.uncertainty.data
    valid = raster.valid_mask
    assert np.isnan(variance[~valid]).all() and np.isnan(entropy[~valid]).all()
    assert (variance[valid] >= 0).all() and (variance[valid] <= 0.25).all() and variance[valid].max() > 0
    assert (entropy[valid] >= 0).all() and (entropy[valid] <= 1).all()
    p = pred.probabilities.data.astype(np.float64)  # the TTA mean
    expected = -(np.clip(p, 1e-12, 1) * np.log(np.clip(p, 1e-12, 1))).sum(0) / np.log(p.shape[0])
    np.testing.assert_allclose(entropy[valid], expected[valid], atol=5e-3)


# --- outputs --------------------------------------------------------------------------------------------------


def test_write_prediction_is_a_cog_with_colour_map_and_class_names(
    bundle: ModelBundle, v3_label_set: LabelSet, tmp_path: Path
) -> None:
    raster = _imagery(160, 200)
    pred = predict_raster(
        bundle, raster, window=64, overlap=16, return_probabilities=True, uncertainty=True, tta_variants=2
    )
    out = write_prediction(pred, tmp_path / "pred.tif")
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.overviews(1), "overviews are present"
        assert src.crs == CRS_UTM and src.transform == raster.transform and src.dtypes[0] == "uint8"
        cmap = src.colormap(1)
        for value, rgba in v3_label_set.colormap().items():
            assert cmap[value] == rgba
        assert src.tags()["CLASS_2"] == "forest"
        np.testing.assert_array_equal(src.read(1), pred.classes.data[0])
    paths = prediction_paths(tmp_path / "pred.tif")
    with rasterio.open(paths["probabilities"]) as src:
        assert src.count == 6 and src.dtypes[0] == "float32"
        assert list(src.descriptions) == v3_label_set.names[1:]
        sums = src.read().sum(axis=0)
        assert np.allclose(sums[raster.valid_mask], 1.0, atol=1e-2)
    with rasterio.open(paths["uncertainty"]) as src:
        assert src.count == 2 and list(src.descriptions) == ["variance", "entropy"]
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert not list(tmp_path.glob(".*part")), "no partial files left"


def test_preview_png_shows_class_colours(bundle: ModelBundle, v3_label_set: LabelSet, tmp_path: Path) -> None:
    import matplotlib.image as mpimg

    pred = predict_raster(bundle, _imagery(80, 120), window=64, overlap=16)
    pred.title = "test area"
    path = write_preview_png(pred, tmp_path / "preview.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = (mpimg.imread(path)[..., :3] * 255).round().astype(int)
    majority = int(np.bincount(pred.classes.data[0].ravel()).argmax())
    rgb = v3_label_set.colormap()[majority][:3]
    assert (np.abs(image - np.array(rgb)).sum(axis=-1) == 0).sum() > 500


def test_uncertainty_outputs_need_uncertainty(bundle: ModelBundle, tmp_path: Path) -> None:
    pred = predict_raster(bundle, _imagery(64, 64), window=64, overlap=0, uncertainty=True, tta_variants=2)
    assert write_uncertainty(pred, tmp_path / "u.tif").is_file()
    assert write_uncertainty_preview_png(pred, tmp_path / "u.png").read_bytes()[:4] == b"\x89PNG"
    plain = Prediction(classes=pred.classes, label_set=pred.label_set)
    with pytest.raises(ValueError, match="uncertainty"):
        write_uncertainty(plain, tmp_path / "v.tif")


# --- Predictor ------------------------------------------------------------------------------------------------


class _RecordingStore:
    """Wraps the real local GeoTIFF store and records the tiles it is asked for."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.tiles: list[Tile] = []

    def fetch(self, tile: Tile, bands: list[str]) -> Raster:
        self.tiles.append(tile)
        return self.inner.fetch(tile, bands)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="module")
def imagery_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local imagery store directory holding one synthetic 4-band GeoTIFF of 400 x 400 px."""
    directory = tmp_path_factory.mktemp("imagery")
    raster = _imagery(400, 400)
    raster.tags = {"ACQUISITION_DATE": "2023-06-10"}
    write_geotiff(directory / "scene.tif", raster, nodata=float("nan"))
    return directory


@pytest.fixture
def store(imagery_dir: Path) -> _RecordingStore:
    local = pytest.importorskip("lulc_core.imagery.local")
    return _RecordingStore(local.LocalGeoTiffStore(imagery_dir))


def _bbox_inside(margin_px: int = 100, size_px: int = 150) -> BBox:
    from pyproj import Transformer

    to_wgs = Transformer.from_crs(CRS_UTM, "EPSG:4326", always_xy=True)
    x0, y1 = ORIGIN[0] + margin_px * 10, ORIGIN[1] - margin_px * 10
    w, s, e, n = to_wgs.transform_bounds(x0, y1 - size_px * 10, x0 + size_px * 10, y1)
    return BBox(west=w, south=s, east=e, north=n)


START, END = date(2023, 6, 1), date(2023, 6, 30)


def test_predictor_grid_equals_request_tile(bundle: ModelBundle, store: _RecordingStore) -> None:
    settings = ServingConfig(window=64, overlap=16, edge_buffer_m=0)
    bbox = _bbox_inside()
    pred = Predictor(bundle, store, settings=settings).predict(bbox, START, END, PredictOptions())
    tile = tile_for_bbox(bbox, 10.0, START, END)
    assert pred.classes.crs == CRS.from_user_input(tile.crs)
    assert pred.classes.bounds == pytest.approx(tile.bounds)
    assert (pred.classes.height, pred.classes.width) == (tile.height, tile.width)
    assert pred.classes.transform.a == 10.0 and pred.classes.transform.e == -10.0
    assert pred.title and "only_model" in pred.title
    # same imagery through predict_raster on the fetched tile: identical classes
    raster = store.inner.fetch(tile, BANDS)  # type: ignore[attr-defined]
    direct = predict_raster(bundle, raster, window=64, overlap=16)
    np.testing.assert_array_equal(pred.classes.data, direct.classes.data)


def test_predictor_edge_buffer_is_fetched_and_cropped(bundle: ModelBundle, store: _RecordingStore) -> None:
    settings = ServingConfig(window=64, overlap=16, edge_buffer_m=200)
    bbox = _bbox_inside()
    predictor = Predictor(bundle, store, settings=settings, block_px=100)
    pred = predictor.predict(bbox, START, END, PredictOptions(probabilities=True))
    tile = tile_for_bbox(bbox, 10.0, START, END)
    assert pred.classes.bounds == pytest.approx(tile.bounds)
    assert pred.probabilities is not None and pred.probabilities.data.shape[1:] == (tile.height, tile.width)
    assert len(store.tiles) == 4, "imagery is fetched per block (2 x 2 blocks of 2 x 2 windows)"
    fetched = np.array([t.bounds for t in store.tiles])
    union = (fetched[:, 0].min(), fetched[:, 1].min(), fetched[:, 2].max(), fetched[:, 3].max())
    expected = (tile.bounds[0] - 200, tile.bounds[1] - 200, tile.bounds[2] + 200, tile.bounds[3] + 200)
    assert union == pytest.approx(expected)
    assert max(t.width for t in store.tiles) <= 48 + 64, "one block at a time"
    assert len({t.id for t in store.tiles}) == len(store.tiles)


def test_predictor_area_limit_is_413(bundle: ModelBundle, store: _RecordingStore) -> None:
    predictor = Predictor(bundle, store, settings=ServingConfig(max_pixels=10_000))
    with pytest.raises(TooLargeError, match=r"max_pixels") as err:
        predictor.predict(_bbox_inside(), START, END)
    assert err.value.status_code == 413 and err.value.field == "bbox"
    big = BBox(west=9.0, south=57.0, east=9.45, north=57.25)  # ~27 x 28 km: ~7.6 Mpx at 10 m
    with pytest.raises(TooLargeError, match="probabilities"):
        Predictor(bundle, store).predict(big, START, END, PredictOptions(probabilities=True))
    assert store.tiles == [], "refused before any imagery was fetched"


def test_predictor_not_covered(bundle: ModelBundle, store: _RecordingStore) -> None:
    far = BBox(west=20.0, south=50.0, east=20.01, north=50.01)
    with pytest.raises(NotCoveredError):
        Predictor(bundle, store).predict(far, START, END)


def test_predictor_bad_dates_and_options(bundle: ModelBundle, store: _RecordingStore) -> None:
    with pytest.raises(InputError, match="time_range"):
        Predictor(bundle, store).predict(_bbox_inside(), END, START)
    with pytest.raises(InputError, match=r"options\.threshold"):
        PredictOptions.build(threshold=2)
    with pytest.raises(InputError, match=r"options\.fusion_mode"):
        PredictOptions.build(fusion_mode="best_guess")


def test_predictor_fusion_modes_need_their_sources(bundle: ModelBundle, store: _RecordingStore) -> None:
    predictor = Predictor(bundle, store)
    with pytest.raises(InputError, match="no OSM source"):
        predictor.predict(_bbox_inside(), START, END, PredictOptions(fusion_mode=FusionMode.FAVOUR_OSM))
    with pytest.raises(InputError, match="BYOC"):
        predictor.predict(_bbox_inside(), START, END, PredictOptions(fusion_mode=FusionMode.HARMONIZED_CORINE))
    with pytest.raises(InputError, match="byoc_corine_collection"):
        predictor.predict(_bbox_inside(), START, END, PredictOptions(fusion_mode=FusionMode.ONLY_CORINE))


# --- Predictor with OSM / CORINE fusion ---------------------------------------------------------------------


@pytest.fixture
def forest_osm(tmp_path: Path) -> object:
    """A real local OSM source: one landuse=forest polygon over the western half of the request bbox."""
    gpd = pytest.importorskip("geopandas")
    local_osm = pytest.importorskip("lulc_core.osm.local")
    pytest.importorskip("lulc_core.labelling")
    from shapely.geometry import box

    bbox = _bbox_inside()
    mid = (bbox.west + bbox.east) / 2
    frame = gpd.GeoDataFrame(
        {"osm_id": ["way/1"], "landuse": ["forest"]},
        geometry=[box(bbox.west - 0.01, bbox.south - 0.01, mid, bbox.north + 0.01)],
        crs="EPSG:4326",
    )
    path = tmp_path / "osm.geojson"
    frame.to_file(path, driver="GeoJSON")
    return local_osm.LocalOsmSource(path)


def test_predictor_fusion_with_a_local_osm_source(
    bundle: ModelBundle, store: _RecordingStore, forest_osm: object, v3_label_set: LabelSet
) -> None:
    forest = v3_label_set.value_of("forest")
    settings = ServingConfig(window=64, overlap=16, edge_buffer_m=0)
    predictor = Predictor(bundle, store, forest_osm, settings)  # type: ignore[arg-type]
    bbox = _bbox_inside()

    only_osm = predictor.predict(bbox, START, END, PredictOptions(fusion_mode=FusionMode.ONLY_OSM))
    assert store.tiles == [], "only_osm does not fetch imagery or run the model"
    osm = only_osm.classes.data[0]
    west = osm[:, : osm.shape[1] // 2 - 2]
    east = osm[:, osm.shape[1] // 2 + 2 :]
    assert (west == forest).all() and (east == 0).all()

    model = predictor.predict(bbox, START, END, PredictOptions(fusion_mode=FusionMode.ONLY_MODEL)).classes.data[0]
    favour_osm = predictor.predict(bbox, START, END, PredictOptions(fusion_mode=FusionMode.FAVOUR_OSM))
    expected = np.where(osm > 0, osm, model)
    np.testing.assert_array_equal(favour_osm.classes.data[0], expected)

    unsure = PredictOptions(fusion_mode=FusionMode.FAVOUR_MODEL, threshold=1.0)  # the model says unknown everywhere
    np.testing.assert_array_equal(predictor.predict(bbox, START, END, unsure).classes.data[0], osm)

    mixin = PredictOptions(fusion_mode=FusionMode.MEAN_MIXIN, mixin_weight=0.9, probabilities=True)
    mixed = predictor.predict(bbox, START, END, mixin)
    assert (mixed.classes.data[0][osm > 0] == forest).all()
    np.testing.assert_array_equal(mixed.classes.data[0][osm == 0], model[osm == 0])
    assert mixed.classes.tags["FUSION_MODE"] == "mean_mixin"

    with pytest.raises(InputError, match="uncertainty"):
        predictor.predict(bbox, START, END, PredictOptions(fusion_mode=FusionMode.ONLY_OSM, uncertainty=True))


class _CorineSource:
    """A CORINE-capable label source (stands in for the Sentinel Hub BYOC CLC collection)."""

    def features(self, *args: object) -> object:
        raise AssertionError("not used by harmonized_corine")

    def corine_codes(self, tile: Tile) -> Raster:
        codes = np.full((1, tile.height, tile.width), 211, np.uint16)  # non-irrigated arable land
        codes[0, : tile.height // 2] = 311  # broad-leaved forest
        transform = Affine(tile.resolution, 0, tile.bounds[0], 0, -tile.resolution, tile.bounds[3])
        return Raster(codes, transform, CRS.from_user_input(tile.crs), ["clc"])


def test_predictor_harmonized_corine(bundle: ModelBundle, store: _RecordingStore, v3_label_set: LabelSet) -> None:
    predictor = Predictor(bundle, store, _CorineSource())  # type: ignore[arg-type]
    options = PredictOptions(fusion_mode=FusionMode.HARMONIZED_CORINE)
    classes = predictor.predict(_bbox_inside(), START, END, options).classes.data[0]
    half = classes.shape[0] // 2
    assert (classes[:half] == v3_label_set.value_of("forest")).all()
    assert (classes[half:] == v3_label_set.value_of("farmland")).all()
    assert store.tiles == []
