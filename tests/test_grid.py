"""Area grid: AOI from file or bbox, UTM tiles per zone, land share, sampling, time frames, I/O, preview."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
import shapely
from shapely.geometry import shape

from lulc_core.config import AreaConfig
from lulc_core.errors import InputError
from lulc_core.grid import build_grid, load_aoi, plot_tiles, read_tiles, tiles_to_geodataframe, write_tiles

FRAME = [{"start": "2023-06-01", "end": "2023-06-30"}]


def _area(**kw) -> AreaConfig:
    return AreaConfig(**{"time_frames": FRAME, **kw})


def test_sample_grid_is_nine_whole_tiles_per_patch(data_sample_tiles):
    tiles = data_sample_tiles
    assert len(tiles) == 27
    by_crs: dict[str, int] = {}
    for t in tiles:
        by_crs[t.crs] = by_crs.get(t.crs, 0) + 1
        assert (t.width, t.height) == (64, 64)
        assert t.bounds[0] % 10 == 0 and t.bounds[3] % 10 == 0  # on the 10 m pixel lattice
    assert by_crs == {"EPSG:32632": 9, "EPSG:32718": 9, "EPSG:32736": 9}
    ids = [t.id for t in tiles]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", i) for i in ids)
    # each patch is paired only with its own time frame (AOI start/end properties)
    assert {(t.crs, t.start.year) for t in tiles} == {("EPSG:32632", 2017), ("EPSG:32718", 2020), ("EPSG:32736", 2023)}


def test_whole_tiles_lie_inside_the_aoi(data_sample_tiles, repo_root):
    aoi = shapely.union_all(
        [shape(f["geometry"]) for f in json.loads((repo_root / "data/sample/aoi.geojson").read_text())["features"]]
    )
    gdf = tiles_to_geodataframe(data_sample_tiles)
    assert len(gdf) == 27
    for geom in gdf.geometry:
        assert geom.intersection(aoi).area / geom.area > 0.99


def test_land_share_threshold_drops_partial_tiles(data_sample_area):
    counts = {}
    for share in (0.0, 0.5, 0.9, 1.0):
        counts[share] = len(build_grid(data_sample_area.model_copy(update={"min_land_share": share}), 10.0))
    assert counts[0.0] > counts[0.5] > counts[0.9] == 27
    assert counts[1.0] <= 27


def test_sampling_is_seeded(data_sample_area):
    half = data_sample_area.model_copy(update={"sample_fraction": 0.5})
    a, b = build_grid(half, 10.0), build_grid(half, 10.0)
    assert [t.id for t in a] == [t.id for t in b]
    assert 10 <= len(a) <= 17
    other = build_grid(half.model_copy(update={"seed": 1}), 10.0)
    assert [t.id for t in other] != [t.id for t in a]
    full_ids = {t.id for t in build_grid(data_sample_area, 10.0)}
    assert {t.id for t in a} <= full_ids


def test_one_tile_per_time_frame_for_a_bbox():
    frames = [{"start": "2023-05-01", "end": "2023-05-31"}, {"start": "2023-07-01", "end": "2023-07-31"}]
    tiles = build_grid(_area(name="bonn area", bbox=[7.05, 50.70, 7.10, 50.73], time_frames=frames), 10.0)
    cells = {t.bounds for t in tiles}
    assert len(tiles) == 2 * len(cells)
    assert {t.start for t in tiles} == {date(2023, 5, 1), date(2023, 7, 1)}
    assert all(t.crs == "EPSG:32632" and t.id.startswith("bonn_area-") for t in tiles)


def test_bbox_across_utm_zones_and_hemispheres():
    tiles = build_grid(_area(bbox=[5.95, -0.01, 6.05, 0.01], tile_size_m=1000), 10.0)
    assert {t.crs for t in tiles} == {"EPSG:32631", "EPSG:32632", "EPSG:32731", "EPSG:32732"}
    # the union of tiles covers the bbox
    union = shapely.union_all(list(tiles_to_geodataframe(tiles).geometry))
    assert union.buffer(1e-6).contains(shapely.box(5.95, -0.01, 6.05, 0.01))


def test_zoom_level_tiles():
    tiles = build_grid(_area(name="z", bbox=[26.93, 60.52, 26.97, 60.54], zoom=14), 10.0)
    ids = [t.id for t in tiles]
    assert all(i.startswith("z-z14-") for i in ids) and len(set(ids)) == len(ids)
    # zoom-14 tiles are ~2.4 km wide at the equator, ~1.2 km at 60.5 N
    assert all(1000 < t.bounds[2] - t.bounds[0] < 1400 for t in tiles)
    assert 2 <= len(tiles) <= 12


def test_write_read_roundtrip_and_preview(data_sample_tiles, data_sample_area, tmp_path: Path):
    for name in ("tiles.geojson", "tiles.parquet"):
        path = write_tiles(data_sample_tiles, tmp_path / name)
        assert read_tiles(path) == data_sample_tiles
    gdf = tiles_to_geodataframe(data_sample_tiles)
    assert gdf.crs.to_epsg() == 4326 and {"id", "crs", "start", "end", "resolution"} <= set(gdf.columns)
    png = plot_tiles(data_sample_tiles, tmp_path / "tiles.png", data_sample_area)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*part"))


def test_aoi_multipolygon_from_geopackage(tmp_path: Path):
    import geopandas as gpd

    geom = shapely.MultiPolygon([shapely.box(9.0, 55.0, 9.02, 55.01), shapely.box(-70.0, -38.0, -69.98, -37.99)])
    gpd.GeoDataFrame({"name": ["two"]}, geometry=[geom], crs="EPSG:4326").to_file(tmp_path / "aoi.gpkg")
    parts = load_aoi(_area(aoi=tmp_path / "aoi.gpkg"))
    assert len(parts) == 2
    tiles = build_grid(_area(aoi=tmp_path / "aoi.gpkg", tile_size_m=500), 10.0)
    assert {t.crs for t in tiles} == {"EPSG:32632", "EPSG:32719"}


# --- bad input ------------------------------------------------------------------------------------------------------


def test_bad_bbox_names_the_field():
    with pytest.raises(InputError) as err:
        _area(bbox=[10.0, 50.0, 9.0, 51.0])
    assert "area.bbox" in err.value.field
    with pytest.raises(InputError, match=r"area\.bbox"):
        _area(bbox=[10.0, 95.0, 11.0, 96.0])


def test_missing_and_empty_aoi(tmp_path: Path):
    with pytest.raises(InputError) as err:
        build_grid(_area(aoi=tmp_path / "nope.geojson"), 10.0)
    assert err.value.field == "area.aoi"
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(InputError, match="no polygon") as err:
        build_grid(_area(aoi=empty), 10.0)
    assert err.value.field == "area.aoi"
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [9, 55]}}
                ],
            }
        )
    )
    with pytest.raises(InputError, match="no polygon"):
        build_grid(_area(aoi=points), 10.0)
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("not json")
    with pytest.raises(InputError, match="cannot read"):
        build_grid(_area(aoi=garbage), 10.0)


def test_no_tile_left(data_sample_area):
    tiny = _area(bbox=[9.0, 55.0, 9.0005, 55.0005], min_land_share=0.5, tile_size_m=640)
    with pytest.raises(InputError) as err:
        build_grid(tiny, 10.0)
    assert err.value.field == "area.min_land_share"
    elsewhere = data_sample_area.model_copy(
        update={
            "time_frames": AreaConfig(
                bbox=[0, 0, 1, 1], time_frames=[{"start": "2010-01-01", "end": "2010-12-31"}]
            ).time_frames
        }
    )
    with pytest.raises(InputError) as err:
        build_grid(elsewhere, 10.0)
    assert err.value.field == "area.time_frames"


def test_bad_tiles_files(tmp_path: Path, data_sample_tiles):
    with pytest.raises(InputError, match="does not exist"):
        read_tiles(tmp_path / "missing.geojson")
    with pytest.raises(InputError, match="unsupported"):
        write_tiles(data_sample_tiles, tmp_path / "tiles.csv")
    other = tmp_path / "other.geojson"
    other.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {"type": "Feature", "properties": {"x": 1}, "geometry": {"type": "Point", "coordinates": [0, 0]}}
                ],
            }
        )
    )
    with pytest.raises(InputError, match="lacks columns"):
        read_tiles(other)
