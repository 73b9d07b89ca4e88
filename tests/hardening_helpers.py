"""Helpers of the hardening tests: start `python -m serving` on 127.0.0.1 with a chosen run config, and read it.

The predictor is the same one tests/test_serving.py starts (a tiny random-init SegFormer-b0 bundle on the sample's
bands, `serving_helpers.write_run_config`), but each hardening module starts its own process so that it can choose
the data sources (stand-ins), deadlines and limits, and read that process's log and memory.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BBOX, DATES, REPO, free_port, make_bundle, write_run_config

GOOD_BODY = {"area_coords": BBOX, **DATES}
PY = str(Path(sys.executable))


@dataclass
class Predictor:
    """A running `python -m serving` process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def post(self, path: str, body: Any = None, timeout: float = 120, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=timeout, **kw)

    def get(self, path: str, timeout: float = 30, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout, **kw)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_bytes(self) -> int:
        import psutil

        return int(psutil.Process(self.process.pid).memory_info().rss)


def run_config(
    tmp: Path, *, imagery: Mapping[str, Any] | None = None, labels: Mapping[str, Any] | None = None, **serving: object
) -> Path:
    """The serving tests' run YAML with the imagery/labels sections updated (e.g. to point at stand-ins)."""
    path = write_run_config(tmp / "run.yaml", tmp / "work", **serving)
    cfg = yaml.safe_load(path.read_text())
    cfg["imagery"] |= dict(imagery or {})
    cfg["labels"] |= dict(labels or {})
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def start_predictor(
    tmp: Path, config: Path, *args: str, env: Mapping[str, str] | None = None, startup_s: float = 120
) -> Iterator[Predictor]:
    """Start the predictor on a free port of 127.0.0.1 with `config` and extra CLI `args`; kill it at the end."""
    bundle = tmp / "bundle"
    if not (bundle / "lulc.json").is_file():
        make_bundle(bundle)
    port = free_port()
    log = tmp / f"server-{port}.log"
    cmd = [PY, "-m", "serving", "--model", str(bundle), "--config", str(config), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", *args]
    environ = os.environ | {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"} | dict(env or {})
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=environ)
    server = Predictor(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + startup_s
    try:
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if server.get("/v2/health/ready", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the predictor did not start:\n{server.log_text()[-3000:]}")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def server_errors(log_text: str) -> list[str]:
    """Lines of a predictor log that show a server error: a 5xx answer of lulc's own making or a traceback."""
    bad = []
    for line in log_text.splitlines():
        if "Traceback" in line or '"status": 500' in line or " 500 Internal" in line:
            bad.append(line)
    return bad


class TcpSwitch:
    """A TCP forwarder on 127.0.0.1 in front of a stand-in that can be switched off like a crashed service.

    `down()` closes the listening port *and* every open connection (a stopped stand-in would keep serving its
    keep-alive connections); `up()` listens again on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> TcpSwitch:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Restore what `lulc.cli.main` changes in this process: logging handlers, signal handlers, sys.argv."""
    import logging
    import signal

    names = ("", "lulc", "lulc_core", "serving")
    loggers = {n: logging.getLogger(n) for n in names}
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n, lg in loggers.items()}
    signals = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = sys.argv
    for n in names[1:]:  # loggers configured by other tests write to streams pytest has closed since
        loggers[n].handlers, loggers[n].propagate = [], True
    try:
        yield
    finally:
        for n, (handlers, level, propagate) in saved.items():
            loggers[n].handlers, loggers[n].propagate = handlers, propagate
            loggers[n].setLevel(level)
        for s, handler in signals.items():
            signal.signal(s, handler)
        sys.argv = argv


def run_lulc(capsys: Any, *args: str) -> tuple[int, str]:
    """`lulc ARGS` through the real entry point `lulc.cli.main` in this process: (exit code, stderr)."""
    import pytest

    from lulc.cli import main

    capsys.readouterr()  # only what this command writes
    with process_state_kept():
        sys.argv = ["lulc", *args]
        with pytest.raises(SystemExit) as info:
            main()
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err
