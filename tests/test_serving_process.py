"""serving.process.local_server: the one way the demo and the benchmarks start `python -m serving`."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from serving_helpers import make_bundle, write_run_config

from lulc_core.errors import LulcError
from serving.process import local_server


def test_local_server_is_ready_with_the_model_and_stops(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work")
    log = tmp_path / "server.log"
    with local_server(bundle, config, log_path=log) as (url, pid):
        assert pid > 0
        ready = requests.get(f"{url}/v1/models/lulc", timeout=5)
        assert ready.status_code == 200 and ready.json()["ready"] is True
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=2)
    assert log.stat().st_size > 0, "the server's output goes to the log file"


def test_local_server_reports_a_server_that_cannot_start(tmp_path: Path) -> None:
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work")
    with (
        pytest.raises(LulcError, match=r"the predictor exited with 1") as info,
        local_server(tmp_path / "missing", config),
    ):
        pass
    assert "neither a bundle directory" in str(info.value), "the error carries the end of the server log"


def test_lulc_serve_without_config_binds_the_bundles_host_and_port(tmp_path: Path) -> None:
    """`lulc serve --model BUNDLE` (no --config, no --host/--port) serves on the bundle's serving.host/port."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    from lulc_core.bundle import ModelBundle
    from lulc_core.config import load_run_config
    from serving.process import free_port

    bundle = make_bundle(tmp_path / "bundle")
    port = free_port()
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work", host="127.0.0.1", port=port)
    meta = ModelBundle.read_metadata(bundle)
    meta.run_config = load_run_config(config).model_dump(mode="json")
    (bundle / "lulc.json").write_text(meta.model_dump_json(indent=2))
    assert yaml.safe_load(config.read_text())["serving"]["port"] == port != 8080
    config.unlink()  # nothing but the bundle says where to listen (and no conf/run.yaml in the cwd)
    lulc = str(Path(sys.executable).with_name("lulc"))
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [lulc, "serve", "--model", str(bundle)], cwd=tmp_path, stdout=log, stderr=log, env=os.environ
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/v1/models/lulc", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            text = (tmp_path / "server.log").read_text()
            assert proc.poll() is None and "serving ['lulc'] on http://127.0.0.1:8080" not in text, text[-3000:]
            assert time.monotonic() < deadline, "not ready on the bundle's port"
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    assert f"127.0.0.1:{port}" in (tmp_path / "server.log").read_text()
