"""lulc_core.http — the one HTTP error policy — against a stand-in server on 127.0.0.1 with injected faults."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests
from standins import Fault, Recorded, Reply, StandIn

from lulc_core.errors import UpstreamError
from lulc_core.http import (
    CorruptResponseError,
    HttpPolicy,
    RateLimiter,
    RequestRejectedError,
    ResponseCache,
    RetryPolicy,
    TransportError,
    check_response,
    classify,
    decode_error_message,
    parse_retry_after,
    request_key,
)

ROUTE = "GET /thing"


class EchoStandIn(StandIn):
    """Answers GET /thing with a small JSON document."""

    name = "echo-standin"

    def route(self, req: Recorded, fault: Fault | None) -> Reply:
        if req.path != "/thing":
            return self.error_reply(404, "no such thing", req.path)
        return Reply(200, json.dumps({"thing": "ok", "padding": "x" * 2000}).encode())


@pytest.fixture
def echo() -> Iterator[EchoStandIn]:
    with EchoStandIn() as server:
        yield server  # type: ignore[misc]


class Sleeps:
    """Records the waits the policy asks for instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def policy(retries: int = 3, sleeps: Sleeps | None = None, **kw: float) -> HttpPolicy:
    retry = RetryPolicy(max_retries=retries, backoff_s=0.1, jitter=0.0, **kw)
    return HttpPolicy("Thing API", retry, sleep=sleeps or Sleeps())


def get(server: StandIn, timeout: float = 2.0) -> dict[str, str]:
    response = requests.get(server.url + "/thing", timeout=timeout)
    check_response(response)
    return dict(response.json())


def test_5xx_are_retried_with_exponential_backoff(echo: EchoStandIn):
    sleeps = Sleeps()
    for status in (500, 502, 503):
        echo.faults.add(ROUTE, Fault.http(status))
    assert get_with(policy(3, sleeps), echo)["thing"] == "ok"
    assert echo.count(ROUTE) == 4
    assert sleeps.waits == pytest.approx([0.1, 0.2, 0.4])


def get_with(p: HttpPolicy, server: StandIn, timeout: float = 2.0) -> dict[str, str]:
    return p.call(lambda: get(server, timeout), what="GET /thing")


def test_429_waits_for_retry_after_and_is_capped(echo: EchoStandIn):
    sleeps = Sleeps()
    echo.faults.add(ROUTE, Fault.http(429, retry_after="0.3"))
    echo.faults.add(ROUTE, Fault.http(429, retry_after="3600"))
    start = time.monotonic()
    assert get_with(policy(3, sleeps, max_retry_after_s=0.5), echo)["thing"] == "ok"
    assert sleeps.waits == [0.3, 0.5]  # the server's wait, then the cap — not the backoff
    assert time.monotonic() - start >= 0.7  # the shared rate limiter held every start meanwhile


def test_429_retry_after_as_http_date_and_in_milliseconds():
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after(later) <= 30  # type: ignore[operator]
    assert parse_retry_after("1500", unit_s=0.001) == pytest.approx(1.5)
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_client_errors_fail_fast_with_the_server_message(echo: EchoStandIn):
    echo.faults.add(ROUTE, Fault.http(400, message="Parameter output.width must be between 1 and 2500."))
    with pytest.raises(RequestRejectedError) as err:
        get_with(policy(5), echo)
    assert echo.count(ROUTE) == 1
    assert err.value.upstream_status == 400
    assert "output.width must be between 1 and 2500" in str(err.value)
    assert "Thing API" in str(err.value) and "GET /thing" in str(err.value)


def test_401_names_the_credentials(echo: EchoStandIn):
    echo.faults.add(ROUTE, Fault.http(401, message="Invalid client credentials"))
    with pytest.raises(RequestRejectedError, match="credentials"):
        get_with(policy(2), echo)


@pytest.mark.parametrize(
    ("fault", "status", "kind"),
    [(Fault.http(503, retry_after="7"), 503, "HTTP 503"), (Fault.http(500), 502, "HTTP 500")],
)
def test_last_attempt_raises_upstream_error(echo: EchoStandIn, fault: Fault, status: int, kind: str):
    echo.faults.add(ROUTE, fault, times=None)
    p = policy(2)
    with pytest.raises(UpstreamError) as err:
        get_with(p, echo)
    assert echo.count(ROUTE) == 3
    assert err.value.status_code == status
    assert "failed after 3 attempt(s)" in str(err.value)
    assert p.stats.failures == {kind: 3} and p.stats.retries == 2
    if status == 503:
        assert err.value.retry_after == 7.0


def test_timeouts_are_retried_then_reported_as_504(echo: EchoStandIn):
    echo.faults.add(ROUTE, Fault.slow(2.0))
    assert get_with(policy(2), echo, timeout=0.5)["thing"] == "ok"
    echo.faults.add(ROUTE, Fault.slow(2.0), times=None)
    with pytest.raises(UpstreamError) as err:
        get_with(policy(1), echo, timeout=0.5)
    assert err.value.status_code == 504 and "timed out" in str(err.value)


@pytest.mark.parametrize("fault", [Fault.truncate(), Fault.reset()])
def test_cut_bodies_and_dropped_connections_are_retried(echo: EchoStandIn, fault: Fault):
    echo.faults.add(ROUTE, fault, times=2)
    assert get_with(policy(3), echo)["thing"] == "ok"
    assert echo.count(ROUTE) == 3


