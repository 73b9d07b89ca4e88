"""The served default on onnxruntime, over HTTP: `python -m serving` with the bundle's model.onnx (as registration
exports it) on two threads predicts batches in parallel; its classes are those of one thread, batch by batch."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
from serving_helpers import BBOX, DATES, make_bundle, write_run_config

from lulc_core.bundle import ModelBundle, export_onnx
from lulc_core.config import load_run_config
from lulc_core.geo import BBox
from lulc_core.imagery import build_imagery_store
from lulc_core.inference import Predictor
from serving.process import local_server


def test_segment_on_parallel_onnx_batches_equals_one_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_single_thread: None
) -> None:
    bundle_dir = export_onnx(make_bundle(tmp_path / "bundle")).parent
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work", batch_size=1)  # 4 windows of 64 px
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the server: two torch threads -> two one-thread batches at once
    with local_server(bundle_dir, config, log_path=tmp_path / "server.log") as (url, _pid):
        response = requests.post(url + "/segment/", json={"area_coords": BBOX, **DATES, "grid": "utm"}, timeout=120)
    assert response.status_code == 200, response.text[:300]
    with rasterio.io.MemoryFile(response.content) as mem, mem.open() as src:
        served, tags = src.read(1), src.tags()
    assert tags.get("ENGINE") == "onnxruntime:model.onnx"
    assert "(threads per call: 1)" in (tmp_path / "server.log").read_text()  # two batches at once, not one on two

    cfg = load_run_config(config)  # this process: one thread, one batch at a time
    bundle = ModelBundle.load(bundle_dir)
    predictor = Predictor(bundle, build_imagery_store(cfg.imagery), None, cfg.serving)
    start, end = (date.fromisoformat(DATES[k]) for k in ("start_date", "end_date"))
    expected = predictor.predict(BBox.from_sequence(BBOX), start, end).classes.data[0]
    assert served.shape == expected.shape and len(np.unique(expected)) > 1
    np.testing.assert_array_equal(served, expected)
