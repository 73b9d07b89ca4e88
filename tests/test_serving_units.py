"""Serving pieces in-process: request values and defaults, cache keys, the LRU, error -> HTTP mapping, JSON logs."""

from __future__ import annotations

import json
import logging
import sys
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from lulc_core.errors import InputError, NotCoveredError, TooLargeError, UpstreamError
from lulc_core.inference import FusionMode, Prediction
from serving.api import http_error_handler, lulc_error_handler, recursion_error_handler
from serving.observability import REQUEST_ID, JsonFormatter, RequestContextMiddleware, RequestIdFilter
from serving.service import AreaJob, AreaRequest, PredictionCache, parse_outputs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BANDS, make_bundle

BBOX = [9.835, 57.222, 9.850, 57.230]


def test_dates_default_to_the_last_week() -> None:
    start, end = AreaRequest(area_coords=BBOX).dates(today=date(2024, 5, 10))
    assert (start, end) == (date(2024, 5, 3), date(2024, 5, 10))
    start, end = AreaRequest(area_coords=BBOX, end_date=date(2020, 1, 8)).dates()
    assert start == date(2020, 1, 1)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"end_date": date.today() + timedelta(days=1)}, "end_date"),
        ({"start_date": date(2020, 2, 1), "end_date": date(2020, 1, 1)}, "start_date"),
        ({"start_date": date(2015, 1, 1), "end_date": date(2015, 12, 1)}, "start_date"),
    ],
)
def test_bad_dates_name_the_field(values: dict[str, date], field: str) -> None:
    with pytest.raises(InputError) as info:
        AreaRequest(area_coords=BBOX, **values).dates()  # type: ignore[arg-type]
    assert info.value.field == field and info.value.fix


def test_parse_names_the_field_with_prefix() -> None:
    with pytest.raises(InputError) as info:
        AreaRequest.parse({"area_coords": BBOX, "threshold": 3}, "instances[0]")
    assert info.value.field == "instances[0].threshold"
    with pytest.raises(InputError, match="area_coords"):
        AreaRequest.parse({"area_coords": [1, 2, 3, float("inf")]})
    with pytest.raises(InputError, match="JSON object"):
        AreaRequest.parse([1, 2])


def test_cache_key_is_the_normalised_request() -> None:
    a = AreaJob.from_request(AreaRequest(area_coords=BBOX, start_date=date(2020, 1, 1), end_date=date(2020, 1, 5)))
    b = AreaJob.from_request(
        AreaRequest.parse(
            {"area_coords": [v + 1e-9 for v in BBOX], "start_date": "2020-01-01", "end_date": "2020-01-05"}
        )
    )
    c = AreaJob.from_request(
        AreaRequest(
            area_coords=BBOX, start_date=date(2020, 1, 1), end_date=date(2020, 1, 5), fusion_mode=FusionMode.FAVOUR_OSM
        )
    )
    d = AreaJob.from_request(
        AreaRequest(area_coords=BBOX, start_date=date(2020, 1, 1), end_date=date(2020, 1, 5)), uncertainty=True
    )
    assert a.key() == b.key()
    assert len({a.key(), c.key(), d.key()}) == 3


def test_lru_cache_evicts_oldest_and_skips_huge(v3_label_set: object) -> None:
    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS

    from lulc_core.raster import Raster

    def pred(n: int) -> Prediction:
        raster = Raster(np.zeros((1, n, n), np.uint8), Affine.identity(), CRS.from_epsg(32632), ["class"])
        return Prediction(classes=raster, label_set=v3_label_set)  # type: ignore[arg-type]

    cache = PredictionCache(size=2, max_bytes=100)
    cache.put("a", pred(2))
    cache.put("b", pred(2))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", pred(2))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.put("big", pred(20))
    assert cache.get("big") is None and len(cache) == 2
    off = PredictionCache(size=0)
    off.put("a", pred(2))
    assert off.get("a") is None


