"""Prometheus metrics, request ids and structured (JSON) logs of the predictor.

KServe's ModelServer already exposes `/metrics` (the default prometheus_client registry) with its own
pre/predict/post latency histograms; the `lulc_*` series below add requests by endpoint and status, request
latency, predicted pixels, upstream errors and cache hits. `RequestContextMiddleware` gives every request an id
(the client's `X-Request-ID` when it is sane, else a new one), echoes it in the response, puts it into every log
record of the request and writes one JSON access-log line per request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.exceptions import HTTPException

from lulc_core.logs import StderrHandler
from lulc_core.redaction import RedactingFilter

REQUESTS = Counter(
    "lulc_requests_total", "HTTP requests by endpoint, method and status.", ["endpoint", "method", "status"]
)
LATENCY = Histogram(
    "lulc_request_duration_seconds",
    "HTTP request latency by endpoint.",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
PIXELS = Counter("lulc_pixels_predicted_total", "Pixels predicted (cache hits excluded).")
UPSTREAM_ERRORS = Counter("lulc_upstream_errors_total", "Failures of imagery/OSM services.", ["service"])
IN_FLIGHT = Gauge(
    "lulc_predictions_in_flight",
    "Predictions running or waiting for a slot (KEDA scales on it: manifests/overlays/keda).",
)
CACHE_HITS = Counter("lulc_cache_hits_total", "Predictions answered from the idempotency cache.")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("lulc_request_id", default="-")
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("serving.access")


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", REQUEST_ID.get()),
            "message": record.getMessage(),
        }
        if isinstance(record.args, dict) and record.args.get("event"):
            entry.update(record.args)
        if record.exc_text:  # already formatted (and redacted) by a filter
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON logs with request ids for lulc's loggers (kserve and uvicorn keep their own configuration)."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    handler.addFilter(RedactingFilter())
    for name in ("serving", "lulc_core", "lulc"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False


def _endpoint(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", None) or "unmatched")


class BodyTooLarge(HTTPException):
    """The request body exceeds the limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit:,} bytes")


class RequestContextMiddleware:
    """ASGI middleware: request id in, out and in the logs; body size limit (413); access log; metrics."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"x-request-id"]
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        scope["headers"] = [*headers, (b"x-request-id", request_id.encode())]
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > limit:
                await _json_413(send_with_id, limit)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            endpoint = _endpoint(scope)
            REQUESTS.labels(endpoint=endpoint, method=scope["method"], status=str(status)).inc()
            LATENCY.labels(endpoint=endpoint).observe(seconds)
            access_log.info(
                "%(method)s %(path)s %(status)s %(duration_ms).1f ms",
                {
                    "event": "request",
                    "method": scope["method"],
                    "path": scope["path"],
                    "endpoint": endpoint,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                },
            )
            REQUEST_ID.reset(token)


async def _json_413(send: Any, limit: int) -> None:
    """Answer 413 without reading the body (its Content-Length is over the limit)."""
    body = json.dumps(
        {"error": f"request body larger than {limit:,} bytes", "field": "body", "fix": "send a smaller body"}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})
