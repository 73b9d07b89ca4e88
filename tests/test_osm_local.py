"""Local OSM source: GeoJSON/GeoPackage with tag columns or a tags dict, `.osm.pbf` via pyosmium, and dispatch."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import shapely
from shapely.geometry import box

from lulc_core.config import LabelsConfig
from lulc_core.errors import InputError
from lulc_core.geo import BBox
from lulc_core.osm import OsmSource, build_osm_source
from lulc_core.osm.filter import FilterSyntaxError
from lulc_core.osm.local import LocalOsmSource

KOUVOLA = BBox(west=26.93, south=60.52, east=26.97, north=60.54)
JUTLAND = BBox(west=9.826, south=57.216, east=9.864, north=57.238)  # the 637U sample patch
WHEN = date(2024, 1, 1)


@pytest.fixture(scope="module")
def kouvola(shared_data: Path) -> LocalOsmSource:
    return LocalOsmSource(shared_data / "osm" / "kouvola.osm.pbf")


@pytest.fixture(scope="module")
def sample_osm(repo_root: Path) -> LocalOsmSource:
    return LocalOsmSource(repo_root / "data" / "sample" / "osm" / "sample_osm.geojson")


def test_geojson_tag_columns(sample_osm: LocalOsmSource):
    assert isinstance(sample_osm, OsmSource)
    farmland = sample_osm.features(JUTLAND, date(2017, 10, 30), "landuse=farmland")
    assert len(farmland) > 0 and farmland.crs.to_epsg() == 4326
    assert set(farmland["landuse"]) == {"farmland"}
    assert set(farmland.geometry.geom_type) <= {"Polygon", "MultiPolygon"}
    assert box(*JUTLAND.as_tuple()).buffer(1e-9).contains(shapely.union_all(list(farmland.geometry)))
    # selection follows the filter: grass of v3 = meadow polygons here, wetland is not selected by anything
    grass = sample_osm.features(JUTLAND, date(2017, 10, 30), "landuse=meadow or landuse=grass or natural=grassland")
    assert set(grass["landuse"]) == {"meadow"}
    both = sample_osm.features(JUTLAND, date(2017, 10, 30), "landuse in (farmland, meadow)")
    assert len(both) == len(farmland) + len(grass)


def test_clipping_to_the_bbox(sample_osm: LocalOsmSource):
    half = BBox(west=9.826, south=57.216, east=9.845, north=57.238)
    full = sample_osm.features(JUTLAND, date(2017, 10, 30), "landuse=*")
    clipped = sample_osm.features(half, date(2017, 10, 30), "landuse=*")
    assert clipped.total_bounds[2] <= half.east + 1e-9
    assert clipped.to_crs(32632).area.sum() < full.to_crs(32632).area.sum()


def test_nothing_there_is_an_empty_frame(sample_osm: LocalOsmSource):
    empty = sample_osm.features(BBox(west=0, south=0, east=0.1, north=0.1), WHEN, "landuse=forest")
    assert empty.empty and empty.crs.to_epsg() == 4326 and "geometry" in empty.columns
    none = sample_osm.features(JUTLAND, WHEN, "landuse=vineyard")
    assert none.empty


def test_tags_dict_column_types_and_validity_dates(tmp_path: Path):
    square = [[[10.0, 50.0], [10.01, 50.0], [10.01, 50.01], [10.0, 50.01], [10.0, 50.0]]]
    features = [
        {"@osmId": "relation/7", "tags": {"landuse": "forest"}},
        {
            "@osmId": "way/8",
            "tags": {"landuse": "forest"},
            "@validFrom": "2010-01-01T00:00:00Z",
            "@validTo": "2015-01-01T00:00:00Z",
        },
        {"@osmId": "way/9", "tags": {"natural": "wood"}, "@validFrom": "2016-01-01T00:00:00Z"},
    ]
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": p, "geometry": {"type": "Polygon", "coordinates": square}}
            for p in features
        ],
    }
    path = tmp_path / "history.geojson"
    path.write_text(json.dumps(fc))
    src = LocalOsmSource(path)
    bbox = BBox(west=9.9, south=49.9, east=10.1, north=50.1)
    old = src.features(bbox, date(2012, 6, 1), "landuse=forest or natural=wood")
    assert sorted(old["osm_id"]) == ["relation/7", "way/8"]
    new = src.features(bbox, date(2020, 6, 1), "landuse=forest or natural=wood")
    assert sorted(new["osm_id"]) == ["relation/7", "way/9"]
    rel = src.features(bbox, date(2020, 6, 1), "type:relation")
    assert list(rel["osm_type"]) == ["relation"]


def test_geopackage_and_non_polygons(tmp_path: Path):
    import geopandas as gpd

    gdf = gpd.GeoDataFrame(
        {"landuse": ["forest", "forest"], "osm_type": ["way", "way"]},
        geometry=[box(10, 50, 10.01, 50.01), shapely.LineString([(10, 50), (10.01, 50.01)])],
        crs="EPSG:4326",
    ).to_crs("EPSG:3857")
    gdf.to_file(tmp_path / "extract.gpkg")
    src = LocalOsmSource(tmp_path / "extract.gpkg")
    got = src.features(BBox(west=9.9, south=49.9, east=10.1, north=50.1), WHEN, "landuse=forest")
    assert len(got) == 1 and got.geometry.iloc[0].geom_type == "Polygon"
    assert abs(got.total_bounds[0] - 10.0) < 1e-6  # reprojected back to EPSG:4326


def test_pbf_areas_from_ways_and_relations(kouvola: LocalOsmSource):
    forest = kouvola.features(KOUVOLA, WHEN, "landuse=forest or natural=wood")
    assert len(forest) >= 3
    assert all(i.split("/")[0] in ("way", "relation") for i in forest["osm_id"])
    assert set(forest.geometry.geom_type) <= {"Polygon", "MultiPolygon"}
    residential = kouvola.features(KOUVOLA, WHEN, "landuse=residential")
    farmland = kouvola.features(KOUVOLA, WHEN, "landuse=farmland")
    either = kouvola.features(KOUVOLA, WHEN, "landuse in (residential, farmland)")
    assert len(residential) > 0 and len(farmland) > 0
    assert len(either) == len(residential) + len(farmland)
    ways = kouvola.features(KOUVOLA, WHEN, "landuse=* and type:way")
    rels = kouvola.features(KOUVOLA, WHEN, "landuse=* and type:relation")
    assert len(ways) + len(rels) == len(kouvola.features(KOUVOLA, WHEN, "landuse=*"))
    small = BBox(west=26.94, south=60.525, east=26.95, north=60.53)
    clipped = kouvola.features(small, WHEN, "landuse=*")
    assert box(*small.as_tuple()).buffer(1e-9).contains(shapely.union_all(list(clipped.geometry)))


def test_bad_inputs(tmp_path: Path, sample_osm: LocalOsmSource):
    with pytest.raises(InputError) as err:
        LocalOsmSource(tmp_path / "missing.osm.pbf")
    assert err.value.field == "labels.osm_file"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported"):
        LocalOsmSource(tmp_path / "notes.txt")
    with pytest.raises(FilterSyntaxError) as syn:
        sample_osm.features(JUTLAND, WHEN, "landuse=forest and")
    assert syn.value.position == 18
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(b"not a pbf at all")
    with pytest.raises(InputError, match="cannot read"):
        LocalOsmSource(broken).features(JUTLAND, WHEN, "landuse=*")


def test_build_osm_source(repo_root: Path, tmp_path: Path):
    label_set = repo_root / "conf" / "labels" / "v3.yaml"
    osm = repo_root / "data" / "sample" / "osm" / "sample_osm.geojson"
    src = build_osm_source(LabelsConfig(label_set=label_set, source="file", osm_file=osm))
    assert isinstance(src, LocalOsmSource) and src.path == osm
    with pytest.raises(InputError) as err:
        build_osm_source(LabelsConfig(label_set=label_set, source="corine"))
    assert err.value.field == "labels.source"


def test_build_osm_source_dispatches_to_ohsome(repo_root: Path, tmp_path: Path):
    from lulc_core.osm.ohsome import OhsomeSource

    cfg = LabelsConfig(label_set=repo_root / "conf/labels/v3.yaml", source="ohsome", ohsome_url="http://127.0.0.1:9/v1")
    src = build_osm_source(cfg, cache_dir=tmp_path)
    assert isinstance(src, OhsomeSource) and isinstance(src, OsmSource)