def test_cache_is_bounded_by_bytes_not_entries(v3_label_set: object) -> None:
    """Entries with probabilities are large: eviction follows their bytes, whatever the entry count allows."""
    import numpy as np
    from affine import Affine
    from rasterio.crs import CRS

    from lulc_core.raster import Raster

    def pred(n: int, probabilities: bool) -> Prediction:
        classes = Raster(np.zeros((1, n, n), np.uint8), Affine.identity(), CRS.from_epsg(32632), ["class"])
        probs = Raster(np.zeros((5, n, n), np.float16), Affine.identity(), CRS.from_epsg(32632), list("abcde"))
        return Prediction(classes, v3_label_set, probs if probabilities else None)  # type: ignore[arg-type]

    big = pred(100, probabilities=True)  # 10,000 + 5 x 20,000 = 110,000 bytes
    assert big.nbytes == 110_000
    cache = PredictionCache(size=100, max_bytes=240_000)
    for key in "abc":
        cache.put(key, big)
    assert len(cache) == 2 and cache.get("a") is None and cache.nbytes == 220_000  # the oldest went, by size
    small = pred(100, probabilities=False)
    for i in range(14):
        cache.put(f"s{i}", small)
    assert cache.nbytes <= 240_000 and len(cache) == 14 and cache.get("c") is None
    cache.put("s13", small)  # replacing a key keeps the byte count right
    assert cache.nbytes == 14 * 10_000


def test_cache_bound_comes_from_the_run_configuration() -> None:
    from lulc_core.config import ServingConfig
    from serving.service import LulcService

    settings = ServingConfig(cache_max_bytes=12_345, cache_size=3)
    service = LulcService(predictor=None, bundle=None, settings=settings)  # type: ignore[arg-type]
    assert (service.cache.max_bytes, service.cache.size) == (12_345, 3)


def test_outputs() -> None:
    assert parse_outputs(None) == {"classes"}
    assert parse_outputs(["uncertainty"]) == {"classes", "uncertainty"}
    with pytest.raises(InputError, match="rgb"):
        parse_outputs(["rgb"])
    with pytest.raises(InputError, match="outputs"):
        parse_outputs([1])


def _app() -> TestClient:
    app = FastAPI()
    app.add_middleware(RequestContextMiddleware, max_body_bytes=100)
    from starlette.exceptions import HTTPException

    from lulc_core.errors import LulcError

    app.add_exception_handler(LulcError, lulc_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RecursionError, recursion_error_handler)
    errors = {
        "rate-limited": UpstreamError("sentinelhub", "429 Too Many Requests", retry_after=2.5, status_code=503),
        "bad-gateway": UpstreamError("ohsome", "garbage in response"),
        "timeout": UpstreamError("sentinelhub", "read timed out", status_code=504),
        "not-covered": NotCoveredError("no imagery for the tile"),
        "too-large": TooLargeError("bbox", "1e9 px", "split it"),
        "bad": InputError("threshold", "2 is outside 0..1", "give 0..1"),
    }

    @app.post("/raise/{name}")
    async def _raise(name: str) -> None:
        raise errors[name]

    @app.post("/echo")
    async def _echo(body: dict[str, str]) -> dict[str, str]:
        return body

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("name", "status", "retry_after", "field"),
    [
        ("rate-limited", 503, "3", None),
        ("bad-gateway", 502, None, None),
        ("timeout", 504, None, None),
        ("not-covered", 404, None, None),
        ("too-large", 413, None, "bbox"),
        ("bad", 422, None, "threshold"),
    ],
)
def test_errors_map_to_http(name: str, status: int, retry_after: str | None, field: str | None) -> None:
    r = _app().post(f"/raise/{name}", headers={"X-Request-ID": "unit-1"})
    assert r.status_code == status
    assert r.headers.get("retry-after") == retry_after
    assert r.headers["x-request-id"] == "unit-1"
    assert r.json().get("field") == field and r.json()["error"]


