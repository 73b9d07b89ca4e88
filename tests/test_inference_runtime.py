"""Inference runtimes: the bundle's model.onnx in onnxruntime gives the torch model's classes; clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from lulc_core.bundle import ModelBundle, export_onnx
from lulc_core.errors import ConfigError, InputError
from lulc_core.inference import predict_raster
from lulc_core.inference.runtime import logits_function, resolve_runtime
from lulc_core.raster import Raster

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def onnx_bundle(registry_tiny_bundle_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the registry engineer's tiny bundle (b0, 3 bands, v3 labels) with its model.onnx."""
    path = tmp_path_factory.mktemp("runtime") / "bundle"
    shutil.copytree(registry_tiny_bundle_source, path)
    export_onnx(path)
    return path


def _raster(bands: list[str], size: int = 96) -> Raster:
    rng = np.random.default_rng(3)
    data = (0.1 + 0.05 * rng.standard_normal((len(bands), size, size))).astype(np.float32)
    data[:, :5, :5] = np.nan  # nodata corner
    valid = np.isfinite(data).all(axis=0)
    return Raster(data, Affine(10, 0, 500_000, 0, -10, 6_200_000), CRS.from_epsg(32632), bands, valid)


def test_onnx_and_torch_give_the_same_classes_and_probabilities(onnx_bundle: Path) -> None:
    bundle = ModelBundle.load(onnx_bundle)
    assert resolve_runtime(bundle) == "onnx"  # auto picks the export when there is one
    raster = _raster(bundle.metadata.bands)
    kw = {"window": 64, "overlap": 16, "batch_size": 2, "return_probabilities": True, "progress": False}
    by_torch = predict_raster(bundle, raster, runtime="torch", **kw)  # type: ignore[arg-type]
    by_onnx = predict_raster(bundle, raster, runtime="auto", **kw)  # type: ignore[arg-type]
    assert by_torch.probabilities is not None and by_onnx.probabilities is not None
    np.testing.assert_allclose(
        by_onnx.probabilities.data.astype(np.float32), by_torch.probabilities.data.astype(np.float32), atol=2e-3
    )
    agreement = (by_onnx.classes.data == by_torch.classes.data).mean()
    assert agreement >= 0.999
    assert (by_onnx.classes.data[0, :5, :5] == 0).all()  # nodata stays unknown


def test_onnx_on_two_threads_predicts_the_same_as_on_one(onnx_bundle: Path) -> None:
    """With two torch threads the predictor runs two batches at once on one-thread onnxruntime calls: the
    probabilities are bit for bit those of one thread (one batch at a time)."""
    import torch

    from lulc_core.inference.runtime import parallel_batches

    bundle = ModelBundle.load(onnx_bundle)
    raster = _raster(bundle.metadata.bands, 160)
    kw = {"window": 64, "overlap": 16, "batch_size": 1, "return_probabilities": True, "progress": False}
    one = predict_raster(bundle, raster, block_px=64, **kw)  # type: ignore[arg-type]
    assert parallel_batches(bundle) == 1
    torch.set_num_threads(2)
    try:
        assert parallel_batches(bundle) == 2 and parallel_batches(bundle, "torch") == 1
        two = predict_raster(bundle, raster, block_px=64, **kw)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(1)
    assert one.probabilities is not None and two.probabilities is not None
    np.testing.assert_array_equal(two.probabilities.data, one.probabilities.data)
    np.testing.assert_array_equal(two.classes.data, one.classes.data)


def test_onnx_logits_match_torch_logits(onnx_bundle: Path) -> None:
    import torch

    bundle = ModelBundle.load(onnx_bundle)
    x = torch.randn(2, len(bundle.metadata.bands), 64, 96, generator=torch.Generator().manual_seed(0))
    a = logits_function(bundle, "onnx")(x)
    b = logits_function(bundle, "torch")(x)
    assert a.shape == b.shape == (2, bundle.metadata.label_set.num_classes, 16, 24)
    assert float((a - b).abs().max()) < 1e-3


