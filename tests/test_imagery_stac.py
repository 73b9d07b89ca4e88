"""STAC store (`imagery.store: stac`) against the STAC API stand-in: pystac-client search, COG range reads, cloud
masking and composites, the baseline 04.00 offset, Planetary Computer signing, faults, bad input, cache, and the
entry points `lulc data imagery --store stac` and `lulc run`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from pystac_client import Client
from standins import Fault
from standins.cloudy import clear_scene, cloudy_tile, observations
from standins.stac import StacStandIn
from typer.testing import CliRunner

from lulc_core.config import DEFAULT_BANDS, S2_BANDS, ImageryConfig, load_run_config
from lulc_core.errors import InputError, NotCoveredError
from lulc_core.geo import Tile
from lulc_core.grid import build_grid
from lulc_core.imagery import REPORT_FILE, build_imagery_store, fetch_tiles_report
from lulc_core.imagery.local import LocalGeoTiffStore
from lulc_core.imagery.stac import StacStore, needs_offset_removal

REPO = Path(__file__).resolve().parents[1]
FAST = {"max_retries": 3, "backoff_s": 0.01, "timeout_s": 5}


@pytest.fixture(scope="module")
def stac() -> Iterator[StacStandIn]:
    with StacStandIn() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def stac_signed() -> Iterator[StacStandIn]:
    with StacStandIn(signed=True) as server:
        yield server  # type: ignore[misc]


@pytest.fixture()
def fresh(stac: StacStandIn) -> Iterator[StacStandIn]:
    stac.faults.clear()
    stac.reset_stats()
    yield stac
    stac.faults.clear()


def stac_cfg(server: StacStandIn, **stac: Any) -> ImageryConfig:
    """Earth Search shape (no signing) with the stand-in's Sentinel-1 RTC collection."""
    options = {"url": server.url, "s1_collection": "sentinel-1-rtc", **FAST, **stac}
    return ImageryConfig(store="stac", stac=options)


@pytest.fixture(scope="module")
def sample_tiles() -> list[Tile]:
    cfg = load_run_config(REPO / "conf" / "run.yaml")
    return build_grid(cfg.area, 10.0)


def _tile_of(tiles: list[Tile], epsg: int) -> Tile:
    return next(t for t in tiles if t.crs == f"EPSG:{epsg}")


def test_stac_fetch_equals_the_local_store_on_every_band(fresh: StacStandIn, sample_tiles: list[Tile]) -> None:
    store = build_imagery_store(stac_cfg(fresh))
    assert isinstance(store, StacStore)
    local = LocalGeoTiffStore(REPO / "data" / "sample" / "imagery")
    for epsg in (32632, 32736):
        tile = _tile_of(sample_tiles, epsg)
        got, want = store.fetch(tile, DEFAULT_BANDS), local.fetch(tile, DEFAULT_BANDS)
        assert got.data.shape == (15, tile.height, tile.width) and got.valid_mask.all()
        np.testing.assert_allclose(got.data, want.data, atol=1e-3)  # S1 back from linear to dB, DEM as is
        assert got.tags["source"] == "stac:earth_search"
    ranged = [r for r in fresh.requests if r.path.startswith("/assets/") and r.method == "GET"]
    assert ranged and all(r.headers.get("range", "").startswith("bytes=") for r in ranged)  # COG range reads


