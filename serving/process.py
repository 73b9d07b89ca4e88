"""Run the predictor container's entry point (`python -m serving`) as a local subprocess on 127.0.0.1.

Used by `lulc demo` and the benchmarks: one way to start the server, wait until the model is loaded, and stop it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import requests

from lulc_core.errors import LulcError, UpstreamError


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_server(
    model: Path | str,
    config: Path,
    *,
    log_path: Path | None = None,
    extra: Sequence[str] = (),
    model_name: str = "lulc",
    ready_timeout_s: float = 300.0,
    cwd: Path | None = None,
    cli: bool = False,
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[str, int]]:
    """Start `python -m serving` with `model` and `config`; yield (base URL, pid) once the model is loaded.

    `cli=True` starts it the way a user does, as `lulc serve` (same server, the CLI's options). The server's output
    goes to `log_path` (a temporary file when None), never to an unread pipe that could fill up and block it. `env`:
    variables added to this process's environment for the server. SIGTERM on exit (graceful shutdown), SIGKILL if
    it does not stop within 60 s.
    """
    port = free_port()
    entry = [str(Path(sys.executable).with_name("lulc")), "serve"] if cli else [sys.executable, "-m", "serving"]
    name_flag = "--name" if cli else "--model-name"
    cmd = [*entry, "--model", str(model), "--config", str(config), name_flag, model_name, "--port", str(port), *extra]
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lulc-serve-"))) / "server.log"
        with log_path.open("wb") as out:
            environ = None if env is None else os.environ | dict(env)
            proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=environ)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while True:
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{url}/v1/models/{model_name}", timeout=5).status_code == 200:
                        break
                if proc.poll() is not None:
                    raise LulcError(f"the predictor exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise UpstreamError("predictor", f"not ready after {ready_timeout_s:.0f} s", status_code=504)
                time.sleep(0.3)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
