"""Model bundles: atomic save, load without training code, metadata round trip, ONNX export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lulc_core.bundle import (
    METADATA_FILE,
    ONNX_FILE,
    BundleMetadata,
    ModelBundle,
    Normalisation,
    Provenance,
    export_fingerprint,
    export_onnx,
    recorded_fingerprint,
    save_bundle,
)
from lulc_core.errors import ConfigError, NotFoundError
from lulc_core.model import build_segformer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BANDS = ["B02", "B03", "B04", "B08"]


def metadata(label_set, bands: list[str] = BANDS) -> BundleMetadata:
    return BundleMetadata(
        variant="b0",
        bands=bands,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[0.1] * len(bands), std=[0.2] * len(bands)),
        label_set=label_set,
        metrics={"miou": 0.5},
        hyperparameters={"epochs": 2},
        provenance=Provenance(config_hash="abc", area="sample", created_at="2024-05-01T12:00:00+00:00"),
        run_config={"name": "test"},
    )


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, v3_label_set) -> Path:
    torch.manual_seed(0)
    model = build_segformer("b0", len(BANDS), v3_label_set.num_classes)
    return save_bundle(tmp_path_factory.mktemp("bundles") / "bundle", model, metadata(v3_label_set))


def test_round_trip(tiny_bundle: Path, v3_label_set) -> None:
    bundle = ModelBundle.load(tiny_bundle)
    assert bundle.metadata == metadata(v3_label_set)
    assert bundle.metadata.label_set.names[0] == "unknown"
    assert not bundle.model.training
    assert (tiny_bundle / "model" / "model.safetensors").is_file()
    again = ModelBundle.load(tiny_bundle)
    for (k, a), (_, b) in zip(bundle.model.state_dict().items(), again.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    bundle.metadata.metrics["extra"] = 1.0
    bundle.write_metadata()
    assert json.loads((tiny_bundle / METADATA_FILE).read_text())["metrics"]["extra"] == 1.0
    assert not list(tiny_bundle.parent.glob(".*partial*"))


def test_missing_or_broken_bundles(tmp_path: Path, tiny_bundle: Path) -> None:
    with pytest.raises(NotFoundError, match=r"lulc\.json is missing"):
        ModelBundle.load(tmp_path)
    (tmp_path / METADATA_FILE).write_text("{}")
    with pytest.raises(ConfigError, match="invalid bundle metadata"):
        ModelBundle.load(tmp_path)
    (tmp_path / METADATA_FILE).write_text((tiny_bundle / METADATA_FILE).read_text())
    with pytest.raises(NotFoundError, match=r"config\.json is missing"):
        ModelBundle.load(tmp_path)


def test_save_rejects_mismatched_model(tmp_path: Path, v3_label_set) -> None:
    model = build_segformer("b0", 3, v3_label_set.num_classes)
    with pytest.raises(ConfigError, match=r"3 channels but lulc\.json lists 4 bands"):
        save_bundle(tmp_path / "b", model, metadata(v3_label_set))
    model = build_segformer("b0", 4, 3)
    with pytest.raises(ConfigError, match="predicts 3 classes"):
        save_bundle(tmp_path / "b", model, metadata(v3_label_set))
    assert not (tmp_path / "b").exists()


def test_failed_save_keeps_the_old_bundle(tmp_path: Path, tiny_bundle: Path, v3_label_set) -> None:
    class Broken(torch.nn.Module):
        config = build_segformer("b0", 4, v3_label_set.num_classes).config

        def save_pretrained(self, *args: object, **kwargs: object) -> None:
            raise OSError("disk full")

    target = tmp_path / "bundle"
    target.mkdir()
    (target / "marker").write_text("old")
    with pytest.raises(OSError, match="disk full"):
        save_bundle(target, Broken(), metadata(v3_label_set))
    assert (target / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_onnx_export_has_dynamic_size_and_matches_torch(tmp_path: Path, tiny_bundle: Path) -> None:
    out = export_onnx(tiny_bundle, tmp_path / ONNX_FILE)
    assert out.is_file() and not list(tmp_path.glob("*.part"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    model = ModelBundle.load(tiny_bundle).model
    x = torch.randn(3, len(BANDS), 128, 32)
    with torch.no_grad():
        expected = model(pixel_values=x).logits.numpy()
    got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
    assert got.shape == (3, 11 - 4, 32, 8)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_verified_export_of_the_same_weights_is_kept_others_are_redone(
    tmp_path: Path, tiny_bundle: Path, v3_label_set, caplog: pytest.LogCaptureFixture
) -> None:
    """Registration exports with reuse: a file the int8 step exported from these weights is not exported again;
    other weights, an unverified export, or another opset are."""
    bundle = tmp_path / "bundle"
    torch.manual_seed(0)
    save_bundle(bundle, build_segformer("b0", len(BANDS), v3_label_set.num_classes), metadata(v3_label_set))
    first = export_onnx(bundle, reuse=True)
    assert recorded_fingerprint(first) == export_fingerprint(bundle, 17)
    written = first.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="lulc_core.bundle"):
        assert export_onnx(bundle, reuse=True) == first
    assert first.stat().st_mtime_ns == written and "kept" in caplog.text
    export_onnx(bundle, reuse=True, opset=18)  # another opset: exported again
    assert first.stat().st_mtime_ns != written
    torch.manual_seed(1)  # retrained weights in the same bundle
    save_bundle(bundle, build_segformer("b0", len(BANDS), v3_label_set.num_classes), metadata(v3_label_set))
    assert recorded_fingerprint(first) != export_fingerprint(bundle, 17)
    export_onnx(bundle, reuse=True)
    assert recorded_fingerprint(first) == export_fingerprint(bundle, 17)
    unverified = export_onnx(bundle, verify=False)
    assert recorded_fingerprint(unverified) is None  # only a verified export may be kept
    export_onnx(bundle, reuse=True)
    assert recorded_fingerprint(first) == export_fingerprint(bundle, 17)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *sorted(root.rglob("*"))]}


def test_bundle_files_get_the_umask_permissions(tiny_bundle: Path) -> None:
    """save_pretrained writes model.safetensors 0600; a predictor of another UID must still read the bundle."""
    from lulc_core.raster import DIR_MODE, FILE_MODE

    modes = _modes(tiny_bundle)
    assert modes["model/model.safetensors"] == FILE_MODE
    assert all(m == (DIR_MODE if (tiny_bundle / p).is_dir() else FILE_MODE) for p, m in modes.items()), modes


def test_bundle_permissions_follow_a_strict_umask(tmp_path: Path) -> None:
    """Under umask 077 the bundle stays private: the mode comes from the umask, not a hard-coded 0644."""
    import subprocess
    import sys

    script = (
        "import os, sys; os.umask(0o077)\n"
        "from lulc_core.model import build_segformer\n"
        "from lulc_core.labels import LabelSet\n"
        "from lulc_core.bundle import save_bundle\n"
        "import tests.test_bundle as t\n"
        "ls = LabelSet.from_yaml('conf/labels/v3.yaml')\n"
        "save_bundle(sys.argv[1], build_segformer('b0', 4, ls.num_classes), t.metadata(ls))\n"
    )
    target = tmp_path / "private"
    subprocess.run([sys.executable, "-c", script, str(target)], check=True, timeout=120, cwd=Path(__file__).parents[1])
    modes = _modes(target)
    assert modes["model/model.safetensors"] == 0o600
    assert modes["model"] == 0o700 and modes["lulc.json"] == 0o600, modes


def test_registry_cache_publishes_downloaded_bundles(tmp_path: Path, tiny_bundle: Path) -> None:
    """A bundle registered before the fix (0600 weights) is readable once resolved into the cache."""
    import shutil

    from lulc_core.raster import FILE_MODE
    from lulc_core.registry import BundleCache

    def download(staging: Path) -> Path:
        got = staging / "bundle"
        shutil.copytree(tiny_bundle, got)
        (got / "model" / "model.safetensors").chmod(0o600)
        return got

    cached = BundleCache(tmp_path / "cache").fill("m", 1, "k", download)
    assert _modes(cached)["model/model.safetensors"] == FILE_MODE