def test_stac_removes_the_offset_of_processing_baseline_04(fresh: StacStandIn, sample_tiles: list[Tile]) -> None:
    tile = _tile_of(sample_tiles, 32718)  # served as baseline 04.00, offset not applied
    got = build_imagery_store(stac_cfg(fresh)).fetch(tile, ["B02", "B04"])
    want = LocalGeoTiffStore(REPO / "data" / "sample" / "imagery").fetch(tile, ["B02", "B04"])
    np.testing.assert_allclose(got.data, want.data, atol=1e-3)
    assert needs_offset_removal({"s2:processing_baseline": "04.00"})
    assert needs_offset_removal({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": False})
    assert not needs_offset_removal({"s2:processing_baseline": "05.09", "earthsearch:boa_offset_applied": True})
    assert not needs_offset_removal({"s2:processing_baseline": "03.01"})


@pytest.mark.parametrize("method", ["median", "least_cloudy"])
def test_stac_cloud_composite_is_cleaner_than_any_single_date(method: str) -> None:
    tile = cloudy_tile()
    truth = clear_scene()[0]
    with StacStandIn(clear_cloudy_patch=False) as server:
        cfg = stac_cfg(server)  # type: ignore[arg-type]
        cfg.composite = method
        raster = build_imagery_store(cfg).fetch(tile, S2_BANDS)
        searches = list(server.searches)  # type: ignore[attr-defined]
    finite = np.isfinite(raster.data).all(axis=0)
    assert np.allclose(raster.data[:, finite], truth[:, finite])  # nothing cloudy survives the mask
    per_date_clear = [1 - o.cloud_percent / 100 for o in observations()]
    assert finite.mean() > max(per_date_clear) + 0.15  # 95 % clear vs 75 % on the best single date
    all_cloudy = np.logical_and.reduce([o.clm.astype(bool) for o in observations()])
    assert (~finite == all_cloudy).all()  # no valid observation -> nodata
    s2_search = next(s for s in searches if s["collections"] == ["sentinel-2-l2a"])
    assert s2_search["query"] == {"eo:cloud_cover": {"lte": 60.0}}
    assert s2_search["datetime"].startswith("2017-10-26T00:00:00Z/2017-11-01")


def test_stac_search_answers_get_and_post_through_pystac_client(fresh: StacStandIn) -> None:
    client = Client.open(fresh.url)
    bbox = [9.0, 57.0, 10.5, 57.5]
    posted = list(client.search(collections=["sentinel-2-l2a"], bbox=bbox, datetime="2017-10-25/2017-11-04").items())
    got = list(
        client.search(
            collections=["sentinel-2-l2a"],
            bbox=bbox,
            datetime="2017-10-25/2017-11-04",
            query={"eo:cloud_cover": {"lte": 30}},
            method="GET",
        ).items()
    )
    assert len(posted) == 5 and len(got) == 2 and all(i.properties["eo:cloud_cover"] <= 30 for i in got)
    item = posted[0]
    assert {"blue", "red", "nir", "scl", "swir22"} <= set(item.assets) and item.collection_id == "sentinel-2-l2a"
    methods = {r.method for r in fresh.requests if r.path == "/search"}
    assert methods == {"GET", "POST"}


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        ("POST /search", Fault.http(503)),
        ("POST /search", Fault.http(429, retry_after="0")),
        ("GET /assets/S2B_38D_378R_2_3_20230610_0_L2A/red.tif", Fault.http(500)),
        ("GET /assets/S2B_38D_378R_2_3_20230610_0_L2A/red.tif", Fault.truncate()),
    ],
    ids=["search-503", "search-429", "asset-500", "truncated-asset"],
)
def test_stac_rides_out_faults_with_the_one_retry_policy(
    fresh: StacStandIn, sample_tiles: list[Tile], route: str, fault: Fault
) -> None:
    tile = _tile_of(sample_tiles, 32736)
    want = build_imagery_store(stac_cfg(fresh)).fetch(tile, ["B04", "B08"]).data
    fresh.reset_stats()
    fresh.faults.add(route, fault, times=1)
    store = build_imagery_store(stac_cfg(fresh))
    got = store.fetch(tile, ["B04", "B08"]).data
    np.testing.assert_array_equal(got, want)
    assert store.http.stats.retries + store.asset_http.stats.retries == 1  # type: ignore[attr-defined]
    assert fresh.count(route) >= 2


def test_stac_no_scene_under_the_cloud_limit_is_reported_and_the_other_tiles_finish(tmp_path: Path) -> None:
    cloudy = cloudy_tile(640.0, "cloudy-dk")
    tiles = [t for t in build_grid(load_run_config(REPO / "conf" / "run.yaml").area, 10.0) if "32736" in t.crs][:2]
    with StacStandIn(clear_cloudy_patch=False) as server:
        store = build_imagery_store(stac_cfg(server, max_cloud_cover=20))  # type: ignore[arg-type]
        report = fetch_tiles_report(store, [cloudy, *tiles], ["B04"], tmp_path)
    assert sorted(report.written) == sorted(t.id for t in tiles)
    reason = report.failed["cloudy-dk"]
    assert "imagery.stac.max_cloud_cover" in reason and "\n" not in reason and "eo:cloud_cover <= 20" in reason
    with pytest.raises(NotCoveredError):
        store.fetch(cloudy, ["B04"])