def test_body_limit_and_request_id_sanitising() -> None:
    client = _app()
    r = client.post("/echo", content=b'{"a": "' + b"x" * 200 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks() -> object:
        yield b'{"a": "'
        yield b"x" * 200
        yield b'"}'

    r = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})  # chunked, no length
    assert r.status_code == 413 and "100" in r.json()["error"]
    r = client.post("/echo", json={"a": "b"}, headers={"X-Request-ID": "bad id\nforged"})
    assert (
        r.status_code == 200 and r.headers["x-request-id"] != "bad id\nforged" and len(r.headers["x-request-id"]) == 32
    )


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("serving.x", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    token = REQUEST_ID.set("req-42")
    try:
        RequestIdFilter().filter(record)
    finally:
        REQUEST_ID.reset(token)
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "req-42" and line["message"] == "hello world" and line["level"] == "INFO"


def test_upstream_faults_through_the_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """API -> LulcService -> Predictor -> SentinelHubStore -> sentinelhub-py -> stand-in that fails: 503/502/504."""
    from standins import Fault
    from standins.sentinelhub import PROCESS_PATH, SentinelHubStandIn

    from lulc_core.bundle import ModelBundle
    from lulc_core.config import ImageryConfig, SentinelHubConfig, ServingConfig
    from lulc_core.imagery import build_imagery_store
    from lulc_core.inference import Predictor
    from serving import observability as obs
    from serving.api import install_api
    from serving.service import LulcService

    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("SH_CLIENT_ID", "lulc-test-client")
    monkeypatch.setenv("SH_CLIENT_SECRET", "lulc-test-secret")
    bundle = ModelBundle.load(make_bundle(tmp_path / "bundle"))
    settings = ServingConfig(window=64, overlap=16, edge_buffer_m=0)
    body = {"area_coords": BBOX, "start_date": "2017-10-25", "end_date": "2017-11-04"}
    with SentinelHubStandIn() as sh:
        sh_cfg = SentinelHubConfig(base_url=sh.url, token_url=sh.token_url, max_retries=0, timeout_s=0.5)
        store = build_imagery_store(ImageryConfig(store="sentinelhub", sentinelhub=sh_cfg, bands=BANDS))
        service = LulcService(Predictor(bundle, store, None, settings), bundle, settings)
        app = FastAPI()
        install_api(app, SimpleNamespace(name="lulc", ready=True, service=service))
        client = TestClient(app, raise_server_exceptions=False)
        before = obs.UPSTREAM_ERRORS.labels(service="Sentinel Hub")._value.get()
        for fault, status, retry_after in [
            (Fault.http(503, retry_after="30000"), 503, "30"),  # Sentinel Hub's Retry-After is in ms
            (Fault.http(500), 502, None),
            (Fault.slow(2.0), 504, None),
        ]:
            sh.faults.clear()
            sh.faults.add(f"POST {PROCESS_PATH}", fault, times=None)
            r = client.post("/segment/", json=body)
            assert r.status_code == status, r.text
            assert r.headers.get("retry-after") == retry_after
            assert "Sentinel Hub" in r.json()["error"]
        assert obs.UPSTREAM_ERRORS.labels(service="Sentinel Hub")._value.get() == before + 3
        assert client.get("/health").json() == {"status": "ok"}


def test_model_source_is_a_path_or_a_registry_ref(tmp_path: Path) -> None:
    """`--model name@production` resolves through the configured registry (MLflow on SQLite) to a bundle dir."""
    from serving_helpers import write_run_config

    from lulc_core.config import load_run_config
    from lulc_core.errors import NotFoundError
    from lulc_core.model_source import resolve_source
    from lulc_core.registry import RegistrationInfo, build_registry

    bundle = make_bundle(tmp_path / "bundle")
    cfg = load_run_config(write_run_config(tmp_path / "run.yaml", tmp_path / "work"))
    path, used = resolve_source(bundle, cfg)
    assert path == bundle and used is cfg
    registry = build_registry(cfg.registry, cfg.work_dir)
    ref = registry.register(bundle, RegistrationInfo(description="serving test"))
    registry.promote(ref, "production")
    path, _ = resolve_source(f"{cfg.registry.model_name}@production", cfg)
    assert (path / "lulc.json").is_file() and (path / "model" / "config.json").is_file()
    with pytest.raises(NotFoundError, match="neither a bundle directory nor a registry ref"):
        resolve_source(tmp_path / "missing", cfg)


def test_lulc_serve_fails_fast_with_clear_errors(tmp_path: Path) -> None:
    from serving_helpers import write_run_config
    from typer.testing import CliRunner

    from lulc.cli import app
    from lulc_core.errors import ConfigError, NotFoundError

    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path), "--config", str(tmp_path / "none.yaml")])
    assert isinstance(result.exception, ConfigError) and result.exception.field == "config"
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work")
    result = CliRunner().invoke(app, ["serve", "--model", str(tmp_path / "nope"), "--config", str(config)])
    assert isinstance(result.exception, NotFoundError) and "registry ref" in str(result.exception)


