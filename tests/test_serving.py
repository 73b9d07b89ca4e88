"""The predictor end to end: `python -m serving` (kserve.ModelServer) on 127.0.0.1, called over real HTTP.

One server for the module: a tiny random-init SegFormer-b0 bundle on the bundled sample imagery (patch
637U_59R_1_3, North Jutland). Covers KServe V1 and V2 (areas and raw tensors), the original REST API (GeoTIFF
georeference, colour map, clipping to the bbox, probabilities, uncertainty, previews), bad input (4xx naming the
field, never 5xx), body and area limits, the idempotency cache, metrics, request ids, `lulc predict --url` and
graceful shutdown (the last test).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BANDS, BBOX, DATES, REPO, free_port, make_bundle, write_run_config

from lulc_core.geo import BBox, tile_for_bbox
from lulc_core.labels import LabelSet

BODY = {"area_coords": BBOX, **DATES}
UTM = BODY | {"grid": "utm"}  # lulc's native grid (the default answer is the original's EPSG:4326 box)
LABELS = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")
GRID = tile_for_bbox(BBox.from_sequence(BBOX), 10.0, date(2017, 10, 25), date(2017, 11, 4))
PY = str(Path(sys.executable))


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    bundle: Path

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=body, timeout=120, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not (REPO / "data" / "sample" / "imagery").is_dir():
        pytest.fail("data/sample/imagery is missing (scripts/make_sample.py builds it)")
    tmp = tmp_path_factory.mktemp("serving")
    bundle = make_bundle(tmp / "bundle")
    config = write_run_config(tmp / "run.yaml", tmp / "work")
    port = free_port()
    log = tmp / "server.log"
    cmd = [PY, "-m", "serving", "--model", str(bundle), "--config", str(config), "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--max-body-mb", "1", "--grace-period-s", "5"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""}
        )
    srv = Server(f"http://127.0.0.1:{port}", proc, log, bundle)
    deadline = time.monotonic() + 90
    while True:
        try:
            if srv.get("/v2/health/ready").status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.3)
    yield srv
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def _tif(content: bytes) -> rasterio.io.MemoryFile:
    return rasterio.io.MemoryFile(content)


# --- readiness, docs --------------------------------------------------------------------------------------------


def test_ready_only_after_load_and_health(server: Server) -> None:
    assert server.get("/v1/models/lulc").json() == {"name": "lulc", "ready": True}
    assert server.get("/health").json() == {"status": "ok"}  # the original's answer
    assert server.get("/v2/models/lulc").status_code == 200
    assert server.get("/v1/models/nope").status_code == 404
    log = server.log.read_text()
    assert log.index("warm-up") < log.index("Uvicorn running")  # ready only after the warm-up pass


def test_openapi_documents_the_original_api(server: Server) -> None:
    spec = server.get("/openapi.json").json()
    for path in ("/segment/", "/segment/preview", "/segment/describe", "/uncertainty/", "/uncertainty/preview"):
        assert path in spec["paths"], path
    body_schema = spec["components"]["schemas"]["OriginalRequest"]
    assert {"area_coords", "start_date", "end_date", "threshold", "fusion_mode"} <= set(body_schema["properties"])
    assert "swagger" in server.get("/docs").text.lower()


def test_describe_is_the_label_set(server: Server) -> None:
    info = server.get("/segment/describe").json()
    assert [c["name"] for c in info["classes"]] == LABELS.names
    assert [c["color"] for c in info["classes"]] == LABELS.colors
    assert info["bands"] == BANDS and info["resolution_m"] == 10.0
    assert "harmonized_corine" in info["fusion_modes"]


# --- the original REST API --------------------------------------------------------------------------------------


def test_segment_geotiff_georeference_colormap_clipping_and_cache(server: Server) -> None:
    r = server.post("/segment/", UTM, headers={"X-Request-ID": "test-segment-1"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/geotiff"
    assert r.headers["x-request-id"] == "test-segment-1"
    assert r.headers["x-cache"] == "miss"
    with _tif(r.content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32632
        assert src.res == (10.0, 10.0)
        # clipped to the requested bbox (snapped outward to whole pixels), the edge buffer cropped off
        assert tuple(src.bounds) == pytest.approx(GRID.bounds)
        assert (src.width, src.height) == (GRID.width, GRID.height)
        assert src.descriptions == ("class",)
        data = src.read(1)
        assert data.max() <= 6
        cmap = src.colormap(1)
        for value, rgba in LABELS.colormap().items():
            assert cmap[value] == rgba
        assert src.overviews(1) == [] or src.is_tiled  # a COG
    again = server.post("/segment/", UTM)
    assert again.headers["x-cache"] == "hit" and again.content == r.content
    assert len(again.headers["x-request-id"]) == 32  # a fresh id when the client sends none
    assert "test-segment-1" in server.log.read_text()  # structured log lines carry the id


def test_segment_preview_png(server: Server) -> None:
    r = server.post("/segment/preview", BODY)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n" and len(r.content) > 5000


def test_uncertainty_geotiff_and_preview(server: Server) -> None:
    r = server.post("/uncertainty/", UTM)
    assert r.status_code == 200, r.text
    with _tif(r.content) as mem, mem.open() as src:
        assert src.count == 2 and src.descriptions == ("variance", "entropy")
        assert tuple(src.bounds) == pytest.approx(GRID.bounds)
        variance, entropy = src.read()
        assert np.nanmax(variance) <= 0.25 + 1e-6 and np.nanmin(variance) >= 0
        assert np.nanmin(entropy) >= 0 and np.nanmax(entropy) <= 1 + 1e-6 and np.nanmean(entropy) > 0
    png = server.post("/uncertainty/preview", BODY)
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"


@pytest.mark.parametrize("mode", ["favour_osm", "mean_mixin", "only_osm"])
def test_fusion_modes_with_the_sample_osm(server: Server, mode: str) -> None:
    r = server.post("/segment/", UTM | {"fusion_mode": mode, "threshold": 0.5})
    assert r.status_code == 200, r.text
    with _tif(r.content) as mem, mem.open() as src:
        assert (src.width, src.height) == (GRID.width, GRID.height)
        assert set(np.unique(src.read(1))) <= set(range(7))


# --- KServe V1 / V2 ---------------------------------------------------------------------------------------------


def test_v1_area_with_probabilities_and_geotiff(server: Server) -> None:
    instance = BODY | {"outputs": ["probabilities"]}
    r = server.post("/v1/models/lulc:predict", {"instances": [instance, BODY | {"format": "geotiff"}]})
    assert r.status_code == 200, r.text
    first, second = r.json()["predictions"]
    classes = np.asarray(first["classes"])
    assert classes.shape == (first["height"], first["width"]) == (GRID.height, GRID.width)
    assert first["crs"] == "EPSG:32632" and first["bounds"] == pytest.approx(list(GRID.bounds))
    assert first["class_names"] == LABELS.names and first["colors"] == LABELS.colors
    probs = np.asarray(first["probabilities"])
    assert probs.shape == (6, GRID.height, GRID.width)
    assert np.allclose(probs.sum(axis=0), 1, atol=0.01)
    winner = np.take_along_axis(probs, classes[None] - 1, axis=0)[0]
    assert np.all(winner >= probs.max(axis=0) - 2e-3)  # threshold 0: the class is the most probable one
    with _tif(base64.b64decode(second["classes_geotiff"])) as mem, mem.open() as src:
        assert np.array_equal(src.read(1), classes)


def test_v1_raw_image_tensor(server: Server) -> None:
    image = np.random.default_rng(1).uniform(0, 3000, (len(BANDS), 40, 48)).round(1)
    body = {"instances": [{"image": image.tolist(), "crs": "EPSG:32632", "transform": [10, 0, 5e5, 0, -10, 6e6]}]}
    r = server.post("/v1/models/lulc:predict", body)
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert np.asarray(p["classes"]).shape == (40, 48)
    assert p["transform"] == [10, 0, 5e5, 0, -10, 6e6] and p["crs"] == "EPSG:32632"


def test_v2_area_and_image(server: Server) -> None:
    body = {
        "inputs": [{"name": "area_coords", "shape": [1, 4], "datatype": "FP64", "data": BBOX}],
        "parameters": {**DATES, "outputs": "classes,uncertainty"},
    }
    r = server.post("/v2/models/lulc/infer", body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["classes"]["datatype"] == "UINT8" and out["classes"]["shape"] == [GRID.height, GRID.width]
    assert out["uncertainty"]["shape"] == [2, GRID.height, GRID.width]
    params = r.json()["parameters"]
    assert params["crs"] == "EPSG:32632" and json.loads(params["bounds"]) == pytest.approx(list(GRID.bounds))
    image = np.random.default_rng(2).uniform(0, 3000, (1, len(BANDS), 32, 32)).astype(np.float32)
    body = {
        "inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]
    }
    r = server.post("/v2/models/lulc/infer", body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["shape"] == [32, 32]


# --- bad input: 4xx naming the field, never 5xx -----------------------------------------------------------------

FUTURE = (date.today() + timedelta(days=3)).isoformat()
V2_AREA = {"name": "area_coords", "shape": [4], "datatype": "FP64", "data": BBOX}
BAD: list[tuple[str, Any, int, str]] = [
    ("/v1/models/lulc:predict", {"instances": [{"area_coords": [10, 50, 9, 51]}]}, 400, "area_coords"),
    ("/v1/models/lulc:predict", {"instances": [{"area_coords": [179, 50, -179, 51]}]}, 400, "antimeridian"),
    ("/segment/", {"area_coords": [10, 50, 10, 51]}, 422, "area_coords"),
    ("/segment/", {"area_coords": [-200, 50, 11, 51]}, 422, "area_coords"),
    ("/segment/", {"area_coords": [10, 50, 11]}, 422, "area_coords"),
    ("/segment/", {"area_coords": ["a", 50, 11, 51]}, 422, "area_coords"),
    ("/segment/", {"area_coords": "9,57,10,58"}, 422, "area_coords"),
    ("/segment/", {"start_date": "2020-01-01"}, 422, "area_coords"),
    ("/segment/", BODY | {"start_date": "yesterday"}, 422, "start_date"),
    ("/segment/", BODY | {"start_date": "2017-11-10"}, 422, "start_date"),
    ("/segment/", BODY | {"end_date": FUTURE}, 422, "end_date"),
    ("/segment/", BODY | {"start_date": "2014-01-01"}, 422, "start_date"),
    ("/segment/", BODY | {"fusion_mode": "best"}, 422, "fusion_mode"),
    ("/segment/", BODY | {"fusion_mode": "only_corine"}, 422, "fusion_mode"),
    ("/segment/", BODY | {"threshold": 1.5}, 422, "threshold"),
    ("/segment/", BODY | {"threshold": -0.1}, 422, "threshold"),
    ("/v1/models/lulc:predict", {"instances": [BODY | {"colour": "red"}]}, 400, "colour"),
    ("/segment/", {"area_coords": [9.0, 56.0, 10.0, 57.0], **DATES}, 413, "bbox"),
    ("/segment/", {"area_coords": [20.0, 10.0, 20.01, 10.01], **DATES}, 404, "imagery"),
    ("/uncertainty/", BODY | {"fusion_mode": "only_osm"}, 400, "uncertainty"),
    ("/v1/models/lulc:predict", {"instances": "x"}, 400, "instances"),
    ("/v1/models/lulc:predict", {"instances": []}, 400, "instances"),
    ("/v1/models/lulc:predict", {"instances": [BODY | {"outputs": ["rgb"]}]}, 400, "outputs"),
    ("/v1/models/lulc:predict", {"instances": [BODY | {"threshold": 7}]}, 400, "threshold"),
    ("/v1/models/lulc:predict", {"instances": [{"image": [[[1.0]]]}]}, 400, "image"),
    ("/v1/models/lulc:predict", {"instances": [{"image": [[1.0, 2.0]]}]}, 400, "image"),
    ("/v2/models/lulc/infer", {"inputs": [V2_AREA | {"shape": [5]}]}, 400, "area_coords"),
    ("/v2/models/lulc/infer", {"inputs": [V2_AREA | {"shape": [2, 2]}]}, 400, "area_coords"),
    ("/v2/models/lulc/infer", {"inputs": [V2_AREA | {"datatype": "BYTES"}]}, 400, "datatype"),
    ("/v2/models/lulc/infer", {"inputs": [V2_AREA | {"name": "bbox"}]}, 400, "inputs"),
    ("/v2/models/lulc/infer", {"inputs": [V2_AREA], "parameters": {"fusion_mode": "x"}}, 400, "fusion_mode"),
    (
        "/v2/models/lulc/infer",
        {"inputs": [{"name": "image", "shape": [3, 4, 4], "datatype": "FP32", "data": [0.0] * 48}]},
        400,
        "bands",
    ),
    ("/v2/models/lulc/infer", {"inputs": [{"name": "image", "shape": [15, 4, 4], "datatype": "FP32"}]}, 422, "data"),
]


@pytest.mark.parametrize(("path", "body", "status", "fragment"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_input_is_4xx_naming_the_field(server: Server, path: str, body: Any, status: int, fragment: str) -> None:
    r = server.post(path, body)
    assert r.status_code == status, r.text
    assert fragment in r.text


@pytest.mark.parametrize(
    ("data", "headers", "status"),
    [
        (b"", {"Content-Type": "application/json"}, 422),
        (b"{not json", {"Content-Type": "application/json"}, 422),
        (b'{"area_coords": [1,2,3,4]}', {"Content-Type": "text/plain"}, 422),
        (b"[" * 50_000 + b"]" * 50_000, {"Content-Type": "application/json"}, 400),
        (b"x" * (2 * 1024 * 1024), {"Content-Type": "application/json"}, 413),
        (b'{"area_coords": [NaN, 1, 2, 3]}', {"Content-Type": "application/json"}, 422),
    ],
    ids=["empty", "not-json", "text-plain", "deep-nesting", "2MB-body", "nan"],
)
@pytest.mark.parametrize("path", ["/segment/", "/v1/models/lulc:predict"])
def test_malformed_bodies_are_4xx(server: Server, path: str, data: bytes, headers: dict[str, str], status: int) -> None:
    r = requests.post(server.url + path, data=data, headers=headers, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    if path == "/segment/":
        assert r.status_code == status, r.text
        assert "error" in r.json()


def test_server_keeps_serving_and_metrics(server: Server) -> None:
    assert server.get("/health").status_code == 200
    assert server.post("/segment/", BODY).status_code == 200
    metrics = server.get("/metrics").text
    assert 'lulc_requests_total{endpoint="/segment/",method="POST",status="200"}' in metrics
    assert 'lulc_requests_total{endpoint="/segment/",method="POST",status="422"}' in metrics
    assert "lulc_request_duration_seconds_bucket" in metrics
    pixels = next(line for line in metrics.splitlines() if line.startswith("lulc_pixels_predicted_total "))
    assert float(pixels.split()[1]) >= GRID.width * GRID.height
    hits = next(line for line in metrics.splitlines() if line.startswith("lulc_cache_hits_total "))
    assert float(hits.split()[1]) >= 1
    assert 'lulc_upstream_errors_total{service="imagery"}' in metrics  # the 404 of an uncovered area
    assert " 500 " not in server.log.read_text()  # no request ended in a server error


def test_cli_predict_url(server: Server, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lulc.cli import app
    from lulc_core.errors import InputError

    out = tmp_path / "remote.tif"
    args = ["predict", "--url", server.url, "--bbox", ",".join(map(str, BBOX)), "--start", DATES["start_date"]]
    args += ["--end", DATES["end_date"], "-o", str(out), "--preview", str(tmp_path / "p.png"), "--uncertainty"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        assert tuple(src.bounds) == pytest.approx(GRID.bounds)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with rasterio.open(tmp_path / "remote.uncertainty.tif") as src:
        assert src.descriptions == ("variance", "entropy")
    bad = CliRunner().invoke(app, [*args[:4], "9,57,10,58", "--start", "2014-01-01", "-o", str(out)])
    assert isinstance(bad.exception, InputError) and bad.exception.field == "start_date"


def test_graceful_shutdown_on_sigterm(server: Server) -> None:
    """Last: SIGTERM lets the request in flight finish, then the process exits 0."""
    import threading

    results: list[int] = []
    body = BODY | {"threshold": 0.123}  # not cached
    worker = threading.Thread(target=lambda: results.append(server.post("/uncertainty/", body).status_code))
    worker.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    worker.join(60)
    assert server.process.wait(30) == 0
    assert results == [200]