def test_stac_bad_collection_and_missing_band_name_the_field(fresh: StacStandIn, sample_tiles: list[Tile]) -> None:
    tile = _tile_of(sample_tiles, 32736)
    with pytest.raises(InputError) as err:
        build_imagery_store(stac_cfg(fresh, s2_collection="sentinel-2-l3")).fetch(tile, ["B04"])
    assert err.value.field == "imagery.stac.s2_collection" and "sentinel-2-l2a" in str(err.value)
    with pytest.raises(InputError) as err:
        build_imagery_store(stac_cfg(fresh)).fetch(tile, ["B04", "CLM"])
    assert err.value.field == "imagery.bands" and "CLM" in str(err.value)
    es = ImageryConfig(store="stac", stac={"url": fresh.url, **FAST})  # Earth Search has no public S1 RTC
    with pytest.raises(InputError, match="planetary_computer") as err:
        build_imagery_store(es).fetch(tile, ["VV"])
    with StacStandIn(drop_assets={"rededge1"}) as server, pytest.raises(InputError) as err:
        build_imagery_store(stac_cfg(server)).fetch(tile, ["B04", "B05"])  # type: ignore[arg-type]
    assert err.value.field == "imagery.bands" and "B05" in str(err.value) and "rededge1" in str(err.value)


def test_stac_planetary_computer_signs_asset_urls(stac_signed: StacStandIn, sample_tiles: list[Tile]) -> None:
    tile = _tile_of(sample_tiles, 32736)
    cfg = ImageryConfig(
        store="stac",
        stac={
            "catalog": "planetary_computer",
            "url": stac_signed.url,
            "sign_url": f"{stac_signed.url}/sas/token",
            **FAST,
        },
    )
    raster = build_imagery_store(cfg).fetch(tile, ["B04", "VV", "DEM"])
    assert raster.valid_mask.all()
    tokens = [r.path for r in stac_signed.requests if r.path.startswith("/sas/token/")]
    assert sorted(set(tokens)) == [
        "/sas/token/cop-dem-glo-30",
        "/sas/token/sentinel-1-rtc",
        "/sas/token/sentinel-2-l2a",
    ]
    assert len(tokens) == 3  # one token per collection, reused
    assets = [r for r in stac_signed.requests if r.path.startswith("/assets/")]
    assert assets and all("sig=" in r.query for r in assets)
    unsigned = ImageryConfig(store="stac", stac={"url": stac_signed.url, **FAST})  # no signing: 403 from storage
    with pytest.raises(Exception, match="403"):
        build_imagery_store(unsigned).fetch(tile, ["B04"])


def test_stac_signing_failure_names_the_field_and_the_others_finish(
    stac_signed: StacStandIn, sample_tiles: list[Tile], tmp_path: Path
) -> None:
    stac_signed.faults.add("GET /sas/token/sentinel-2-l2a", Fault.http(403), times=None)
    try:
        cfg = ImageryConfig(
            store="stac",
            stac={"catalog": "planetary_computer", "url": stac_signed.url, "sign_url": f"{stac_signed.url}/sas/token",
                  **FAST},
        )  # fmt: skip
        tiles = [_tile_of(sample_tiles, 32736)]
        report = fetch_tiles_report(build_imagery_store(cfg), tiles, ["DEM"], tmp_path / "dem")
        assert report.written == [tiles[0].id]  # DEM needs no S2 token: it finishes
        report = fetch_tiles_report(build_imagery_store(cfg), tiles, ["B04"], tmp_path / "s2")
    finally:
        stac_signed.faults.clear()
    reason = report.failed[tiles[0].id]
    assert "imagery.stac.sign_url" in reason and "403" in reason and "earth_search" in reason


def test_stac_cache_serves_a_second_run_without_requests(
    fresh: StacStandIn, sample_tiles: list[Tile], tmp_path: Path
) -> None:
    tile = _tile_of(sample_tiles, 32632)
    first = build_imagery_store(stac_cfg(fresh), cache_dir=tmp_path).fetch(tile, ["B04", "SCL"])
    assets_before = sum(1 for r in fresh.requests if r.path.startswith("/assets/"))
    searches_before = sum(1 for r in fresh.requests if r.path == "/search")
    again = build_imagery_store(stac_cfg(fresh), cache_dir=tmp_path)
    second = again.fetch(tile, ["B04", "SCL"])
    np.testing.assert_array_equal(first.data, second.data)
    assert sum(1 for r in fresh.requests if r.path.startswith("/assets/")) == assets_before
    assert sum(1 for r in fresh.requests if r.path == "/search") == searches_before
    assert again.http.stats.cache_hits > 0 and again.asset_http.stats.cache_hits > 0  # type: ignore[attr-defined]


