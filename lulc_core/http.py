"""The one HTTP error policy of lulc, used by every remote source (Sentinel Hub, ohsome, ...).

A source wraps each request in `HttpPolicy.call(attempt, what=...)`. One attempt either returns or raises; the
policy then decides, the same way for every service:

- connection errors, timeouts, truncated bodies, unreadable responses (`CorruptResponseError`) and 5xx are
  retried with bounded exponential backoff and jitter;
- 429 waits for the server's `Retry-After` (capped at `max_retry_after_s`) and pauses the whole rate limiter, so
  every thread of the source backs off together;
- any other 4xx fails at once as `RequestRejectedError`, carrying the server's decoded message;
- after the last attempt an `UpstreamError` names what failed (504 for timeouts, 503 for 429/503, else 502).

Attempts report failures either as `requests` exceptions (found anywhere in the exception's cause/context chain,
so client libraries that wrap them are covered) or as an `AttemptError` raised by the source's adapter code.

`ResponseCache` stores raw responses on disk keyed by a hash of the request, writes atomically and detects corrupt
entries with a checksum; `HttpPolicy.fetch_cached` ties the two together: cache hit, else download + decode (a body
that cannot be decoded is retried like a transport error) and store.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, Field

from lulc_core.errors import UpstreamError
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryPolicy(BaseModel):
    """How often and how long to retry; one instance per remote source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_retries: int = Field(default=5, ge=0, description="Retries after the first attempt.")
    backoff_s: float = Field(default=1.0, ge=0, description="Wait before the first retry; doubles per attempt.")
    max_backoff_s: float = Field(default=60.0, ge=0, description="Longest backoff wait.")
    jitter: float = Field(default=0.25, ge=0, le=1, description="Random +- share of each backoff wait.")
    max_retry_after_s: float = Field(default=120.0, ge=0, description="Cap on a server's Retry-After.")
    retry_after_unit_s: float = Field(
        default=1.0, gt=0, description="Seconds per Retry-After unit (1 for RFC 9110; Sentinel Hub sends ms: 0.001)."
    )

    def backoff(self, retry_index: int, rng: random.Random) -> float:
        """Wait before retry number `retry_index` (0-based): base * 2^i, capped, with jitter."""
        base = min(self.max_backoff_s, self.backoff_s * (2**retry_index))
        return max(0.0, base * (1 + self.jitter * (2 * rng.random() - 1)))


# --- what one attempt can report --------------------------------------------------------------------------------


class AttemptError(Exception):
    """A failed attempt, classified. Adapters raise subclasses; `classify` maps `requests` exceptions to them."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class HttpStatusError(AttemptError):
    """The server answered with an error status (message decoded from its body)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=status, retry_after=retry_after)
        self.retryable = status == 429 or status >= 500

    def __str__(self) -> str:
        return f"HTTP {self.status}: {self.message}" if self.message else f"HTTP {self.status}"


class TransportError(AttemptError):
    """No usable response: connection refused/reset, timeout, body cut short."""

    retryable = True

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class CorruptResponseError(AttemptError):
    """A 2xx response whose body cannot be decoded (truncated tar, unreadable TIFF, broken JSON)."""

    retryable = True


class RequestRejectedError(UpstreamError):
    """The service refused the request (4xx other than 429): retrying would not help.

    Attributes:
        upstream_status: the HTTP status the service answered.
        server_message: the service's own explanation, decoded from the body.
    """

    def __init__(self, service: str, message: str, *, upstream_status: int, server_message: str) -> None:
        super().__init__(service, message, status_code=502)
        self.upstream_status = upstream_status
        self.server_message = server_message


def decode_error_message(response: requests.Response, limit: int = 500) -> str:
    """The server's explanation from an error body: JSON `message`/`error`/`error_description`, else the text."""
    text = response.text if response.content else ""
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:limit]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            body = error
        parts = [str(body[k]) for k in ("message", "error_description", "detail", "reason") if body.get(k)]
        if not parts and isinstance(error, str):
            parts = [error]
        if parts:
            return " — ".join(dict.fromkeys(parts))[:limit]
    return " ".join(text.split())[:limit]


def parse_retry_after(value: str | None, unit_s: float = 1.0) -> float | None:
    """Seconds to wait from a Retry-After header: a number of units, or an HTTP date."""
    if value is None or not str(value).strip():
        return None
    try:
        return max(0.0, float(value) * unit_s)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and every exception it wraps (cause, context, `request_exception` of sentinelhub-py)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        cur = todo.pop(0)
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        yield cur
        inner = getattr(cur, "request_exception", None)
        todo.extend([inner if isinstance(inner, BaseException) else None, cur.__cause__, cur.__context__])


