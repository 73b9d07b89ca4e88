"""Tests of the foundation: errors, geo types, label sets, rasters and run configuration."""

from __future__ import annotations

import math
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.crs import CRS

from lulc_core.config import AreaConfig, DataConfig, ImageryConfig, RunConfig, load_run_config
from lulc_core.errors import ConfigError, InputError
from lulc_core.geo import BBox, TimeRange, tile_for_bbox
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster, atomic_path, read_geotiff, write_geotiff


@pytest.mark.parametrize(
    ("values", "field", "fragment"),
    [
        ([10, 50, 9, 51], "bbox", "east (9.0) must be greater than west"),
        ([10, 51, 11, 50], "bbox", "north"),
        ([10, 50, 10, 51], "bbox", "east"),
        ([-200, 50, 11, 51], "bbox.west", "outside -180..180"),
        ([10, 50, 11, 95], "bbox.north", "outside -90..90"),
        ([10, math.nan, 11, 51], "bbox.south", "finite"),
        ([10, 50, math.inf, 51], "bbox.east", "finite"),
        ([10, 50, 11], "bbox", "expected 4 numbers"),
        (["a", 50, 11, 51], "bbox", "must be numbers"),
    ],
)
def test_bad_bbox_names_field(values: list, field: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        BBox.from_sequence(values)
    assert info.value.field == field
    assert fragment in str(info.value)


def test_bbox_utm_and_tile_grid() -> None:
    bbox = BBox(west=8.0, south=49.0, east=8.01, north=49.01)
    assert bbox.utm_crs().to_epsg() == 32632
    assert BBox(west=-72.5, south=-38.8, east=-72.4, north=-38.7).utm_crs().to_epsg() == 32718
    tile = tile_for_bbox(bbox, 10.0, date(2023, 5, 1), date(2023, 5, 31))
    assert tile.crs == "EPSG:32632"
    minx, _miny, maxx, maxy = tile.bounds
    assert minx % 10 == 0 and maxy % 10 == 0
    assert tile.width == round((maxx - minx) / 10) and 70 <= tile.width <= 80
    back = tile.bbox_wgs84
    assert back.west <= bbox.west and back.east >= bbox.east and back.north >= bbox.north


def test_time_range_order() -> None:
    with pytest.raises(InputError, match="swap the dates"):
        TimeRange(start=date(2023, 2, 1), end=date(2023, 1, 1))


def test_label_set_v3(v3_label_set: LabelSet) -> None:
    assert v3_label_set.names == ["unknown", "built-up", "forest", "water", "farmland", "permanent_crops", "grass"]
    assert v3_label_set.num_classes == 7
    assert v3_label_set.value_of("water") == 3
    assert v3_label_set.colormap()[2] == (0x64, 0x7E, 0x43, 255)
    assert "natural=wood" in v3_label_set.classes[1].osm_filter
    assert len(v3_label_set.fingerprint()) == 12


def test_label_set_original_layout_and_errors(tmp_path: Path) -> None:
    original = tmp_path / "orig.yaml"
    original.write_text("- name: a\n  filter: landuse=forest\n  color_code: '#112233'\n  description:\n")
    assert LabelSet.from_yaml(original).classes[0].osm_filter == "landuse=forest"
    with pytest.raises(ConfigError, match="does not exist"):
        LabelSet.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: a\n  osm_filter: landuse=forest\n  color: 'green'\n")
    with pytest.raises(ConfigError, match=r"classes\.0\.color"):
        LabelSet.from_yaml(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("- {name: a, osm_filter: x=y, color: '#000000'}\n- {name: a, osm_filter: x=z, color: '#000000'}\n")
    with pytest.raises(ConfigError, match="unique"):
        LabelSet.from_yaml(dup)
    reserved = tmp_path / "reserved.yaml"
    reserved.write_text("- {name: unknown, osm_filter: x=y, color: '#000000'}\n")
    with pytest.raises(ConfigError, match="reserved"):
        LabelSet.from_yaml(reserved)


def _raster(bands: int = 2, size: int = 300) -> Raster:
    data = np.arange(bands * size * size, dtype="float32").reshape(bands, size, size)
    valid = np.ones((size, size), bool)
    valid[:10] = False
    return Raster(data, Affine(10, 0, 500000, 0, -10, 5500000), CRS.from_epsg(32632), ["B04", "B08"][:bands], valid)


def test_geotiff_round_trip_keeps_georeference_and_names(tmp_path: Path) -> None:
    raster = _raster()
    path = write_geotiff(tmp_path / "r.tif", raster, nodata=-9999.0)
    back = read_geotiff(path)
    assert back.band_names == ["B04", "B08"]
    assert back.transform == raster.transform and back.crs == raster.crs
    assert back.valid is not None and not back.valid[:10].any() and back.valid[10:].all()
    np.testing.assert_array_equal(back.data[:, 10:], raster.data[:, 10:])
    assert back.bounds == (500000.0, 5500000.0 - 3000, 503000.0, 5500000.0)
    assert [p.name for p in tmp_path.iterdir()] == ["r.tif"]


def test_cog_with_colormap(tmp_path: Path, v3_label_set: LabelSet) -> None:
    classes = Raster(
        (np.indices((512, 512)).sum(0) % 7).astype("uint8")[None],
        Affine(10, 0, 0, 0, -10, 0),
        CRS.from_epsg(32632),
        ["class"],
    )
    path = write_geotiff(tmp_path / "c.tif", classes, colormap=v3_label_set.colormap(), cog=True)
    with rasterio.open(path) as src:
        assert src.colormap(1)[2] == (0x64, 0x7E, 0x43, 255)
        assert src.overviews(1), "COG must carry overviews"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_atomic_path_publishes_readable_files(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "meta.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "meta.json").stat().st_mode & 0o044 == 0o044, "group/other must be able to read outputs"


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _run_yaml(tmp_path: Path, **override: object) -> Path:
    (tmp_path / "imagery").mkdir()
    raw = {
        "area": {"bbox": [8.0, 49.0, 8.1, 49.1], "time_frames": [{"start": "2023-05-01", "end": "2023-05-31"}]},
        "imagery": {"store": "local", "local_dir": "imagery"},
        "labels": {"label_set": "labels.yaml", "source": "file", "osm_file": "osm.geojson"},
    }
    raw.update(override)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_run_config_resolves_relative_paths(tmp_path: Path) -> None:
    cfg = load_run_config(_run_yaml(tmp_path))
    assert cfg.imagery.local_dir == (tmp_path / "imagery").resolve()
    assert cfg.labels.label_set == (tmp_path / "labels.yaml").resolve()
    assert cfg.area.time_frames[0].end == date(2023, 5, 31)
    assert cfg.tracking_uri.startswith("sqlite:///")
    again = RunConfig.model_validate_json(cfg.model_dump_json())
    assert again.fingerprint() == cfg.fingerprint()


@pytest.mark.parametrize(
    ("override", "field", "fragment"),
    [
        ({"training": {"epochs": 0}}, "training.epochs", "greater than or equal to 1"),
        ({"training": {"epochz": 3}}, "training.epochz", "Extra inputs are not permitted"),
        ({"model": {"variant": "b9"}}, "model.variant", "b0"),
        ({"data": {"chip_size": 50}}, "data.chip_size", "multiple of 32"),
        ({"imagery": {"store": "local"}}, "imagery", "local_dir"),
        ({"imagery": {"store": "local", "local_dir": "x", "bands": ["B99"]}}, "imagery.bands", "unknown bands"),
        ({"area": {"time_frames": [{"start": "2023-05-01", "end": "2023-05-31"}]}}, "area", "exactly one of"),
        (
            {"area": {"bbox": [1, 2, 3], "time_frames": [{"start": "2023-05-01", "end": "2023-05-31"}]}},
            "area.bbox",
            "4",
        ),
        ({"area": {"bbox": [8, 49, 9, 50], "time_frames": []}}, "area.time_frames", "at least 1"),
        (
            {
                "area": {
                    "bbox": [8, 49, 9, 50],
                    "time_frames": [
                        {"start": "2023-01-01", "end": "2023-01-31"},
                        {"start": "2023-05-31", "end": "2023-05-01"},
                    ],
                }
            },
            "area.time_frames.1",
            "swap the dates",
        ),
        (
            {"area": {"bbox": [8, 49, 9, 50], "time_frames": [{"start": "2023-13-01", "end": "2023-05-01"}]}},
            "area.time_frames.0.start",
            "date",
        ),
    ],
)
def test_run_config_errors_name_the_field(tmp_path: Path, override: dict, field: str, fragment: str) -> None:
    with pytest.raises(InputError) as info:
        load_run_config(_run_yaml(tmp_path, **override))
    assert info.value.field == field, str(info.value)
    assert fragment in str(info.value)


def test_missing_and_invalid_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("area: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(bad)


def test_section_models_validate_directly() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        DataConfig(val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError):
        AreaConfig(bbox=[8, 49, 9, 50], time_frames=[], tile_size_m=640)
    assert ImageryConfig(store="sentinelhub").bands[-1] == "DEM"