def _stac_config(tmp_path: Path, server: StacStandIn, area: dict[str, Any] | None = None, **imagery: Any) -> Path:
    raw = yaml.safe_load((REPO / "conf" / "run.yaml").read_text())
    raw["work_dir"] = str(tmp_path / "work")
    raw["area"]["aoi"] = str(REPO / "data" / "sample" / "aoi.geojson")
    if area is not None:
        raw["area"] = area
    raw["labels"]["label_set"] = str(REPO / "conf" / "labels" / "v3.yaml")
    raw["labels"]["osm_file"] = str(REPO / "data" / "sample" / "osm" / "sample_osm.geojson")
    raw["imagery"] = {
        "store": "stac",
        "stac": {"url": server.url, "s1_collection": "sentinel-1-rtc", **FAST},
        "concurrency": 2,
        **imagery,
    }
    raw["training"].update({"epochs": 1, "batch_size": 8})
    path = tmp_path / "stac.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_stac_cli_data_imagery(fresh: StacStandIn, sample_tiles: list[Tile], tmp_path: Path) -> None:
    from lulc.cli import app
    from lulc_core.grid import write_tiles

    config = _stac_config(tmp_path, fresh, store="local", local_dir=str(REPO / "data" / "sample" / "imagery"))
    picked = [sample_tiles[0], sample_tiles[10], sample_tiles[20]]
    write_tiles(picked, tmp_path / "tiles.geojson")
    result = CliRunner().invoke(
        app,
        ["data", "imagery", "-c", str(config), "-t", str(tmp_path / "tiles.geojson"), "-o", str(tmp_path / "img"),
         "--store", "stac", "--report", str(tmp_path / "report.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3 of 3 tiles with imagery, 0 skipped" in result.output
    assert json.loads((tmp_path / "report.json").read_text())["written"] == [t.id for t in picked]
    local = LocalGeoTiffStore(REPO / "data" / "sample" / "imagery")
    for tile in picked:
        with rasterio.open(tmp_path / "img" / f"{tile.id}.tif") as src:
            np.testing.assert_allclose(src.read(), local.fetch(tile, DEFAULT_BANDS).data, atol=1e-3)
    assert any(r.path.startswith("/assets/") for r in fresh.requests)
    bad = yaml.safe_load(config.read_text())
    bad["imagery"]["stac"]["s2_collection"] = "sentinel-2-l1c"
    config.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(
        app,
        ["data", "imagery", "-c", str(config), "-t", str(tmp_path / "tiles.geojson"), "-o", str(tmp_path / "bad"),
         "--store", "stac"],
    )  # fmt: skip
    err = result.exception  # `lulc` (lulc.cli.main) prints it as one `error:` line with exit code 2
    assert isinstance(err, InputError) and err.field == "imagery.stac.s2_collection", result.output
    assert "2 more tiles failed" in str(err) and "\n" not in str(err)


@pytest.mark.usefixtures("torch_single_thread")
def test_stac_lulc_run_end_to_end_over_cloudy_dates(tmp_path: Path) -> None:
    from lulc.cli import app

    area = {
        "name": "dk",
        "bbox": [9.829, 57.219, 9.861, 57.235],  # the Danish sample patch, seen only on its four cloudy dates
        "time_frames": [{"start": "2017-10-26", "end": "2017-11-01"}],
        "tile_size_m": 640,
    }
    with StacStandIn(clear_cloudy_patch=False) as server:
        config = _stac_config(
            tmp_path, server, area, bands=["B02", "B03", "B04", "B08", "VV", "DEM"], min_valid_share=0.8
        )  # type: ignore[arg-type]
        result = CliRunner().invoke(app, ["run", "-c", str(config), "-o", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / REPORT_FILE).read_text())
    assert report["skipped_low_valid"] and report["written"]  # partly covered and cloudy tiles skipped, counted
    assert all(share >= 0.8 for share in report["valid_share"].values())
    tiles = {p.stem for p in (tmp_path / "run" / "imagery").glob("*.tif")}
    assert tiles == set(report["written"])
    assert (tmp_path / "run" / "evaluation").is_dir()


def test_stac_heidelberg_example_validates_and_plans_without_network() -> None:
    cfg = load_run_config(REPO / "conf" / "examples" / "heidelberg.yaml")
    assert cfg.imagery.store == "stac" and cfg.labels.source == "ohsome" and cfg.imagery.composite == "median"
    store = build_imagery_store(cfg.imagery)
    assert isinstance(store, StacStore)  # building the store contacts nothing
    assert store.catalogue.url == "https://earth-search.aws.element84.com/v1" and store.catalogue.sign_url is None
    tiles = build_grid(cfg.area, cfg.imagery.resolution)
    assert len(tiles) == 12 and all(t.crs == "EPSG:32632" for t in tiles)
    assert "VV" not in cfg.imagery.bands  # Earth Search has no public Sentinel-1 RTC