def test_non_http_errors_are_not_retried(echo: EchoStandIn):
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        policy(3).call(attempt, what="x")
    assert calls == [1]


def test_classify_finds_requests_errors_wrapped_by_client_libraries():
    class LibraryError(Exception):
        pass

    try:
        try:
            raise requests.ReadTimeout("read timed out")
        except requests.RequestException as inner:
            raise LibraryError("download failed") from inner
    except LibraryError as outer:
        failure = classify(outer)
    assert isinstance(failure, TransportError) and failure.timeout


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"error": {"status": 400, "reason": "Bad Request", "message": "Invalid bbox", "code": "X"}}', "Invalid bbox"),
        ('{"error": "unauthorized_client", "error_description": "Invalid client secret"}', "Invalid client secret"),
        (
            '{"timestamp": "t", "status": 413, "message": "The given query is too large"}',
            "The given query is too large",
        ),
        ("<html>Bad gateway</html>", "<html>Bad gateway</html>"),
    ],
)
def test_decode_error_message(body: str, expected: str):
    response = requests.Response()
    response._content = body.encode()
    response.status_code = 400
    assert expected in decode_error_message(response)


# --- cache ------------------------------------------------------------------------------------------------------


def test_cache_round_trip_and_corrupt_entries_are_dropped(tmp_path: Path):
    cache = ResponseCache(tmp_path)
    key = request_key("svc", {"b": 2, "a": 1})
    assert key == request_key("svc", {"a": 1, "b": 2})  # order-independent
    assert cache.get(key) is None
    cache.put(key, b"payload" * 100, {"tile": "t1"})
    assert cache.get(key) == b"payload" * 100 and cache.meta(key)["tile"] == "t1"
    data_file = next(tmp_path.rglob("*.bin"))
    data_file.write_bytes(data_file.read_bytes()[:50])  # truncated on disk
    assert cache.get(key) is None
    assert not list(tmp_path.rglob(f"{key}*"))  # removed
    cache.put(key, b"abc")
    next(tmp_path.rglob("*.json")).unlink()  # an interrupted write: data without its sidecar
    assert cache.get(key) is None
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.bin"))


def test_fetch_cached_hits_refetches_corrupt_entries_and_retries_corrupt_downloads(tmp_path: Path):
    cache = ResponseCache(tmp_path)
    bodies = [b"broken", b"good-1", b"good-2"]
    downloads: list[bytes] = []

    def download() -> bytes:
        downloads.append(bodies[len(downloads)])
        return downloads[-1]

    def decode(body: bytes) -> str:
        if not body.startswith(b"good"):
            raise CorruptResponseError("not good")
        return body.decode()

    p = policy(3)
    assert p.fetch_cached(cache, "k" * 64, download, decode, what="doc") == "good-1"  # broken body retried
    assert p.fetch_cached(cache, "k" * 64, download, decode, what="doc") == "good-1"  # cache hit
    assert len(downloads) == 2 and p.stats.cache_hits == 1
    data_file = next(tmp_path.rglob("*.bin"))
    data_file.write_bytes(b"bad-1!")  # same size, different bytes: checksum mismatch
    assert p.fetch_cached(cache, "k" * 64, download, decode, what="doc") == "good-2"
    assert len(downloads) == 3


# --- rate limiting ----------------------------------------------------------------------------------------------


def test_rate_limiter_bounds_in_flight_requests_and_start_rate(echo: EchoStandIn):
    """The limiter's guarantees, measured where it holds them (inside its slot), so load cannot break them.

    Never more than `max_in_flight` requests at once; the k-th start no earlier than (k-1)/`per_second` after the
    first could begin. A loaded machine only makes requests slower and sparser, never denser.
    """
    echo.latency_s = 0.2
    rate, slots, n = 20.0, 2, 6
    p = HttpPolicy("Thing API", RetryPolicy(max_retries=0), RateLimiter(per_second=rate, max_in_flight=slots))
    lock = threading.Lock()
    in_flight, peak, starts = 0, 0, []

    def attempt() -> dict[str, str]:
        nonlocal in_flight, peak
        with lock:
            starts.append(time.monotonic())
            in_flight += 1
            peak = max(peak, in_flight)
        try:
            return get(echo, timeout=30.0)  # generous: a loaded machine must not turn this into a timeout
        finally:
            with lock:
                in_flight -= 1

    threads = [threading.Thread(target=p.call, args=(attempt,), kwargs={"what": ROUTE}) for _ in range(n)]
    begin = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - begin
    assert echo.count(ROUTE) == n and len(starts) == n
    assert 1 <= peak <= slots
    for k, started in enumerate(sorted(starts)):
        assert started - begin >= k / rate - 1e-3, (k, started - begin)
    assert elapsed >= (n / slots) * echo.latency_s  # 6 requests of 0.2 s, at most two at a time


def test_rate_limiter_spacing_and_pause():
    limiter = RateLimiter(per_second=20)
    start = time.monotonic()
    for _ in range(5):
        with limiter.slot():
            pass
    assert time.monotonic() - start >= 0.19  # 4 intervals of 50 ms
    limiter.pause(0.3)
    start = time.monotonic()
    with limiter.slot():
        pass
    assert time.monotonic() - start >= 0.25
