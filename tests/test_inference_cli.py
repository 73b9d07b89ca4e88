"""`lulc predict --model PATH|REF` in-process, on the bundled sample area (local imagery and OSM file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import torch
import yaml
from rasterio.crs import CRS
from typer.testing import CliRunner

from lulc.cli import app
from lulc_core.bundle import BundleMetadata, Normalisation, save_bundle
from lulc_core.errors import InputError, NotFoundError
from lulc_core.labels import LabelSet
from lulc_core.model import build_segformer

REPO = Path(__file__).resolve().parents[1]
BANDS = ["B02", "B03", "B04", "B08"]
# Inside sample patch 637U_59R_1_3 (North Jutland, EPSG:32632, acquired 2017-10-30).
BBOX = "9.835,57.222,9.855,57.232"
DATES = ["--start", "2017-10-01", "--end", "2017-10-31"]


@pytest.fixture(scope="module")
def sample_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """conf/run.yaml with absolute paths and a temporary work directory (registry, caches)."""
    pytest.importorskip("lulc_core.imagery.local")
    pytest.importorskip("lulc_core.osm.local")
    raw = yaml.safe_load((REPO / "conf" / "run.yaml").read_text())
    root = tmp_path_factory.mktemp("cli")
    raw["work_dir"] = str(root / "work")
    raw["area"]["aoi"] = str(REPO / "data" / "sample" / "aoi.geojson")
    raw["imagery"]["local_dir"] = str(REPO / "data" / "sample" / "imagery")
    raw["labels"]["label_set"] = str(REPO / "conf" / "labels" / "v3.yaml")
    raw["labels"]["osm_file"] = str(REPO / "data" / "sample" / "osm" / "sample_osm.geojson")
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def sample_bundle(tmp_path_factory: pytest.TempPathFactory, v3_label_set: LabelSet) -> Path:
    torch.manual_seed(0)
    meta = BundleMetadata(
        variant="b0",
        bands=BANDS,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[800.0, 1000.0, 1000.0, 2500.0], std=[400.0, 500.0, 600.0, 1000.0]),
        label_set=v3_label_set,
    )
    model = build_segformer("b0", len(BANDS), v3_label_set.num_classes)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "sample-bundle", model, meta)


def test_predict_with_a_bundle_path(sample_config: Path, sample_bundle: Path, tmp_path: Path) -> None:
    out, preview = tmp_path / "out.tif", tmp_path / "out.png"
    args = ["predict", "--model", str(sample_bundle), "--config", str(sample_config), "--bbox", BBOX, *DATES]
    args += ["-o", str(out), "--preview", str(preview), "--probabilities", "--fusion-mode", "favour_osm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"wrote {out}" in result.output and "predicted" in result.output
    with rasterio.open(out) as src:
        assert src.crs == CRS.from_epsg(32632)
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.colormap(1)[2][:3] == (100, 126, 67) or src.colormap(1)  # v3 forest colour, or any colour map
        assert src.tags()["FUSION_MODE"] == "favour_osm"
        classes = src.read(1)
        assert 100 < src.width < 140 and 100 < src.height < 130  # ~1.2 x 1.1 km at 10 m
        assert classes.max() <= 6 and (classes > 0).mean() > 0.9
    assert (tmp_path / "out.probabilities.tif").is_file()
    assert preview.read_bytes()[:4] == b"\x89PNG"


def test_predict_with_a_registry_ref(sample_config: Path, sample_bundle: Path, tmp_path: Path) -> None:
    registry_mod = pytest.importorskip("lulc_core.registry")
    from lulc_core.config import load_run_config

    cfg = load_run_config(sample_config)
    registry = registry_mod.build_registry(cfg.registry, cfg.work_dir)
    ref = registry.register(sample_bundle, registry_mod.RegistrationInfo(description="cli test"))
    out = tmp_path / "ref.tif"
    model_ref = f"{cfg.registry.model_name}@latest"
    args = ["predict", "--model", model_ref, "--config", str(sample_config), "--bbox", BBOX, *DATES, "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert out.is_file() and ref is not None


def test_predict_bad_inputs(sample_config: Path, sample_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["predict", "--config", str(sample_config), "-o", str(tmp_path / "x.tif"), *DATES]
    cases = [
        ([*base, "--bbox", BBOX], "--model/--url"),
        ([*base, "--bbox", BBOX, "--model", str(sample_bundle), "--url", "http://127.0.0.1:1"], "--model/--url"),
        ([*base, "--bbox", "9.8,57.2,9.7", "--model", str(sample_bundle)], "--bbox"),
        ([*base, "--bbox", "a,b,c,d", "--model", str(sample_bundle)], "--bbox"),
        ([*base, "--bbox", BBOX, "--model", str(sample_bundle), "--fusion-mode", "nope"], "options.fusion_mode"),
        ([*base, "--bbox", BBOX, "--model", str(sample_bundle), "--threshold", "3"], "options.threshold"),
    ]
    for args, field in cases:
        result = runner.invoke(app, args)
        assert isinstance(result.exception, InputError), (args, result.output, result.exception)
        assert result.exception.field == field
    missing = runner.invoke(app, [*base, "--bbox", BBOX, "--model", str(tmp_path / "no-bundle")])
    assert isinstance(missing.exception, NotFoundError) and "neither a bundle directory" in str(missing.exception)
    assert not (tmp_path / "x.tif").exists()


def test_predict_without_config_uses_the_bundles_own(
    sample_config: Path, sample_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `lulc serve`: no --config -> the run configuration saved in the bundle (no conf/run.yaml needed)."""
    import json
    import shutil

    from lulc_core.config import load_run_config

    bundle = tmp_path / "bundle"
    shutil.copytree(sample_bundle, bundle)
    meta = json.loads((bundle / "lulc.json").read_text())
    meta["run_config"] = load_run_config(sample_config).model_dump(mode="json")
    (bundle / "lulc.json").write_text(json.dumps(meta))
    monkeypatch.chdir(tmp_path)  # no conf/run.yaml here
    out = tmp_path / "own.tif"
    result = CliRunner().invoke(app, ["predict", "--model", str(bundle), "--bbox", BBOX, *DATES, "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert out.is_file()
    bare = tmp_path / "bare"
    shutil.copytree(sample_bundle, bare)
    result = CliRunner().invoke(app, ["predict", "--model", str(bare), "--bbox", BBOX, *DATES, "-o", str(out)])
    assert "pass --config run.yaml" in str(result.exception)