def test_without_model_onnx_auto_is_torch_and_onnx_is_refused(registry_tiny_bundle: Path) -> None:
    bundle = ModelBundle.load(registry_tiny_bundle)
    assert resolve_runtime(bundle, "auto") == "torch"
    with pytest.raises(InputError) as err:
        resolve_runtime(bundle, "onnx")
    assert err.value.field == "runtime" and "export-onnx" in str(err.value)
    with pytest.raises(InputError) as err:
        predict_raster(bundle, _raster(bundle.metadata.bands, 32), runtime="tensorrt")
    assert err.value.field == "runtime"


def test_a_stale_onnx_export_is_a_clear_error(onnx_bundle: Path, tmp_path: Path) -> None:
    """A model.onnx that does not fit the bundle (here: exported from a 4-band model) is refused, naming the fix."""
    from lulc_core.bundle import save_bundle
    from lulc_core.model import build_segformer

    meta = ModelBundle.read_metadata(onnx_bundle)
    norm = meta.normalisation
    four = meta.model_copy(
        update={
            "bands": [*meta.bands, "B08"],
            "normalisation": norm.model_copy(update={"mean": [*norm.mean, 0.1], "std": [*norm.std, 0.05]}),
        }
    )
    other = save_bundle(tmp_path / "other", build_segformer("b0", 4, meta.label_set.num_classes), four)
    export_onnx(other)
    stale = tmp_path / "stale"
    shutil.copytree(onnx_bundle, stale)
    shutil.copyfile(other / "model.onnx", stale / "model.onnx")
    bundle = ModelBundle.load(stale)
    with pytest.raises(ConfigError, match="re-export"):
        predict_raster(bundle, _raster(bundle.metadata.bands, 32), progress=False)


# --- mixed precision (serving.precision; the gpu overlay sets bf16): checked on the CPU with bf16 autocast -----------


def test_bf16_autocast_logits_are_close_to_fp32(onnx_bundle: Path) -> None:
    import torch

    bundle = ModelBundle.load(onnx_bundle)
    x = torch.randn(2, len(bundle.metadata.bands), 64, 96, generator=torch.Generator().manual_seed(1))
    fp32 = logits_function(bundle, "torch")(x)
    bf16 = logits_function(bundle, "torch", "bf16")(x)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    scale = float(fp32.abs().max())
    assert 0 < float((bf16 - fp32).abs().max()) < 0.05 * scale  # really bf16 arithmetic, and close to fp32


def test_mixed_precision_runs_torch_and_never_onnx(onnx_bundle: Path) -> None:
    bundle = ModelBundle.load(onnx_bundle)
    assert resolve_runtime(bundle, "auto", "bf16") == "torch"  # autocast is torch's
    assert resolve_runtime(bundle, "auto", "fp32") == "onnx"
    with pytest.raises(InputError, match=r"serving\.precision"):
        resolve_runtime(bundle, "onnx", "fp16")


def test_predictor_in_bf16_agrees_with_fp32(tmp_path: Path) -> None:
    from datetime import date

    from serving_helpers import BBOX, SAMPLE, make_bundle

    from lulc_core.config import ServingConfig
    from lulc_core.geo import BBox
    from lulc_core.imagery.local import LocalGeoTiffStore
    from lulc_core.inference import PredictOptions, Predictor

    bundle = ModelBundle.load(make_bundle(tmp_path / "b0"))
    store = LocalGeoTiffStore(SAMPLE / "imagery")
    bbox, start, end = BBox.from_sequence(BBOX, "bbox"), date(2017, 10, 25), date(2017, 11, 4)
    classes = {}
    for precision in ("fp32", "bf16"):
        settings = ServingConfig(window=128, overlap=32, batch_size=2, precision=precision)
        predictor = Predictor(bundle, store, None, settings, progress=False)
        assert predictor.runtime == "torch"
        classes[precision] = predictor.predict(bbox, start, end, PredictOptions()).classes.data
    assert classes["bf16"].shape == classes["fp32"].shape
    assert (classes["bf16"] == classes["fp32"]).mean() >= 0.9
