"""Sentinel Hub imagery store and CORINE labels: the real sentinelhub-py client against the stand-in on 127.0.0.1.

The stand-in runs the repository's evalscripts (node) over the real sample rasters, so what the store returns can
be compared with the local GeoTIFF store on the same tile.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import tarfile
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from shared import shared_path
from standins import RETRIED_FAULTS, Fault
from standins.sentinelhub import CORINE_COLLECTION as CORINE
from standins.sentinelhub import PROCESS_PATH, SAMPLE_LULC, TOKEN_PATH, SentinelHubStandIn, load_patches
from typer.testing import CliRunner

from lulc_core.config import SentinelHubConfig
from lulc_core.errors import ConfigError, InputError, NotCoveredError, TooLargeError, UpstreamError
from lulc_core.geo import Tile
from lulc_core.http import RequestRejectedError
from lulc_core.imagery import fetch_tiles
from lulc_core.imagery.local import LocalGeoTiffStore
from lulc_core.imagery.sentinelhub import (
    ENDPOINTS,
    SentinelHubStore,
    credentials_from_env,
    decode_outputs,
    estimate_processing_units,
    load_evalscript,
    plan_windows,
    resolve_endpoint,
)

CLIENT, SECRET = "lulc-test-client", "lulc-test-secret"
PROCESS = f"POST {PROCESS_PATH}"
TOKEN = f"POST {TOKEN_PATH}"
REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGERY = REPO / "data" / "sample" / "imagery"
BANDS = ["B02", "B04", "B08", "B11", "SCL", "CLM", "VV", "VH", "DEM"]


@pytest.fixture
def sh(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelHubStandIn]:
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # oauthlib refuses plain http otherwise
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT)
    monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)
    monkeypatch.delenv("SH_CREDENTIALS_DIR", raising=False)
    with SentinelHubStandIn({CLIENT: SECRET}) as server:
        yield server  # type: ignore[misc]


def settings(server: SentinelHubStandIn, **kw: object) -> SentinelHubConfig:
    base = {
        "base_url": server.url,
        "token_url": server.token_url,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "max_retries": 3,
        "timeout_s": 5.0,
        "max_requests_per_second": 200.0,
    }
    return SentinelHubConfig.model_validate({**base, **kw})


def patch_tile(pid: str = "637U_59R_1_3", col: int = 0, row: int = 0, size: int | None = None) -> Tile:
    """A tile on the grid of a sample patch (optionally a `size` px window of it)."""
    patch = next(p for p in load_patches() if p.id == pid)
    w, _, _, n = patch.bounds
    width = size or patch.width
    height = size or patch.height
    left, top = w + col * 10.0, n - row * 10.0
    return Tile(
        id=f"{pid}_{col}_{row}_{width}",
        crs=patch.crs.to_string(),
        bounds=(left, top - height * 10.0, left + width * 10.0, top),
        resolution=10.0,
        start=patch.s2_date - timedelta(days=5),
        end=patch.s2_date + timedelta(days=5),
    )


# --- correctness ------------------------------------------------------------------------------------------------


def test_fetch_returns_the_bands_on_the_tile_grid(sh: SentinelHubStandIn, caplog: pytest.LogCaptureFixture):
    tile = patch_tile()
    store = SentinelHubStore(settings(sh, s1_backscatter="SIGMA0_ELLIPSOID"), 10.0, None)
    with caplog.at_level(logging.INFO, logger="lulc_core.imagery.sentinelhub"):
        raster = store.fetch(tile, BANDS)
    assert raster.band_names == BANDS and raster.data.dtype == np.float32
    assert (raster.height, raster.width) == (224, 224)
    assert raster.crs.to_string() == tile.crs and raster.bounds == pytest.approx(tile.bounds)
    assert raster.valid_mask.all()
    local = LocalGeoTiffStore(SAMPLE_IMAGERY).fetch(tile, [b for b in BANDS if b not in ("SCL", "CLM")])
    for i, band in enumerate(local.band_names):
        got = raster.data[BANDS.index(band)]
        assert np.allclose(got, local.data[i], atol=1e-3), band  # same real data as the local store
    with rasterio.open(SAMPLE_LULC / "637U_59R_1_3.tif") as src:
        esri = src.read(1)
    assert np.array_equal(raster.data[BANDS.index("CLM")], (esri == 8).astype(np.float32))
    assert set(np.unique(raster.data[BANDS.index("SCL")])) <= {4.0, 5.0, 6.0, 9.0, 11.0}
    # the real request: evalscript file, UTM bounds, data fusion inputs, processing options, tar of 4 outputs
    payload = sh.payloads[-1]
    assert payload["evalscript"] == store.evalscript.text and '"composite": "median"' in store.evalscript.text
    assert load_evalscript("lulc_v2").inputs == store.evalscript.inputs
    assert payload["input"]["bounds"]["properties"]["crs"] == "http://www.opengis.net/def/crs/EPSG/0/32632"
    assert payload["input"]["bounds"]["bbox"] == pytest.approx(list(tile.bounds))
    data = {d["id"]: d for d in payload["input"]["data"]}
    assert {k: d["type"] for k, d in data.items()} == {"s2": "sentinel-2-l2a", "s1": "sentinel-1-grd", "dem": "dem"}
    assert data["s2"]["dataFilter"]["timeRange"] == {"from": "2017-10-25T00:00:00Z", "to": "2017-11-04T23:59:59Z"}
    assert data["s2"]["dataFilter"]["mosaickingOrder"] == "leastCC"
    assert data["s1"]["processing"] == {
        "orthorectify": True,
        "demInstance": "COPERNICUS_30",
        "backCoeff": "SIGMA0_ELLIPSOID",
    }
    assert data["dem"]["dataFilter"]["demInstance"] == "COPERNICUS_30"
    assert (payload["output"]["width"], payload["output"]["height"]) == (224, 224)
    assert [r["identifier"] for r in payload["output"]["responses"]] == ["s2", "cloud", "s1", "dem"]
    assert sh.requests[-1].headers["accept"] == "application/x-tar"
    assert "PU estimated" in caplog.text


def test_only_the_needed_outputs_are_requested_as_a_single_tiff(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    raster = store.fetch(patch_tile(size=32), ["DEM"])
    assert raster.band_names == ["DEM"] and raster.valid_mask.all()
    assert [r["identifier"] for r in sh.payloads[-1]["output"]["responses"]] == ["dem"]
    assert sh.requests[-1].headers["accept"] == "image/tiff"


def test_partial_coverage_masks_missing_pixels_and_no_data_is_not_covered(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    raster = store.fetch(patch_tile(col=200, size=48), ["B04", "DEM"])  # 24 px inside the patch, 24 outside
    assert raster.valid_mask[:, :24].all() and not raster.valid_mask[:, 24:].any()
    assert np.isnan(raster.data[:, :, 24:]).all() and np.isfinite(raster.data[:, :, :24]).all()
    late = patch_tile(size=32).model_copy(update={"start": date(2019, 1, 1), "end": date(2019, 2, 1)})
    with pytest.raises(NotCoveredError, match=late.id):
        store.fetch(late, ["B04"])  # no acquisition in that time range: an error, never an empty raster


def test_unknown_band_and_evalscript_are_clear_errors(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    with pytest.raises(InputError) as err:
        store.fetch(patch_tile(size=16), ["B04", "B13"])
    assert err.value.field == "imagery.bands" and "B13" in str(err.value)
    with pytest.raises(ConfigError) as err2:
        SentinelHubStore(settings(sh, evalscript="lulc_v99"), 10.0, None)
    assert "lulc_v1" in str(err2.value)
    assert sh.count(PROCESS) == 0


# --- cache ------------------------------------------------------------------------------------------------------


def test_cache_hit_avoids_a_second_request_and_corrupt_entries_are_refetched(sh: SentinelHubStandIn, tmp_path: Path):
    tile = patch_tile(size=40)
    first = SentinelHubStore(settings(sh), 10.0, tmp_path).fetch(tile, ["B04", "VV"])
    assert sh.count(PROCESS) == 1
    again = SentinelHubStore(settings(sh), 10.0, tmp_path)  # a new run: same cache directory
    second = again.fetch(tile, ["VV", "B04", "B08"])  # other bands of the same outputs: same request
    assert sh.count(PROCESS) == 1 and again.http.stats.cache_hits == 1
    assert np.array_equal(second.data[1], first.data[0]) and np.array_equal(second.data[0], first.data[1])
    entry = next(tmp_path.rglob("*.bin"))
    entry.write_bytes(entry.read_bytes()[:1000])  # a truncated tar on disk
    third = SentinelHubStore(settings(sh), 10.0, tmp_path).fetch(tile, ["B04", "VV"])
    assert sh.count(PROCESS) == 2 and np.array_equal(third.data, first.data)
    assert not list(tmp_path.rglob("*.part"))
    other_time = tile.model_copy(update={"end": date(2017, 11, 20)})  # still holds the 2017-10-30 scene
    SentinelHubStore(settings(sh), 10.0, tmp_path).fetch(other_time, ["B04", "VV"])
    assert sh.count(PROCESS) == 3  # the time range is part of the key


# --- request size -----------------------------------------------------------------------------------------------


def test_a_tile_over_the_pixel_limit_is_split_and_mosaicked(sh: SentinelHubStandIn):
    tile = patch_tile(size=120)
    whole = SentinelHubStore(settings(sh), 10.0, None).fetch(tile, ["B04", "DEM"])
    parts = SentinelHubStore(settings(sh, max_pixels_per_request=50 * 50), 10.0, None).fetch(tile, ["B04", "DEM"])
    assert len(plan_windows(120, 120, 50 * 50)) == 6  # 3 x 2 windows of 40 x 60 px
    assert sh.count(PROCESS) == 1 + 6
    assert max(p["output"]["width"] * p["output"]["height"] for p in sh.payloads[1:]) <= 2500
    assert np.array_equal(whole.data, parts.data)


def test_plan_windows_respects_the_process_api_limits():
    windows = plan_windows(5000, 3000, 2500 * 2500)
    assert len(windows) == 4 and all(w.width <= 2500 and w.height <= 2500 for w in windows)
    assert sum(w.width * w.height for w in windows) == 5000 * 3000
    assert len(plan_windows(256, 256, 2500 * 2500)) == 1
    with pytest.raises(TooLargeError) as err:
        plan_windows(30_000, 30_000, 2500 * 2500, "huge_tile")
    assert "huge_tile" in str(err.value) and "2500 px per side" in str(err.value)


# --- faults -----------------------------------------------------------------------------------------------------


# Sentinel Hub's Retry-After is in milliseconds
TRANSIENT = {"429": Fault.http(429, retry_after="20"), **RETRIED_FAULTS, "truncated-tar": Fault.corrupt()}


@pytest.mark.parametrize("fault", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_faults_end_in_success(sh: SentinelHubStandIn, fault: Fault):
    store = SentinelHubStore(settings(sh, timeout_s=1.5), 10.0, None)
    sh.faults.add(PROCESS, fault)
    raster = store.fetch(patch_tile(size=24), ["B04", "VV"])
    assert raster.valid_mask.all() and np.isfinite(raster.data).all()
    assert sh.count(PROCESS) == 2 and sh.count(TOKEN) == 1


def test_persistent_failure_is_an_upstream_error_naming_the_tile_and_leaves_no_file(
    sh: SentinelHubStandIn, tmp_path: Path
):
    store = SentinelHubStore(settings(sh), 10.0, None)
    sh.faults.add(PROCESS, Fault.http(503, retry_after="30"), times=None)
    tile = patch_tile(size=24)
    with pytest.raises(UpstreamError) as err:
        fetch_tiles(store, [tile], ["B04"], tmp_path / "out")
    assert tile.id in str(err.value) and "failed after 4 attempt(s)" in str(err.value)
    assert err.value.status_code == 503 and err.value.retry_after == pytest.approx(0.03)
    assert sh.count(PROCESS) == 4
    assert list((tmp_path / "out").iterdir()) == []  # no raster, no partial file


def test_a_bad_request_fails_fast_with_the_server_message(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    sh.faults.add(PROCESS, Fault.http(400, message="Invalid evalscript: unexpected token"))
    with pytest.raises(RequestRejectedError) as err:
        store.fetch(patch_tile(size=16), ["B04"])
    assert err.value.upstream_status == 400 and "Invalid evalscript: unexpected token" in str(err.value)
    assert sh.count(PROCESS) == 1


def test_a_rejected_token_is_renewed_once(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    store.fetch(patch_tile(size=16), ["DEM"])
    sh.revoke_tokens()  # e.g. the token was revoked or expired early
    store.fetch(patch_tile(size=17), ["DEM"])
    assert sh.count(TOKEN) == 2 and sh.count(PROCESS) == 3
    sh.faults.add(PROCESS, Fault.http(401), times=None)  # never accepted: fail, do not loop
    with pytest.raises(RequestRejectedError, match="credentials"):
        store.fetch(patch_tile(size=18), ["DEM"])


def test_wrong_credentials_are_a_clear_error(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None, credentials=(CLIENT, "wrong-secret"))
    with pytest.raises(RequestRejectedError) as err:
        store.fetch(patch_tile(size=16), ["B04"])
    assert err.value.upstream_status == 401 and "unauthorized_client: Invalid client" in str(err.value)
    assert "check the credentials" in str(err.value)
    assert sh.count(TOKEN) == 1 and sh.count(PROCESS) == 0


# --- concurrency ------------------------------------------------------------------------------------------------


def test_concurrent_tiles_respect_the_concurrency_and_the_rate_limit(sh: SentinelHubStandIn, tmp_path: Path):
    sh.latency_s = 0.3
    store = SentinelHubStore(settings(sh, max_requests_per_second=8.0), 10.0, None)
    tiles = [patch_tile(col=20 * i, size=16) for i in range(6)]
    start = time.monotonic()
    paths = fetch_tiles(store, tiles, ["B04", "DEM"], tmp_path, concurrency=3)
    elapsed = time.monotonic() - start
    assert [p.name for p in paths] == [f"{t.id}.tif" for t in tiles] and all(p.is_file() for p in paths)
    assert sh.count(PROCESS) == 6
    assert 2 <= sh.max_in_flight <= 3
    assert elapsed >= 5 / 8.0  # six starts, 1/8 s apart at least


# --- processing units, wire format, endpoints -------------------------------------------------------------------


def test_processing_units_follow_the_recorded_request_and_the_service_header(sh: SentinelHubStandIn):
    record = json.loads((shared_path("data", "sentinelhub") / "lulc_utility_request.json").read_text())
    out = record["request"]["payload"]["output"]
    spent = float(record["response"]["headers"]["x-processingunits-spent"])
    # S1 VV, VH + S2 six bands + DEM = 9 input bands; FLOAT32 outputs: factor 2
    assert estimate_processing_units(out["width"], out["height"], 9, float32=True) == pytest.approx(spent, rel=1e-6)
    store = SentinelHubStore(settings(sh), 10.0, None)
    tile = patch_tile()
    estimate = store.processing_units(tile, BANDS)
    store.fetch(tile, BANDS)
    # ORBIT mosaicking bills every data sample: the patch has one S2, S1 and DEM sample in its 11-day frame, the
    # estimate expects an S2 look every 5 days (3 x 14 bands) and an S1 look every 6 (2 x 2 bands), plus the DEM
    assert store.pu_spent == pytest.approx(224 * 224 / 512**2 * 17 / 3 * 2)
    assert estimate == pytest.approx(224 * 224 / 512**2 * (3 * 14 + 2 * 2 + 1) / 3 * 2) == store.pu_estimated


def test_requests_have_the_recorded_wire_format(sh: SentinelHubStandIn):
    record = json.loads((shared_path("data", "sentinelhub") / "lulc_utility_request.json").read_text())["request"][
        "payload"
    ]
    SentinelHubStore(settings(sh), 10.0, None).fetch(patch_tile(size=16), BANDS)
    ours = sh.payloads[-1]
    assert set(ours) == set(record) == {"evalscript", "input", "output"}
    assert set(ours["input"]["bounds"]) == set(record["input"]["bounds"])
    assert {"id", "type", "dataFilter"} <= set(ours["input"]["data"][0])
    assert set(ours["input"]["data"][0]["dataFilter"]["timeRange"]) == {"from", "to"}
    assert ours["output"]["responses"][0]["format"] == record["output"]["responses"][0]["format"]
    assert ours["evalscript"].startswith("//VERSION=3")


def test_the_real_multipart_response_decodes():
    body = (shared_path("data", "sentinelhub") / "img.tar").read_bytes()
    decoded = decode_outputs(body, ["default"], {"default": (3, 856, 512)})
    array, transform, crs = decoded["default"]
    assert array.dtype == np.uint16 and crs.to_epsg() == 4326
    assert transform.c == pytest.approx(46.16) and transform.f == pytest.approx(-15.58)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert sorted(tar.getnames()) == ["default.tif", "userdata.json"]


def test_endpoint_presets_and_credentials(tmp_path: Path):
    cdse = resolve_endpoint(SentinelHubConfig(endpoint="cdse"))
    assert cdse.base_url == "https://sh.dataspace.copernicus.eu" and "identity.dataspace" in cdse.token_url
    custom = resolve_endpoint(SentinelHubConfig(endpoint="cdse", base_url="http://127.0.0.1:1/"))
    assert custom.base_url == "http://127.0.0.1:1" and custom.token_url == cdse.token_url
    assert resolve_endpoint(SentinelHubConfig()) == ENDPOINTS["sentinelhub"]
    # through JSON (a pipeline step's configuration, a bundle's run_config) every default is explicit
    again = SentinelHubConfig.model_validate_json(SentinelHubConfig(endpoint="cdse").model_dump_json())
    assert resolve_endpoint(again) == cdse
    assert credentials_from_env({"SH_CLIENT_ID": "a", "SH_CLIENT_SECRET": "b"}) == ("a", "b")
    (tmp_path / "client_id").write_text("from-secret\n")
    (tmp_path / "client_secret").write_text("s3cret\n")
    assert credentials_from_env({"SH_CREDENTIALS_DIR": str(tmp_path), "SH_CLIENT_ID": "x"}) == ("from-secret", "s3cret")
    with pytest.raises(ConfigError) as err:
        credentials_from_env({})
    assert err.value.field == "SH_CLIENT_ID" and "SH_CREDENTIALS_DIR" in str(err.value)
    (tmp_path / "client_secret").unlink()
    with pytest.raises(ConfigError, match="client_secret"):
        credentials_from_env({"SH_CREDENTIALS_DIR": str(tmp_path)})


def test_sentinelhub_py_does_not_retry_or_read_config_files(sh: SentinelHubStandIn):
    store = SentinelHubStore(settings(sh), 10.0, None)
    assert store._sh_config.max_download_attempts == 1  # the one retry policy is lulc_core.http's
    sh.faults.add(TOKEN, Fault.http(503))
    store.fetch(patch_tile(size=16), ["DEM"])  # a failing token endpoint is retried by the same policy
    assert sh.count(TOKEN) == 2


# --- CLI ---------------------------------------------------------------------------------------------------------


def test_cli_data_imagery_with_the_sentinelhub_store(sh: SentinelHubStandIn, tmp_path: Path):
    from lulc.cli import app
    from lulc_core.grid import write_tiles

    tiles = [patch_tile(size=32), patch_tile("433D_629L_3_1", size=32)]
    write_tiles(tiles, tmp_path / "tiles.geojson")
    run = {
        "name": "sh-cli",
        "work_dir": str(tmp_path / "work"),
        "area": {"bbox": [9.8, 57.2, 9.9, 57.3], "time_frames": [{"start": "2017-10-01", "end": "2017-10-28"}]},
        "imagery": {
            "store": "local",
            "local_dir": str(SAMPLE_IMAGERY),
            "bands": ["B02", "B03", "B04", "VV", "DEM"],
            "sentinelhub": {"base_url": sh.url, "token_url": sh.token_url, "backoff_s": 0.01},
        },
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.geojson"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    args = ["data", "imagery", "-c", str(tmp_path / "run.yaml"), "-t", str(tmp_path / "tiles.geojson")]
    args += ["-o", str(tmp_path / "imagery"), "--store", "sentinelhub", "-j", "2", "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for tile in tiles:
        with rasterio.open(tmp_path / "imagery" / f"{tile.id}.tif") as src:
            assert list(src.descriptions) == ["B02", "B03", "B04", "VV", "DEM"]
            assert src.crs.to_string() == tile.crs and tuple(src.bounds) == pytest.approx(tile.bounds)
    assert sh.count(PROCESS) == 2
    assert CliRunner().invoke(app, args).exit_code == 0 and sh.count(PROCESS) == 2  # resumed: nothing fetched


# --- CORINE -----------------------------------------------------------------------------------------------------


def test_corine_labels_map_codes_through_the_label_set(sh: SentinelHubStandIn, v3_label_set):
    from lulc_core.corine import corine_lookup
    from lulc_core.imagery.corine import CorineLabelSource

    source = CorineLabelSource(settings(sh), v3_label_set, None)
    tile = patch_tile("433D_629L_3_1", size=96)
    raster = source.rasterize(tile)
    assert raster.band_names == ["class"] and raster.data.dtype == np.uint8
    with rasterio.open(SAMPLE_LULC / "433D_629L_3_1.tif") as src:
        esri = src.read(1)[:96, :96]
    # stand-in CORINE from ESRI classes: water 512, trees 313, crops 211, built 112, rangeland 231, bare 332
    expected_by_esri = {1: "water", 2: "forest", 4: "farmland", 5: "built-up", 9: "grass", 6: "unknown"}
    for esri_class, name in expected_by_esri.items():
        if (esri == esri_class).any():
            assert (raster.data[0][esri == esri_class] == v3_label_set.value_of(name)).all(), name
    data = sh.payloads[-1]["input"]["data"][0]
    assert data["type"] == "byoc-cbdba844-f86d-41dc-95ad-b3f7f12535e9"
    assert data["dataFilter"]["mosaickingOrder"] == "mostRecent"
    assert data["dataFilter"]["timeRange"]["to"].startswith(tile.end.isoformat())
    lookup = corine_lookup(v3_label_set)
    assert lookup[41] == v3_label_set.value_of("water") and lookup[48] == 0
    with pytest.raises(NotCoveredError):
        source.rasterize(tile, when=date(2000, 1, 1))  # before the (stand-in's) 2018 edition


def test_cli_data_labels_from_corine(sh: SentinelHubStandIn, tmp_path: Path, v3_label_set):
    from lulc.cli import app
    from lulc_core.grid import write_tiles
    from lulc_core.imagery.corine import CorineLabelSource

    tiles = [patch_tile("433D_629L_3_1", size=48)]
    write_tiles(tiles, tmp_path / "tiles.geojson")
    run = {
        "name": "corine-cli",
        "work_dir": str(tmp_path / "work"),
        "area": {"bbox": [-72.0, -39.0, -71.9, -38.9], "time_frames": [{"start": "2020-04-03", "end": "2020-04-16"}]},
        "imagery": {
            "store": "sentinelhub",
            "sentinelhub": {"base_url": sh.url, "token_url": sh.token_url, "byoc_corine_collection": CORINE},
        },
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.gpkg"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    args = ["data", "labels", "-c", str(tmp_path / "run.yaml"), "-t", str(tmp_path / "tiles.geojson")]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "labels"), "--source", "corine"])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "labels" / f"{tiles[0].id}.tif") as src:
        written = src.read(1)
        assert src.colormap(1)[v3_label_set.value_of("water")][:3] == (1, 25, 89)
    direct = CorineLabelSource(settings(sh), v3_label_set, None).rasterize(tiles[0])
    assert np.array_equal(written, direct.data[0]) and written.any()