def classify(exc: BaseException, retry_after_unit_s: float = 1.0) -> AttemptError | None:
    """The `AttemptError` an exception stands for, or None when it is not an HTTP failure (a bug: re-raised)."""
    for cur in _chain(exc):
        if isinstance(cur, AttemptError):
            return cur
        if isinstance(cur, requests.HTTPError) and cur.response is not None:
            resp = cur.response
            return HttpStatusError(
                resp.status_code,
                decode_error_message(resp),
                retry_after=parse_retry_after(resp.headers.get("Retry-After"), retry_after_unit_s),
            )
        if isinstance(cur, requests.Timeout):
            return TransportError(f"timed out ({type(cur).__name__})", timeout=True)
        if isinstance(cur, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
            return TransportError(f"response body cut short ({type(cur).__name__})")
        if isinstance(cur, requests.ConnectionError):
            return TransportError(f"connection failed ({type(cur).__name__}: {_first_line(cur)})")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def check_response(response: requests.Response, retry_after_unit_s: float = 1.0) -> requests.Response:
    """Raise `HttpStatusError` (with the decoded server message and Retry-After) for a 4xx/5xx response."""
    if response.status_code >= 400:
        raise HttpStatusError(
            response.status_code,
            decode_error_message(response),
            retry_after=parse_retry_after(response.headers.get("Retry-After"), retry_after_unit_s),
        )
    return response


# --- rate limiting --------------------------------------------------------------------------------------------


class RateLimiter:
    """Bounds the requests of one source across all its threads.

    At most `max_in_flight` requests run at once and starts are spaced `1 / per_second` apart; `pause(s)` (a 429)
    holds every new start for `s` seconds.
    """

    def __init__(self, per_second: float | None = None, max_in_flight: int | None = None) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self._slots = threading.BoundedSemaphore(max_in_flight) if max_in_flight else None
        self._lock = threading.Lock()
        self._next_start = time.monotonic()

    def pause(self, seconds: float) -> None:
        """No request starts for `seconds` from now (a 429 seen by any thread)."""
        with self._lock:
            self._next_start = max(self._next_start, time.monotonic() + seconds)

    def _wait_turn(self) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                wait = self._next_start - now
                if wait <= 0:
                    self._next_start = now + self.interval
                    return
            time.sleep(min(wait, 0.5))

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one request slot while the block runs."""
        if self._slots is not None:
            self._slots.acquire()
        try:
            self._wait_turn()
            yield
        finally:
            if self._slots is not None:
                self._slots.release()


# --- the response cache ---------------------------------------------------------------------------------------


def request_key(*parts: Any) -> str:
    """A stable hash of a request description (JSON-serialisable parts, dict keys sorted)."""
    payload = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class ResponseCache:
    """Raw responses on disk, one file per request hash, with a checksum sidecar.

    `<key>.bin` is written first, then `<key>.json` (size, sha256, request description) — both atomically, so an
    entry without its sidecar is an interrupted write. `get` drops entries whose size or checksum do not match.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _paths(self, key: str) -> tuple[Path, Path]:
        base = self.directory / key[:2]
        return base / f"{key}.bin", base / f"{key}.json"

    def get(self, key: str) -> bytes | None:
        """The cached body, or None (missing, incomplete or corrupt — a corrupt entry is removed)."""
        data_path, meta_path = self._paths(key)
        if not data_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            data = data_path.read_bytes()
        except (OSError, ValueError):
            self.invalidate(key, "unreadable or incomplete entry")
            return None
        if len(data) != meta.get("size") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            self.invalidate(key, f"checksum mismatch ({len(data)} bytes, expected {meta.get('size')})")
            return None
        return data

    def meta(self, key: str) -> dict[str, Any]:
        """The sidecar of an entry ({} when missing)."""
        try:
            return dict(json.loads(self._paths(key)[1].read_text()))
        except (OSError, ValueError):
            return {}

    def put(self, key: str, data: bytes, info: Mapping[str, Any] | None = None) -> None:
        """Store `data` under `key` atomically."""
        data_path, meta_path = self._paths(key)
        with atomic_path(data_path) as tmp:
            tmp.write_bytes(data)
        meta = {
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "stored": datetime.now(UTC).isoformat(),
            **(info or {}),
        }
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta, sort_keys=True, default=str))

    def invalidate(self, key: str, reason: str = "") -> None:
        """Remove an entry (logged when a reason is given)."""
        if reason:
            log.warning("cache entry %s in %s removed: %s", key[:12], self.directory, reason)
        for p in self._paths(key):
            p.unlink(missing_ok=True)