def test_deadline_is_504_and_the_slot_is_held_until_the_work_ends(tmp_path: Path) -> None:
    import asyncio
    import time

    from lulc_core.bundle import ModelBundle
    from lulc_core.config import ServingConfig
    from lulc_core.imagery.local import LocalGeoTiffStore
    from lulc_core.inference import Predictor
    from serving.service import LulcService

    bundle = ModelBundle.load(make_bundle(tmp_path / "bundle"))
    settings = ServingConfig(window=64, overlap=16)
    predictor = Predictor(bundle, LocalGeoTiffStore(tmp_path), None, settings)
    service = LulcService(predictor, bundle, settings, max_concurrency=1, timeout_s=0.2)

    async def scenario() -> tuple[float, str]:
        with pytest.raises(UpstreamError) as info:
            await service._run(lambda: time.sleep(0.6))
        assert info.value.status_code == 504
        started = time.monotonic()
        result = await service._run(lambda: "next")  # waits for the slow worker's slot
        return time.monotonic() - started, result

    waited, result = asyncio.run(scenario())
    assert result == "next" and waited >= 0.3


def test_kserve_bounds_match_the_pin_and_the_server_members_exist() -> None:
    """serving/server.py uses non-public ModelServer/RESTServer members: the installed kserve has each of them, the
    version range it checks is the one pyproject.toml pins, and versions outside it are refused in one line."""
    import re
    import tomllib

    import kserve
    from kserve.protocol.rest.server import RESTServer

    from serving.server import KSERVE_RANGE, PRIVATE_MEMBERS, check_kserve

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    pins = [d for group in [deps["dependencies"], *deps["optional-dependencies"].values()] for d in group]
    (pin,) = {d for d in pins if re.match(r"kserve(?![-\w])", d)}
    (low, high) = KSERVE_RANGE
    assert pin.replace(" ", "") == f"kserve>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    check_kserve()  # the installed one
    for inside in (f"{low[0]}.{low[1]}.0", f"{high[0]}.{high[1] - 1}.9"):
        check_kserve(inside)
    for outside in ("0.17.1", "0.14.0", f"{high[0]}.{high[1]}.0"):
        with pytest.raises(RuntimeError, match=rf"kserve {re.escape(outside)} is not supported"):
            check_kserve(outside)
    server = kserve.ModelServer(enable_grpc=False, workers=1)
    for name in PRIVATE_MEMBERS["ModelServer"]:
        assert hasattr(server, name), f"kserve.ModelServer.{name} is gone"
    for name in PRIVATE_MEMBERS["RESTServer"]:
        assert callable(getattr(RESTServer, name, None)), f"RESTServer.{name} is gone"


def test_in_flight_gauge_counts_running_predictions() -> None:
    """The gauge KEDA scales on (manifests/overlays/keda) is up while a prediction runs, back down after it."""
    import asyncio

    from prometheus_client import REGISTRY

    from serving.service import LulcService

    def gauge() -> float:
        return REGISTRY.get_sample_value("lulc_predictions_in_flight") or 0.0

    service = LulcService(predictor=None, bundle=None)  # type: ignore[arg-type]
    before = gauge()
    seen = asyncio.run(service._run(gauge))
    assert seen == before + 1 and gauge() == before
