"""The bundled sample area: contents, harmonisation, OSM-style labels, reproducibility, and the data CLI on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from lulc_core.config import S2_BANDS
from lulc_core.osm.filter import geometry_type_of, parse_filter

PATCHES = {"637U_59R_1_3": "2017-10-30", "433D_629L_3_1": "2020-04-08", "38D_378R_2_3": "2023-06-10"}
V3_SELECTED = {"water": "water", "trees": "forest", "crops": "farmland", "built_area": "built-up", "rangeland": "grass"}


@pytest.fixture(scope="module")
def sample(repo_root: Path) -> Path:
    return repo_root / "data" / "sample"


def test_size_and_files(sample: Path):
    total = sum(p.stat().st_size for p in sample.rglob("*") if p.is_file())
    assert total < 6 * 1024 * 1024
    for patch in PATCHES:
        for kind in ("s2", "s1", "dem"):
            assert (sample / "imagery" / f"{patch}_{kind}.tif").is_file()
    assert (sample / "osm" / "sample_osm.geojson").is_file() and (sample / "aoi.geojson").is_file()
    readme = (sample / "README.md").read_text()
    for needed in ("CC-BY-SA-4.0", "CC-BY-4.0", "Copernicus", "ESRI", "not OpenStreetMap data"):
        assert needed in readme


@pytest.mark.parametrize("patch", list(PATCHES))
def test_rasters_bands_types_and_dates(sample: Path, shared_data: Path, patch: str):
    with rasterio.open(sample / "imagery" / f"{patch}_s2.tif") as s2:
        assert s2.count == 12 and s2.dtypes[0] == "int16" and list(s2.descriptions) == S2_BANDS
        assert s2.tags()["ACQUISITION_DATE"] == PATCHES[patch]
        assert s2.profile["compress"] == "deflate"
        data = s2.read().astype(np.int32)
        bounds = s2.bounds
    with rasterio.open(shared_data / "terramind" / "S2L2A" / f"{patch}.tif") as raw:
        original = raw.read().astype(np.int32)
    if patch == "433D_629L_3_1":  # baseline 04.00 offset removed
        np.testing.assert_array_equal(data, np.clip(original - 1000, 0, None))
    else:
        np.testing.assert_array_equal(data, original)
    assert np.percentile(data[1:4], 1) < 1000  # harmonised: dark pixels are dark
    with rasterio.open(sample / "imagery" / f"{patch}_s1.tif") as s1:
        assert s1.dtypes[0] == "float32" and list(s1.descriptions) == ["VV", "VH"]
        assert "ACQUISITION_DATE" in s1.tags() and s1.bounds == bounds
        vv, vh = s1.read()
        assert -40 < vv.mean() < 5 and vh.mean() < vv.mean()  # dB, cross-pol weaker
    with rasterio.open(sample / "imagery" / f"{patch}_dem.tif") as dem:
        assert dem.dtypes[0] == "int16" and dem.descriptions == ("DEM",)


def test_osm_labels_are_tagged_for_v3(sample: Path, v3_label_set, shared_data: Path):
    osm = gpd.read_file(sample / "osm" / "sample_osm.geojson")
    assert osm.crs.to_epsg() == 4326 and len(osm) > 100
    assert set(osm.geometry.geom_type) <= {"Polygon", "MultiPolygon"}
    filters = [(c.name, parse_filter(c.osm_filter)) for c in v3_label_set.classes]
    for row in osm.itertuples():
        tags = {k: getattr(row, k) for k in ("landuse", "natural") if isinstance(getattr(row, k), str)}
        chosen = [name for name, f in filters if f.matches(tags, geometry_type_of(row.geometry.geom_type), "way")]
        assert chosen == ([V3_SELECTED[row.esri_lulc]] if row.esri_lulc in V3_SELECTED else []), row
    # the polygons tile each patch (no data there): area per patch ~ 2240 m x 2240 m
    for patch in PATCHES:
        with rasterio.open(shared_data / "terramind" / "LULC" / f"{patch}.tif") as src:
            crs = src.crs
        part = osm[osm["source"].str.endswith(patch)].to_crs(crs)
        assert part.area.sum() == pytest.approx(2240 * 2240, rel=0.01)


def test_aoi_has_the_three_footprints_with_time_frames(sample: Path):
    aoi = json.loads((sample / "aoi.geojson").read_text())
    assert [f["properties"]["patch"] for f in aoi["features"]] == list(PATCHES)
    gdf = gpd.read_file(sample / "aoi.geojson")
    assert gdf.crs.to_epsg() == 4326
    for feat in aoi["features"]:
        when = PATCHES[feat["properties"]["patch"]]
        assert feat["properties"]["start"] < when < feat["properties"]["end"]


def test_make_sample_is_reproducible(repo_root: Path, sample: Path, tmp_path: Path, shared_data: Path):
    source = shared_data / "terramind"
    run = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "make_sample.py"),
            "--source",
            str(source),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=repo_root,
    )
    assert run.returncode == 0, run.stderr
    for committed in (sample / "lulc").glob("*.tif"):
        assert (tmp_path / "lulc" / committed.name).read_bytes() == committed.read_bytes()
    for committed in (sample / "imagery").glob("*.tif"):
        with rasterio.open(committed) as a, rasterio.open(tmp_path / "imagery" / committed.name) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.tags() == b.tags() and a.transform == b.transform
    assert (tmp_path / "aoi.geojson").read_text() == (sample / "aoi.geojson").read_text()
    assert (tmp_path / "osm" / "sample_osm.geojson").read_text() == (sample / "osm" / "sample_osm.geojson").read_text()


def test_data_cli_end_to_end_on_the_sample(sample: Path, repo_root: Path, tmp_path: Path):
    from lulc.cli import app

    config = {
        "name": "sample-test",
        "work_dir": str(tmp_path / "work"),
        "area": {
            "name": "sample",
            "aoi": str(sample / "aoi.geojson"),
            "time_frames": [{"start": "2017-01-01", "end": "2023-12-31"}],
            "tile_size_m": 640,
            "min_land_share": 0.9,
            "sample_fraction": 0.4,
        },
        "imagery": {"store": "local", "local_dir": str(sample / "imagery"), "concurrency": 2},
        "labels": {
            "label_set": str(repo_root / "conf" / "labels" / "v3.yaml"),
            "source": "file",
            "osm_file": str(sample / "osm" / "sample_osm.geojson"),
        },
    }
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config))
    runner = CliRunner()

    def lulc(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    tiles = str(tmp_path / "tiles.parquet")
    assert "11 tiles" in lulc("data", "grid", "-c", str(cfg), "-o", tiles, "--preview", str(tmp_path / "tiles.png"))
    lulc("data", "imagery", "-c", str(cfg), "-t", tiles, "-o", str(tmp_path / "img"))
    labels = ("data", "labels", "-c", str(cfg), "-t", tiles, "-o")
    lulc(*labels, str(tmp_path / "lab"), "--cache-dir", str(tmp_path / "cache"))
    out = lulc(
        "data",
        "stats",
        "--imagery",
        str(tmp_path / "img"),
        "--labels",
        str(tmp_path / "lab"),
        "--label-set",
        str(repo_root / "conf/labels/v3.yaml"),
        "-o",
        str(tmp_path / "stats.json"),
    )
    assert "farmland" in out
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["tiles"] == 11 and len(stats["band_names"]) == 15
    assert stats["class_pixel_counts"][4] > 0 and stats["class_weights"][0] == 0
    # bad input through the CLI: unknown source spec and a missing label set file
    bad = runner.invoke(app, [*labels, str(tmp_path / "x"), "--source", "wfs"])
    assert bad.exit_code != 0 and "--source" in str(bad.exception)
    missing = runner.invoke(app, [*labels, str(tmp_path / "x"), "--label-set", str(tmp_path / "nope.yaml")])
    assert missing.exit_code != 0 and "label_set" in str(missing.exception)
    help_text = lulc("data", "imagery", "--help")
    assert "lulc data imagery --config" in help_text
