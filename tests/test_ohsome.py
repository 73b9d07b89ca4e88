"""ohsome OSM source: the real ohsome-py client against the ohsome stand-in on 127.0.0.1.

The stand-in evaluates filters with the project's filter engine over real extracts (the bundled sample and
../shared/data/osm/kouvola.osm.pbf); the same files read by `LocalOsmSource` must give identical label rasters.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from shared import shared_path
from standins import RETRIED_FAULTS, Fault
from standins.ohsome import KOUVOLA_PBF_PARTS, SAMPLE_OSM, OhsomeStandIn
from standins.sentinelhub import load_patches
from typer.testing import CliRunner

from lulc_core.errors import InputError, TooLargeError, UpstreamError
from lulc_core.geo import BBox, Tile, tile_for_bbox
from lulc_core.http import RequestRejectedError
from lulc_core.labelling import label_tiles, rasterize_labels
from lulc_core.labels import LabelSet
from lulc_core.osm.filter import FilterSyntaxError
from lulc_core.osm.local import LocalOsmSource
from lulc_core.osm.ohsome import OhsomeSource

GEOMETRY = "POST /v1/elements/geometry"
REPO = Path(__file__).resolve().parents[1]
KOUVOLA = BBox(west=26.935, south=60.522, east=26.965, north=60.538)
FARMS = "landuse=farmland or natural=water"


@pytest.fixture
def ohsome() -> Iterator[OhsomeStandIn]:
    with OhsomeStandIn() as server:
        yield server  # type: ignore[misc]


def source(server: OhsomeStandIn, cache_dir: Path | None = None, **kw: float) -> OhsomeSource:
    opts = {"backoff_s": 0.01, **kw}
    timeout = float(opts.pop("timeout_s", 5.0))
    retries = int(opts.pop("max_retries", 3))
    return OhsomeSource(server.api_url, timeout, retries, cache_dir, **opts)  # type: ignore[arg-type]


def patch_tiles() -> list[Tile]:
    """The three sample patches as tiles (their own UTM grids, labels at the acquisition date)."""
    return [
        Tile(id=p.id, crs=p.crs.to_string(), bounds=p.bounds, resolution=10.0, start=p.s2_date, end=p.s2_date)
        for p in load_patches()
    ]


def sample_bbox() -> BBox:
    return patch_tiles()[2].bbox_wgs84  # 637U, North Jutland


# --- the request and its result ---------------------------------------------------------------------------------


def test_features_match_the_local_extract_and_the_request_is_the_documented_one(ohsome: OhsomeStandIn):
    bbox, day = sample_bbox(), date(2017, 10, 30)
    got = source(ohsome).features(bbox, day, FARMS)
    want = LocalOsmSource(SAMPLE_OSM).features(bbox, day, FARMS)
    assert list(got.columns) == list(want.columns) == ["osm_id", "osm_type", "landuse", "natural", "geometry"]
    assert got.crs.to_epsg() == 4326 and len(got) == len(want) > 5
    assert sorted(got["osm_id"]) == sorted(want["osm_id"])
    assert got.union_all().symmetric_difference(want.union_all()).area < 1e-12
    form = ohsome.forms[-1]
    assert form["filter"] == f"({FARMS}) and geometry:polygon"
    assert form["time"] == "2017-10-30" and form["properties"] == "tags" and form["clipGeometry"] == "true"
    assert [round(float(v), 7) for v in form["bboxes"].split(",")] == [round(v, 7) for v in bbox.as_tuple()]
    assert ohsome.requests[-1].headers["user-agent"].startswith("ohsome-py/")


def test_stand_in_bodies_have_the_recorded_format(ohsome: OhsomeStandIn):
    cassette = yaml.safe_load((shared_path("data", "ohsome") / "test_extra_tags_argument.yaml").read_text())
    recorded = json.loads(cassette["interactions"][0]["response"]["body"]["string"])
    source(ohsome).features(sample_bbox(), date(2017, 10, 30), FARMS)
    import requests

    body = requests.post(ohsome.api_url + "/elements/geometry", data=ohsome.forms[-1], timeout=5).json()
    assert set(body) == set(recorded) == {"attribution", "apiVersion", "type", "features"}
    assert {"@osmId", "@snapshotTimestamp"} <= set(body["features"][0]["properties"])
    error = json.loads(
        yaml.safe_load((shared_path("data", "ohsome") / "test_timeout_error.yaml").read_text())["interactions"][0][
            "response"
        ]["body"]["string"]
    )
    ohsome.faults.add(GEOMETRY, Fault.http(413))
    answer = requests.post(ohsome.api_url + "/elements/geometry", data=ohsome.forms[-1], timeout=5)
    assert answer.status_code == 413 and set(answer.json()) == set(error)
    assert answer.json()["message"] == error["message"]
    meta = source(ohsome).metadata()
    assert meta["apiVersion"] == "1.10.1" and "temporalExtent" in meta["extractRegion"]


def test_an_empty_result_is_an_empty_frame_and_an_empty_label_raster(ohsome: OhsomeStandIn, v3_label_set):
    ohsome.faults.add(GEOMETRY, Fault.empty(), times=None)
    empty = source(ohsome).features(sample_bbox(), date(2017, 10, 30), FARMS)
    assert empty.empty and empty.crs.to_epsg() == 4326 and "geometry" in empty.columns
    raster = rasterize_labels(source(ohsome), v3_label_set, patch_tiles()[2])
    assert raster.data.shape == (1, 224, 224) and not raster.data.any()


def test_a_bad_filter_is_a_syntax_error_before_any_request(ohsome: OhsomeStandIn):
    with pytest.raises(FilterSyntaxError):
        source(ohsome).features(sample_bbox(), date(2017, 10, 30), "landuse=farmland and (")
    assert ohsome.count(GEOMETRY) == 0


# --- labels: ohsome and local files give identical rasters ------------------------------------------------------


def test_labels_from_ohsome_equal_labels_from_the_same_local_file(ohsome: OhsomeStandIn, v3_label_set):
    remote, local = source(ohsome), LocalOsmSource(SAMPLE_OSM)
    classes_seen: set[int] = set()
    for tile in patch_tiles():
        a = rasterize_labels(remote, v3_label_set, tile).data
        b = rasterize_labels(local, v3_label_set, tile).data
        assert np.array_equal(a, b), tile.id
        classes_seen |= set(np.unique(a).tolist())
    assert len(classes_seen) >= 4  # not trivially empty


def test_labels_from_ohsome_equal_labels_from_the_osm_pbf(v3_label_set):
    kouvola_pbf = shared_path(*KOUVOLA_PBF_PARTS)
    with OhsomeStandIn(extracts=[kouvola_pbf]) as server:
        tile = tile_for_bbox(KOUVOLA, 10.0, date(2023, 6, 1), date(2023, 6, 30), "kouvola")
        a = rasterize_labels(source(server), v3_label_set, tile).data
    b = rasterize_labels(LocalOsmSource(kouvola_pbf), v3_label_set, tile).data
    assert np.array_equal(a, b)
    assert (a > 0).mean() > 0.2 and len(np.unique(a)) >= 3


# --- 413 splitting ----------------------------------------------------------------------------------------------


def test_a_too_large_query_is_split_and_gives_the_same_labels(ohsome: OhsomeStandIn, v3_label_set):
    tile = patch_tiles()[2]
    whole = rasterize_labels(source(ohsome), v3_label_set, tile).data
    calls = ohsome.count(GEOMETRY)
    ohsome.max_features = 8  # like the real API's timeout: dense queries answer 413
    split = source(ohsome).features(tile.bbox_wgs84, tile.end, FARMS)
    assert ohsome.count(GEOMETRY) - calls > 5 and split["osm_id"].is_unique  # cut polygons merged again
    ohsome.max_features = 20  # the one query for every class matches 57 polygons; its quarters at most 24
    calls = ohsome.count(GEOMETRY)
    parts = rasterize_labels(source(ohsome), v3_label_set, tile).data
    assert ohsome.count(GEOMETRY) - calls > 4  # split
    assert np.array_equal(whole, parts)
    calls = ohsome.count(GEOMETRY)
    ohsome.max_features = None
    ohsome.faults.add(GEOMETRY, Fault("stream_timeout"))  # 413 appended to a streamed 200 body
    streamed = source(ohsome).features(tile.bbox_wgs84, tile.end, FARMS)
    assert ohsome.count(GEOMETRY) - calls == 1 + 4
    assert streamed.union_all().symmetric_difference(split.union_all()).area < 1e-12
    ohsome.max_features = 0
    with pytest.raises(TooLargeError) as err:
        source(ohsome, max_split_depth=1).features(tile.bbox_wgs84, tile.end, FARMS)
    assert "413" in str(err.value) and "after 1 splits" in str(err.value)


# --- cache ------------------------------------------------------------------------------------------------------


def test_cache_hits_avoid_requests_and_corrupt_entries_are_refetched(ohsome: OhsomeStandIn, tmp_path: Path):
    bbox, day = sample_bbox(), date(2017, 10, 30)
    first = source(ohsome, tmp_path).features(bbox, day, FARMS)
    again = source(ohsome, tmp_path)
    second = again.features(bbox, day, FARMS)
    assert ohsome.count(GEOMETRY) == 1 and again.http.stats.cache_hits == 1
    assert second.geometry.geom_equals(first.geometry).all()
    source(ohsome, tmp_path).features(bbox, day, "landuse=forest")  # another class: another entry
    source(ohsome, tmp_path).features(bbox, date(2017, 11, 1), FARMS)  # another date: another entry
    assert ohsome.count(GEOMETRY) == 3
    meta = next(
        p for p in tmp_path.rglob("*.json") if '"time": "2017-10-30"' in p.read_text() and "farmland" in p.read_text()
    )
    entry = meta.with_suffix(".bin")
    entry.write_bytes(entry.read_bytes()[:-40])  # truncated on disk
    for _ in range(2):
        source(ohsome, tmp_path).features(bbox, day, FARMS)
        source(ohsome, tmp_path).features(bbox, day, "landuse=forest")
    assert ohsome.count(GEOMETRY) == 4  # exactly the corrupt entry was fetched again


# --- faults -----------------------------------------------------------------------------------------------------


TRANSIENT = {
    "429": Fault.http(429, retry_after="0"),
    **RETRIED_FAULTS,
    "broken-json": Fault.corrupt(),
    "reset": Fault.reset(),
}


@pytest.mark.parametrize("fault", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_faults_end_in_success(ohsome: OhsomeStandIn, fault: Fault):
    ohsome.faults.add(GEOMETRY, fault)
    got = source(ohsome, timeout_s=1.5).features(sample_bbox(), date(2017, 10, 30), FARMS)
    assert len(got) > 5 and ohsome.count(GEOMETRY) == 2


def test_ohsome_py_does_not_retry_on_its_own(ohsome: OhsomeStandIn):
    ohsome.faults.add(GEOMETRY, Fault.http(503))
    with pytest.raises(UpstreamError) as err:
        source(ohsome, max_retries=0).features(sample_bbox(), date(2017, 10, 30), FARMS)
    assert ohsome.count(GEOMETRY) == 1  # urllib3's default Retry of ohsome-py is off: one policy only
    assert err.value.status_code == 503 and "Service Unavailable" in str(err.value)


def test_persistent_failure_names_the_tile_and_leaves_no_file(ohsome: OhsomeStandIn, v3_label_set, tmp_path: Path):
    ohsome.faults.add(GEOMETRY, Fault.http(502), times=None)
    tile = patch_tiles()[2]
    with pytest.raises(UpstreamError) as err:
        label_tiles(source(ohsome, max_retries=2), v3_label_set, [tile], tmp_path / "labels")
    assert tile.id in str(err.value) and "failed after 3 attempt(s)" in str(err.value)
    assert ohsome.count(GEOMETRY) == 3
    assert list((tmp_path / "labels").iterdir()) == []


def test_a_rejected_request_fails_fast_with_the_api_message(ohsome: OhsomeStandIn):
    ohsome.faults.add(GEOMETRY, Fault.http(400, message="The provided boundary parameter does not fit its format."))
    with pytest.raises(RequestRejectedError) as err:
        source(ohsome).features(sample_bbox(), date(2017, 10, 30), FARMS)
    assert "does not fit its format" in str(err.value) and ohsome.count(GEOMETRY) == 1


def test_label_dates_beyond_the_data_use_the_newest_data(caplog: pytest.LogCaptureFixture):
    with OhsomeStandIn(data_end=datetime(2020, 1, 1, tzinfo=UTC)) as server:
        src = source(server)
        with caplog.at_level(logging.WARNING, logger="lulc_core.osm.ohsome"):
            got = src.features(sample_bbox(), date(2023, 6, 10), FARMS)
        assert len(got) > 5 and [f["time"] for f in server.forms] == ["2023-06-10", "2020-01-01"]
        assert "ohsome data ends 2020-01-01" in caplog.text
        with pytest.raises(InputError) as err:
            src.features(sample_bbox(), date(2005, 1, 1), FARMS)
        assert err.value.field == "when"


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_labels_from_ohsome_and_from_a_file_are_identical(ohsome: OhsomeStandIn, tmp_path: Path):
    from lulc.cli import app
    from lulc_core.grid import write_tiles

    tiles = patch_tiles()
    write_tiles(tiles, tmp_path / "tiles.geojson")
    run = {
        "name": "ohsome-cli",
        "work_dir": str(tmp_path / "work"),
        "area": {"bbox": [9.8, 57.2, 9.9, 57.3], "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
        "imagery": {"store": "local", "local_dir": str(REPO / "data" / "sample" / "imagery")},
        "labels": {
            "label_set": str(REPO / "conf" / "labels" / "v3.yaml"),
            "source": "file",
            "osm_file": str(SAMPLE_OSM),
            "ohsome_url": ohsome.api_url,
        },
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    base = ["data", "labels", "-c", str(tmp_path / "run.yaml"), "-t", str(tmp_path / "tiles.geojson")]
    runner = CliRunner()
    remote = runner.invoke(app, [*base, "-o", str(tmp_path / "ohsome"), "--source", "ohsome"])
    assert remote.exit_code == 0, remote.output
    local = runner.invoke(app, [*base, "-o", str(tmp_path / "file"), "--source", f"file:{SAMPLE_OSM}"])
    assert local.exit_code == 0, local.output
    assert ohsome.count(GEOMETRY) == 3  # one request per tile for every class (not 3 * 6)
    for tile in tiles:
        with (
            rasterio.open(tmp_path / "ohsome" / f"{tile.id}.tif") as a,
            rasterio.open(tmp_path / "file" / f"{tile.id}.tif") as b,
        ):
            assert np.array_equal(a.read(), b.read()) and a.transform == b.transform, tile.id


# --- one request per tile for every class -----------------------------------------------------------------------


def _labels_one_query_per_class(src: OhsomeSource, label_set: LabelSet, tile: Tile) -> np.ndarray:
    """The former method, kept here as the reference: one clipped query per class, burnt largest first."""
    from rasterio.crs import CRS
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    shapes = []
    for value, cls in enumerate(label_set.classes, start=1):
        gdf = src.features(tile.bbox_wgs84, tile.end, cls.osm_filter)
        for geom in gdf.to_crs(CRS.from_user_input(tile.crs)).geometry if not gdf.empty else []:
            if geom is not None and not geom.is_empty and geom.area > 0:
                shapes.append((geom, value, float(geom.area)))
    out = np.zeros((tile.height, tile.width), np.uint8)
    shapes.sort(key=lambda s: -s[2])
    if shapes:
        transform = from_origin(tile.bounds[0], tile.bounds[3], tile.resolution, tile.resolution)
        rasterize(((g, v) for g, v, _ in shapes), out=out, transform=transform, dtype="uint8")
    return out


def test_one_request_per_tile_gives_the_labels_of_one_request_per_class(
    ohsome: OhsomeStandIn, v3_label_set: LabelSet, data_sample_tiles: list[Tile]
):
    """The whole sample (27 tiles): the same rasters as one query per class, from 6 times fewer requests.

    The default rate limit (5/s, test_labels_rate) is lifted: 189 requests would take 38 s here."""
    fast = {"max_requests_per_second": 1000.0}
    per_class = [_labels_one_query_per_class(source(ohsome, **fast), v3_label_set, t) for t in data_sample_tiles]
    before = ohsome.count(GEOMETRY)
    combined = [rasterize_labels(source(ohsome, **fast), v3_label_set, t).data[0] for t in data_sample_tiles]
    assert ohsome.count(GEOMETRY) - before == len(data_sample_tiles) == before / len(v3_label_set.classes)
    form = ohsome.forms[-1]
    assert form["clipGeometry"] == "false" and " or " in form["filter"] and form["filter"].endswith("geometry:polygon")
    for tile, a, b in zip(data_sample_tiles, per_class, combined, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=tile.id)
    assert sum(int((a > 0).sum()) for a in combined) > 0.3 * sum(a.size for a in combined)


def test_area_selector_drops_slivers_alike_in_the_api_and_locally(ohsome: OhsomeStandIn, tmp_path: Path):
    """A label set with `area:` (valid on the API, common to drop slivers): the stand-in (the API's evaluation)
    and the local extract give the same labels, and the selector removes polygons."""
    classes = [
        {"name": "big-farms", "osm_filter": "landuse=farmland and area:(50000..)", "color": "#D0A35A"},
        {"name": "water", "osm_filter": "natural=water or waterway=riverbank", "color": "#011959"},
    ]
    label_set = LabelSet(name="slivers", classes=classes)
    tile = patch_tiles()[2]
    remote = rasterize_labels(source(ohsome), label_set, tile).data[0]
    local = rasterize_labels(LocalOsmSource(SAMPLE_OSM), label_set, tile).data[0]
    np.testing.assert_array_equal(remote, local)
    every_farm = LabelSet(name="all", classes=[{**classes[0], "osm_filter": "landuse=farmland"}, classes[1]])
    unfiltered = rasterize_labels(LocalOsmSource(SAMPLE_OSM), every_farm, tile).data[0]
    assert 0 < (local == 1).sum() < (unfiltered == 1).sum()
