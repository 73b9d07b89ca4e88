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