# --- the policy -----------------------------------------------------------------------------------------------


@dataclass
class HttpStats:
    """Counters of one policy (thread-safe through the policy's lock)."""

    attempts: int = 0
    retries: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    corrupt_cache_entries: int = 0
    failures: dict[str, int] = field(default_factory=dict)


class HttpPolicy:
    """Retries, rate limit and response cache for one remote service.

    Args:
        service: service name used in errors and logs, e.g. "Sentinel Hub".
        retry: the retry/backoff settings.
        limiter: shared rate limiter (None: unlimited).
        sleep: the sleep function (tests may pass a recorder).
        seed: seed of the jitter.
    """

    def __init__(
        self,
        service: str,
        retry: RetryPolicy | None = None,
        limiter: RateLimiter | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        self.service = service
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter()
        self.sleep = sleep
        self.stats = HttpStats()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)

    def call(self, attempt: Callable[[], T], *, what: str) -> T:
        """Run `attempt` until it succeeds, a non-retryable error occurs or the retries are used up.

        Raises:
            RequestRejectedError: the service refused the request (4xx other than 429).
            UpstreamError: still failing after the last retry (504 timeout, 503 throttled/unavailable, else 502).
        """
        total = self.retry.max_retries + 1
        last: AttemptError | None = None
        last_exc: BaseException | None = None
        for index in range(total):
            try:
                with self.limiter.slot():
                    self._count("attempts")
                    return attempt()
            except Exception as exc:
                failure = classify(exc, self.retry.retry_after_unit_s)
                if failure is None:
                    raise
                with self._lock:
                    kind = f"HTTP {failure.status}" if failure.status else type(failure).__name__
                    self.stats.failures[kind] = self.stats.failures.get(kind, 0) + 1
                if not failure.retryable:
                    raise self._rejected(failure, what) from exc
                last, last_exc = failure, exc
                if index + 1 >= total:
                    break
                with self._lock:
                    wait = self.retry.backoff(index, self._rng)
                    self.stats.retries += 1
                if failure.status == 429:
                    server_wait = failure.retry_after if failure.retry_after is not None else wait
                    wait = min(max(server_wait, 0.0), self.retry.max_retry_after_s)
                    self.limiter.pause(wait)
                log.warning(
                    "%s: %s failed (%s); retry %d/%d in %.2fs",
                    self.service,
                    what,
                    failure,
                    index + 1,
                    self.retry.max_retries,
                    wait,
                )
                self.sleep(wait)
        assert last is not None
        raise self._exhausted(last, what, total) from last_exc

    def _rejected(self, failure: AttemptError, what: str) -> RequestRejectedError:
        status = failure.status or 400
        hint = ""
        if status in (401, 403):
            hint = " — check the credentials (client id/secret) and their permissions"
        return RequestRejectedError(
            self.service,
            f"{what} was rejected with HTTP {status}: {failure.message or 'no message'}{hint}",
            upstream_status=status,
            server_message=failure.message,
        )

    def _exhausted(self, failure: AttemptError, what: str, attempts: int) -> UpstreamError:
        if isinstance(failure, TransportError) and failure.timeout:
            status = 504
        elif failure.status in (429, 503):
            status = 503
        else:
            status = 502
        return UpstreamError(
            self.service,
            f"{what} failed after {attempts} attempt(s): {failure}",
            retry_after=failure.retry_after,
            status_code=status,
        )

    def fetch_cached(
        self,
        cache: ResponseCache | None,
        key: str,
        download: Callable[[], bytes],
        decode: Callable[[bytes], T],
        *,
        what: str,
        info: Mapping[str, Any] | None = None,
    ) -> T:
        """A decoded response from `cache` under `key`, else downloaded (retried by the policy) and stored.

        `decode` must raise `CorruptResponseError` for a body it cannot read: a corrupt cache entry is then
        removed and fetched again, and a corrupt download is retried like a transport error.
        """
        if cache is not None:
            data = cache.get(key)
            if data is not None:
                try:
                    value = decode(data)
                except CorruptResponseError as exc:
                    self._count("corrupt_cache_entries")
                    cache.invalidate(key, f"cannot decode: {exc}")
                else:
                    self._count("cache_hits")
                    return value
            self._count("cache_misses")

        def attempt() -> tuple[bytes, T]:
            body = download()
            return body, decode(body)

        body, value = self.call(attempt, what=what)
        if cache is not None:
            cache.put(key, body, info)
        return value
