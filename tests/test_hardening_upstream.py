"""Upstream faults: Sentinel Hub and ohsome down, slow, rate-limited or answering garbage.

At prediction time: `python -m serving` on 127.0.0.1 with the Sentinel Hub imagery store and the ohsome OSM source
pointed at the stand-ins (real sentinelhub-py / ohsome-py clients, no retries at prediction time — the client is
told when to retry —, 2 s / 1 s client timeouts, a 4 s prediction deadline). Every fault answers 502/503/504 naming the service, with Retry-After for 429/503, within the deadline
(measured) — also for a request queued behind one that timed out — and the server recovers when the service does.

At training-data time: `fetch_tiles` / `label_tiles` interrupted by a persistent fault mid-way keep the finished
tiles, leave no partial file and no corrupt cache entry, and a re-run fetches only what is missing (stand-in
request counts); the same through `lulc data imagery` killed by SIGKILL and by SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import rasterio
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_helpers import Predictor, TcpSwitch, run_config, server_errors, start_predictor
from serving_helpers import BANDS, BBOX
from standins import Fault, FaultPlan
from standins.ohsome import SAMPLE_OSM, OhsomeStandIn
from standins.sentinelhub import PROCESS_PATH, TOKEN_PATH, SentinelHubStandIn, load_patches

from lulc_core.errors import UpstreamError
from lulc_core.geo import Tile
from lulc_core.http import ResponseCache
from lulc_core.imagery import fetch_tiles
from lulc_core.imagery.sentinelhub import SentinelHubStore
from lulc_core.labelling import label_tiles
from lulc_core.labels import LabelSet
from lulc_core.osm.ohsome import OhsomeSource

REPO = Path(__file__).resolve().parents[1]
CLIENT = "lulc-test-client"
# Fake credentials in the predictor's environment (built at run time: nothing for the repository secret scan);
# the last test searches the predictor's log and every answer of this module for them.
CANARIES = {
    n: f"canary-{n.lower().replace('_', '-')}-{i}b7e"
    for i, n in enumerate(
        ["SH_CLIENT_SECRET", "NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_PASSWORD", "AWS_SECRET_ACCESS_KEY", "KFP_TOKEN"]
    )
}
SECRET = CANARIES["SH_CLIENT_SECRET"]
ANSWERS: list[str] = []  # every answer the predictor gave in this module
PROCESS, TOKEN = f"POST {PROCESS_PATH}", f"POST {TOKEN_PATH}"
GEOMETRY = "POST /v1/elements/geometry"
DEADLINE_S = 4.0  # --timeout-s of the predictor
MARGIN_S = 1.5  # answer, encode and scheduling time on a busy 2-core machine
V3 = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")


@pytest.fixture(scope="module")
def sh_env() -> Iterator[dict[str, str]]:
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    env = {"OAUTHLIB_INSECURE_TRANSPORT": "1", "SH_CLIENT_ID": CLIENT} | CANARIES
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def sh(sh_env: dict[str, str]) -> Iterator[SentinelHubStandIn]:
    with SentinelHubStandIn({CLIENT: SECRET}) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def ohsome() -> Iterator[OhsomeStandIn]:
    with OhsomeStandIn([SAMPLE_OSM]) as server:
        yield server  # type: ignore[misc]


@dataclass
class Upstream:
    """The predictor and the stand-ins it depends on."""

    server: Predictor
    sh: SentinelHubStandIn
    ohsome: OhsomeStandIn
    sh_switch: TcpSwitch
    ohsome_switch: TcpSwitch


@pytest.fixture(scope="module")
def upstream(
    tmp_path_factory: pytest.TempPathFactory, sh: SentinelHubStandIn, ohsome: OhsomeStandIn, sh_env: dict[str, str]
) -> Iterator[Upstream]:
    tmp = tmp_path_factory.mktemp("hardening_upstream")
    sh_switch, ohsome_switch = TcpSwitch(sh.port).up(), TcpSwitch(ohsome.port).up()
    sentinelhub = {"base_url": sh_switch.url, "token_url": sh_switch.url + TOKEN_PATH, "timeout_s": 2.0}
    sentinelhub |= {"max_retries": 0, "max_requests_per_second": 100.0}
    config = run_config(
        tmp,
        imagery={"store": "sentinelhub", "sentinelhub": sentinelhub, "bands": BANDS},
        labels={"source": "ohsome", "ohsome_url": ohsome_switch.url + "/v1", "timeout_s": 1.0, "max_retries": 0},
    )
    try:
        args = ("--timeout-s", str(DEADLINE_S), "--log-level", "DEBUG")
        with start_predictor(tmp, config, *args, env=sh_env) as server:
            yield Upstream(server, sh, ohsome, sh_switch, ohsome_switch)
    finally:
        sh_switch.down()
        ohsome_switch.down()


_days = iter(range(1, 1000))


def fresh_body(**extra: Any) -> dict[str, Any]:
    """A good request no cache has seen yet (each gets its own end date: new cache keys everywhere)."""
    end = date(2017, 11, 4) + timedelta(days=next(_days))
    return {"area_coords": BBOX, "start_date": "2017-10-25", "end_date": end.isoformat()} | extra


def timed_post(server: Predictor, body: dict[str, Any]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    r = server.post("/segment/", body, timeout=DEADLINE_S + 30)
    elapsed = time.monotonic() - started
    ANSWERS.append(json.dumps(dict(r.headers)) + r.content.decode("latin-1"))
    return r, elapsed


# name -> (stand-in, route, fault, fusion mode, status, Retry-After, fragment of the message)
FAULTS: dict[str, tuple[str, str, Fault, str, int, str | None, str]] = {
    "sentinelhub-slow": ("sh", PROCESS, Fault.slow(30), "only_model", 504, None, "timed out"),
    "sentinelhub-rate-limited": ("sh", PROCESS, Fault.http(429, retry_after="1500"), "only_model", 503, "2", "429"),
    "sentinelhub-unavailable": ("sh", PROCESS, Fault.http(503, retry_after="3000"), "only_model", 503, "3", "503"),
    "sentinelhub-error": ("sh", PROCESS, Fault.http(500), "only_model", 502, None, "500"),
    "sentinelhub-garbage-tar": ("sh", PROCESS, Fault.corrupt(), "only_model", 502, None, "attempt"),
    "sentinelhub-cut-short": ("sh", PROCESS, Fault.truncate(), "only_model", 502, None, "cut short"),
    "sentinelhub-token-endpoint-slow": ("sh", TOKEN, Fault.slow(30), "only_model", 504, None, "timed out"),
    "ohsome-slow": ("ohsome", GEOMETRY, Fault.slow(30), "favour_osm", 504, None, "timed out"),
    "ohsome-rate-limited": ("ohsome", GEOMETRY, Fault.http(429, retry_after="1"), "favour_osm", 503, "1", "429"),
    "ohsome-garbage": ("ohsome", GEOMETRY, Fault.corrupt(), "mean_mixin", 502, None, "attempt"),
    "ohsome-error": ("ohsome", GEOMETRY, Fault.http(502), "only_osm", 502, None, "502"),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_at_prediction_time_is_a_clear_5xx_within_the_deadline(upstream: Upstream, name: str) -> None:
    which, route, fault, mode, status, retry_after, fragment = FAULTS[name]
    standin = upstream.sh if which == "sh" else upstream.ohsome
    service = "Sentinel Hub" if which == "sh" else "ohsome"
    if route == TOKEN:
        upstream.sh.revoke_tokens()  # the server's token is refused once: it must fetch a new one
        upstream.sh.faults.add(PROCESS, Fault.http(401), times=1)
    standin.faults.add(route, fault, times=None)
    try:
        r, elapsed = timed_post(upstream.server, fresh_body(fusion_mode=mode))
    finally:
        standin.faults.clear()
    assert r.status_code == status, r.text
    assert elapsed < DEADLINE_S + MARGIN_S, f"answered after {elapsed:.1f} s"
    error = r.json()["error"]
    assert service in error and fragment in error, error
    assert r.headers.get("retry-after") == retry_after
    assert upstream.server.get("/health").json()["ready"] is True


def test_slow_answers_hit_the_prediction_deadline_also_for_queued_requests(upstream: Upstream) -> None:
    """ohsome answers every query in 0.6 s (under the 1 s client timeout) and finds the larger ones too large (413),
    so the client splits the bbox and asks again, query after query: the 4 s deadline strikes (504), and a request
    queued behind the one still running is answered by its own deadline, not after it."""
    upstream.ohsome.faults.add(GEOMETRY, Fault.slow(0.6), times=None)
    upstream.ohsome.max_features = 2  # small parts pass, so the splitting goes on part after part
    try:
        r, elapsed = timed_post(upstream.server, fresh_body(fusion_mode="favour_osm"))
        assert r.status_code == 504 and "did not finish within 4 s" in r.json()["error"], r.text
        assert DEADLINE_S - 0.5 < elapsed < DEADLINE_S + MARGIN_S, elapsed
        r, elapsed = timed_post(upstream.server, fresh_body(fusion_mode="favour_osm"))
        assert r.status_code in (503, 504), r.text
        assert elapsed < DEADLINE_S + MARGIN_S, f"the queued request answered after {elapsed:.1f} s"
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
    finally:
        upstream.ohsome.faults.clear()
        upstream.ohsome.max_features = None
    time.sleep(1.5)  # the abandoned work (now answered quickly) ends; its slot frees


def test_services_down_then_back(upstream: Upstream) -> None:
    """Closed ports: 502 naming the service and the refused connection; when they come back, 200 again."""
    for switch, service, mode in (
        (upstream.sh_switch, "Sentinel Hub", "only_model"),
        (upstream.ohsome_switch, "ohsome", "only_osm"),
    ):
        switch.down()
        try:
            r, elapsed = timed_post(upstream.server, fresh_body(fusion_mode=mode))
        finally:
            switch.up()
        assert r.status_code == 502, r.text
        assert service in r.json()["error"] and "connection failed" in r.json()["error"], r.text
        assert elapsed < DEADLINE_S + MARGIN_S
    r, _ = timed_post(upstream.server, fresh_body(fusion_mode="favour_osm"))
    assert r.status_code == 200, r.text
    with rasterio.io.MemoryFile(r.content) as mem, mem.open() as src:
        assert src.count == 1 and src.crs.to_epsg() == 32632
    metrics = upstream.server.get("/metrics").text
    assert 'lulc_upstream_errors_total{service="Sentinel Hub"}' in metrics
    assert 'lulc_upstream_errors_total{service="ohsome"}' in metrics
    assert not server_errors(upstream.server.log_text())


def test_no_secret_in_the_predictor_log_or_answers(upstream: Upstream) -> None:
    """A token endpoint that echoes the client secret in its refusal: the 502 names the refusal, not the secret.
    Then the whole log (DEBUG) and every answer of this module are searched for the fake credentials."""
    echo = f"unauthorized_client: secret {SECRET} is not valid for {CLIENT}"
    upstream.sh.revoke_tokens()
    upstream.sh.faults.add(PROCESS, Fault.http(401), times=1)  # the token is refused: a new one is asked for
    upstream.sh.faults.add(TOKEN, Fault.http(401, message=echo), times=None)
    try:
        r, _ = timed_post(upstream.server, fresh_body())
    finally:
        upstream.sh.faults.clear()
    assert r.status_code == 502 and "check the credentials" in r.json()["error"], r.text
    assert "is not valid for" in r.json()["error"]
    r, _ = timed_post(upstream.server, fresh_body())
    assert r.status_code == 200
    log = upstream.server.log_text()
    assert "Sentinel Hub" in log and "check the credentials" in log
    assert len(ANSWERS) > len(FAULTS)
    leaked = sorted(name for name, value in CANARIES.items() if value in log or any(value in a for a in ANSWERS))
    assert not leaked, f"the predictor printed {leaked}"


# --- training-data time ------------------------------------------------------------------------------------------


class FailAfter(FaultPlan):
    """A fault plan that lets the first `n` requests of `route` through, then injects `fault` into every later one."""

    def __init__(self, route: str, n: int, fault: Fault) -> None:
        super().__init__()
        self.route, self.n, self.fault, self.seen = route, n, fault, 0

    def take(self, route: str) -> Fault | None:
        if route != self.route:
            return None
        with self._lock:
            self.seen += 1
            return self.fault if self.seen > self.n else None


def patch_tiles(n: int, size: int = 16) -> list[Tile]:
    """`n` small tiles side by side on sample patch 637U_59R_1_3."""
    patch = next(p for p in load_patches() if p.id == "637U_59R_1_3")
    w, _, _, top = patch.bounds
    return [
        Tile(
            id=f"t{i}",
            crs=patch.crs.to_string(),
            bounds=(w + i * size * 10.0, top - size * 10.0, w + (i + 1) * size * 10.0, top),
            resolution=10.0,
            start=patch.s2_date - timedelta(days=5),
            end=patch.s2_date + timedelta(days=5),
        )
        for i in range(n)
    ]


def sh_store(sh: SentinelHubStandIn, cache: Path | None) -> SentinelHubStore:
    from lulc_core.config import SentinelHubConfig

    cfg = SentinelHubConfig(
        base_url=sh.url, token_url=sh.token_url, max_retries=1, backoff_s=0.01, max_backoff_s=0.02, timeout_s=5.0
    )
    return SentinelHubStore(cfg, 10.0, cache)


def partial_files(*dirs: Path) -> list[Path]:
    return [
        p
        for d in dirs
        if d.exists()
        for p in d.rglob("*")
        if p.is_file() and (p.suffix == ".part" or not p.stat().st_size)
    ]


def cache_entries_valid(directory: Path) -> int:
    """Number of entries of a ResponseCache directory; every one must be whole (size and checksum)."""
    bins = sorted(directory.rglob("*.bin"))
    for path in bins:
        assert ResponseCache(path.parent.parent).get(path.stem) is not None, f"corrupt cache entry {path}"
    assert len(list(directory.rglob("*.json"))) == len(bins)
    return len(bins)


@pytest.mark.parametrize("fault", [Fault.http(503), Fault.corrupt()], ids=["503", "garbage"])
def test_fetch_tiles_resumes_after_a_fault_mid_way(sh: SentinelHubStandIn, tmp_path: Path, fault: Fault) -> None:
    tiles, out, cache = patch_tiles(6), tmp_path / "imagery", tmp_path / "cache"
    sh.reset_stats()
    sh.faults = FailAfter(PROCESS, 3, fault)
    try:
        with pytest.raises(UpstreamError) as err:
            fetch_tiles(sh_store(sh, cache), tiles, ["B04", "B08"], out, concurrency=1)
    finally:
        sh.faults = FaultPlan()
    assert "t3" in str(err.value) and err.value.status_code in (502, 503)
    assert sorted(p.name for p in out.iterdir()) == ["t0.tif", "t1.tif", "t2.tif"]
    assert not partial_files(out, cache)
    assert cache_entries_valid(cache) == 3  # the failed (or garbage) answers were not stored
    before = sh.count(PROCESS)
    again = sh_store(sh, cache)
    paths = fetch_tiles(again, tiles, ["B04", "B08"], out, concurrency=1)
    assert sh.count(PROCESS) - before == 3  # t3..t5 only
    assert again.http.stats.cache_hits == 0  # the finished tiles were skipped, not even read from the cache
    for path in paths:
        with rasterio.open(path) as src:
            assert src.descriptions == ("B04", "B08") and src.read().shape == (2, 16, 16)
    assert cache_entries_valid(cache) == 6 and not partial_files(out, cache)


def test_label_tiles_resume_after_an_ohsome_fault_mid_way(ohsome: OhsomeStandIn, tmp_path: Path) -> None:
    """One query per tile (every class at once); the 2nd query fails: tile t0 is done (and cached), t1 is not."""
    tiles, out, cache = patch_tiles(3, size=32), tmp_path / "labels", tmp_path / "cache"
    ohsome.reset_stats()
    ohsome.faults = FailAfter(GEOMETRY, 1, Fault.http(503))
    try:
        source = OhsomeSource(ohsome.api_url, 5.0, 1, cache, backoff_s=0.01)
        with pytest.raises(UpstreamError) as err:
            label_tiles(source, V3, tiles, out, cache_dir=cache)
    finally:
        ohsome.faults = FaultPlan()
    assert "t1" in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["t0.tif"] and not partial_files(out, cache)
    assert cache_entries_valid(cache) == 1  # the response for t0; not the failed one
    before = ohsome.count(GEOMETRY)
    label_tiles(OhsomeSource(ohsome.api_url, 5.0, 1, cache, backoff_s=0.01), V3, tiles, out, cache_dir=cache)
    assert ohsome.count(GEOMETRY) - before == 3 - 1  # nothing answered before is asked again
    assert sorted(p.name for p in out.iterdir()) == ["t0.tif", "t1.tif", "t2.tif"]
    assert not partial_files(out, cache)


def _cli_run(tmp: Path, sh: SentinelHubStandIn, tiles: list[Tile], env: dict[str, str]) -> subprocess.Popen[str]:
    from lulc_core.grid import write_tiles

    write_tiles(tiles, tmp / "tiles.geojson")
    run = {
        "name": "kill",
        "work_dir": str(tmp / "work"),
        "area": {"bbox": BBOX, "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
        "imagery": {
            "store": "sentinelhub",
            "bands": ["B04", "DEM"],
            "concurrency": 1,
            "sentinelhub": {"base_url": sh.url, "token_url": sh.token_url, "backoff_s": 0.01},
        },
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.geojson"},
    }
    (tmp / "run.yaml").write_text(yaml.safe_dump(run))
    args = ["data", "imagery", "-c", str(tmp / "run.yaml"), "-t", str(tmp / "tiles.geojson"), "-o", str(tmp / "out")]
    lulc = str(Path(sys.executable).with_name("lulc"))
    return subprocess.Popen(
        [lulc, "-q", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ | env
    )


def _wait_for_files(directory: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(list(directory.glob("*.tif"))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command did not get going"
        time.sleep(0.05)


def test_lulc_data_imagery_killed_then_terminated_then_resumed(
    sh: SentinelHubStandIn, tmp_path: Path, sh_env: dict[str, str]
) -> None:
    """SIGKILL after 2 tiles, SIGTERM after 2 more (exit 143, one line), then a run that completes: every output
    is a whole GeoTIFF at every point, and no finished tile is fetched twice."""
    tiles, out = patch_tiles(6), tmp_path / "out"
    sh.reset_stats()
    seen = len(sh.payloads)
    sh.latency_s = 0.25
    try:
        proc = _cli_run(tmp_path, sh, tiles, sh_env)
        _wait_for_files(out, 2, proc)
        proc.kill()
        proc.communicate(timeout=30)
        first = _whole_tifs(out)
        killed_parts = {p.name for p in out.glob(".*.part")}  # what a SIGKILL cannot clean up
        proc = _cli_run(tmp_path, sh, tiles, sh_env)
        _wait_for_files(out, len(first) + 2, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 143, stderr
        assert "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("error: interrupted (SIGTERM)")
        assert {p.name for p in out.glob(".*.part")} == killed_parts  # SIGTERM removed its temporary file
        _whole_tifs(out)
        proc = _cli_run(tmp_path, sh, tiles, sh_env)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr
    finally:
        sh.latency_s = 0.0
    assert _whole_tifs(out) == {t.id for t in tiles}
    fetched = {t.id: 0 for t in tiles}
    for payload in sh.payloads[seen:]:
        left = round(payload["input"]["bounds"]["bbox"][0])
        fetched[next(t.id for t in tiles if round(t.bounds[0]) == left)] += 1
    assert all(fetched[t] == 1 for t in first), fetched  # finished before the kill: fetched once
    assert sum(fetched.values()) <= len(tiles) + 2, fetched  # at most the two interrupted tiles again
    assert {p.name for p in out.iterdir() if p.suffix != ".tif"} == killed_parts


def _whole_tifs(directory: Path) -> set[str]:
    """Ids of the tile GeoTIFFs in `directory`; each must be whole (2 bands of 16 x 16 px, readable)."""
    ids = set()
    for path in directory.glob("*.tif"):
        with rasterio.open(path) as src:
            assert src.read().shape == (2, 16, 16), path
        ids.add(path.stem)
    return ids
