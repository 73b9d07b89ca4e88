"""Stand-in servers for external services, on 127.0.0.1, speaking the real wire protocols.

`StandIn` is the shared machinery: a `ThreadingHTTPServer` on a free port in a background thread, a request log,
an in-flight counter (with its maximum, to check client concurrency limits) and a fault plan switchable per test:

    server.faults.add("POST /api/v1/process", Fault.http(429, retry_after="20"), times=2)
    server.faults.add("POST /v1/elements/geometry", Fault.slow(2.0))          # beyond the client timeout
    server.faults.add("POST /api/v1/process", Fault.truncate(), times=None)   # every request, until cleared

Fault kinds: `status` (an error answer in the service's own body format, optional Retry-After), `slow` (sleep,
then answer normally), `truncate` (announce the full Content-Length, send half the body, close), `corrupt` (a
well-formed response whose body is cut short, e.g. a truncated tar), `reset` (close without answering) and
`empty` (service-specific: an empty result).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlparse, urlsplit


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour."""

    kind: str
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    message: str | None = None

    @classmethod
    def http(cls, status: int, retry_after: str | None = None, message: str | None = None) -> Fault:
        return cls("status", status=status, retry_after=retry_after, message=message)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        return cls("slow", delay_s=delay_s)

    @classmethod
    def truncate(cls) -> Fault:
        return cls("truncate")

    @classmethod
    def corrupt(cls) -> Fault:
        return cls("corrupt")

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    @classmethod
    def empty(cls) -> Fault:
        return cls("empty")


# Faults the one HTTP error policy (lulc_core.http) must ride out for every service, by test id; a service's tests
# add its own (429 with its Retry-After unit, a corrupt body of its format). `slow` outlasts a 1.5 s client timeout.
RETRIED_FAULTS = {
    "500": Fault.http(500),
    "502": Fault.http(502),
    "503": Fault.http(503),
    "timeout": Fault.slow(4.0),
    "truncated-transfer": Fault.truncate(),
}


@dataclass
class _Planned:
    fault: Fault
    remaining: int | None  # None: forever


class FaultPlan:
    """Faults per route ("METHOD /path"), consumed in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plan: dict[str, list[_Planned]] = {}

    def add(self, route: str, fault: Fault, times: int | None = 1) -> None:
        """Inject `fault` into the next `times` requests of `route` (None: every request until `clear`)."""
        with self._lock:
            self._plan.setdefault(route, []).append(_Planned(fault, times))

    def clear(self) -> None:
        with self._lock:
            self._plan.clear()

    def take(self, route: str) -> Fault | None:
        with self._lock:
            queue = self._plan.get(route, [])
            while queue:
                head = queue[0]
                if head.remaining is None:
                    return head.fault
                if head.remaining > 0:
                    head.remaining -= 1
                    if head.remaining == 0:
                        queue.pop(0)
                    return head.fault
                queue.pop(0)
            return None


@dataclass
class Reply:
    """A normal answer of a stand-in route."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    """One request as the stand-in saw it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    fault: str | None
    at: float = field(default_factory=time.monotonic)
    """When the request arrived (time.monotonic(); rate tests compare start spacing)."""


class StandIn:
    """Base of the stand-in servers; subclasses implement `route` and `error_reply`."""

    name = "stand-in"

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.faults = FaultPlan()
        self.requests: list[Recorded] = []
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "stand-in not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> StandIn:
        """Serve on 127.0.0.1:`port` (0: a free port) in a background thread."""
        standin = self

        class Handler(_Handler):
            pass

        Handler.standin = standin
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_until_interrupted(self, port: int, lines: list[str]) -> None:
        """Run in the foreground (manual use of a stand-in): print `lines`, serve until Ctrl-C or SIGTERM."""
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.start(port)
        print(f"{self.name} on {self.url}")
        for line in lines:
            print(line.format(url=self.url))
        try:
            while not self._stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
            print(f"{self.name}: {dict(self.counts)}")

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.counts.clear()
            self.max_in_flight = 0

    def count(self, route: str) -> int:
        with self._lock:
            return self.counts[route]

    # --- to implement -----------------------------------------------------------------------------------------------

    def route(self, req: Recorded, fault: Fault | None) -> Reply:
        raise NotImplementedError

    def error_reply(self, status: int, message: str, path: str) -> Reply:
        body = json.dumps({"status": status, "message": message}).encode()
        return Reply(status, body)

    def corrupt_body(self, reply: Reply) -> Reply:
        """A well-formed answer with a body cut short (service-specific override)."""
        return Reply(reply.status, reply.body[: len(reply.body) // 2], reply.content_type, reply.headers)

    # --- helpers --------------------------------------------------------------------------------------------------

    def sleep(self, seconds: float) -> None:
        """Sleep, cut short when the stand-in stops."""
        self._stop.wait(seconds)

    @contextlib.contextmanager
    def _tracking(self, route: str) -> Iterator[None]:
        with self._lock:
            self.counts[route] += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1


class JsonApiStandIn:
    """Base of the stand-ins for JSON control-plane APIs (KFP, Kubernetes) whose tests inspect plain dicts.

    The server listens on a free 127.0.0.1 port from construction and serves in a background thread while the
    object is used as a context manager. Subclasses implement `handle`, which answers a status and a JSON body.
    """

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any] | str]:
        """The status and JSON body (or plain text, e.g. a pod log) answering one request (lower-case headers)."""
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                code, payload = standin.handle(self.command, url.path, parse_qs(url.query), headers, body)
                text = isinstance(payload, str)
                data = payload.encode() if text else json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _serve  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall per answer
    standin: StandIn

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:  # COG readers (GDAL /vsicurl/) ask for the size first
        self._dispatch()

    def _dispatch(self) -> None:
        s = self.standin
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = f"{self.command} {parts.path}"
        fault = s.faults.take(route)
        req = Recorded(
            self.command,
            parts.path,
            parts.query,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            fault.kind if fault else None,
        )
        with s._tracking(route):
            with s._lock:
                s.requests.append(req)
            if s.latency_s:
                s.sleep(s.latency_s)
            try:
                self._answer(s, req, fault)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                self.close_connection = True

    def _answer(self, s: StandIn, req: Recorded, fault: Fault | None) -> None:
        if fault is not None and fault.kind == "reset":
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None and fault.kind == "slow":
            s.sleep(fault.delay_s)
        if fault is not None and fault.kind == "status":
            message = fault.message or _DEFAULT_MESSAGES.get(fault.status, "Error")
            reply = s.error_reply(fault.status, message, req.path)
            if fault.retry_after is not None:
                reply.headers["Retry-After"] = fault.retry_after
        else:
            try:
                reply = s.route(req, fault)
            except Exception as exc:  # a stand-in bug must be visible, not a hang
                reply = s.error_reply(500, f"stand-in error: {type(exc).__name__}: {exc}", req.path)
            if fault is not None and fault.kind == "corrupt" and reply.status < 400:
                reply = s.corrupt_body(reply)
        body = reply.body
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", self.date_time_string(time.time()))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if fault is not None and fault.kind == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        if self.command != "HEAD":
            self.wfile.write(body)


_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
