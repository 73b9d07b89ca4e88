"""Bad-input catalogue of the predictor, through real HTTP: every case is a 4xx naming the field and the fix.

One `python -m serving` process on 127.0.0.1 (the serving tests' tiny bundle on the bundled sample, the default
32 MB body limit, `serving.max_pixels` 250,000 px). The catalogue covers the original REST API (/segment/,
/segment/preview, /uncertainty/), KServe V1 and V2: bounding boxes (out of range, inverted, zero area, across the
antimeridian, NaN/inf, strings, booleans), dates (malformed, reversed, future, before Sentinel-2), fusion modes,
thresholds, bodies (empty, not JSON, wrong content type, 50 MB, deeply nested, not UTF-8), V2 tensors (shape,
dtype, band count) and areas over the limit. Then the same catalogue concurrently, and the server still answers
good requests with zero 5xx. tests/test_serving.py holds the serving engineer's own bad-input cases; these are
other variants, on every endpoint.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_helpers import GOOD_BODY, Predictor, run_config, server_errors, start_predictor
from serving_helpers import BANDS, BBOX, DATES

SEG, PREVIEW, UNC = "/segment/", "/segment/preview", "/uncertainty/"
V1, V2 = "/v1/models/lulc:predict", "/v2/models/lulc/infer"
FUTURE = (date.today() + timedelta(days=2)).isoformat()
JSON = {"Content-Type": "application/json"}
MB50 = 50 * 1024 * 1024
DEEP = b"[" * 100_000 + b"]" * 100_000
CATEGORIES = {"bbox", "dates", "fusion", "threshold", "body", "tensor", "area-limit"}


@dataclass
class Case:
    """One bad request: where, what, the expected status and the field the answer must name."""

    category: str
    path: str
    status: int
    field: str
    body: Any = None  # JSON body
    data: bytes | None = None  # raw body (sent instead of `body`)
    headers: dict[str, str] = field(default_factory=dict)
    chunked: bool = False  # send `data` with chunked transfer encoding (no Content-Length)


def v1(**instance: Any) -> dict[str, Any]:
    return {"instances": [{"area_coords": BBOX, **DATES} | instance]}


def v2_area(data: list[float] | None = None, shape: list[int] | None = None, **params: Any) -> dict[str, Any]:
    area = {"name": "area_coords", "shape": shape or [4], "datatype": "FP64", "data": data or BBOX}
    return {"inputs": [area], "parameters": {**DATES} | params}


def v2_image(shape: list[int], datatype: str = "FP32", data: list[Any] | None = None) -> dict[str, Any]:
    count = int(np.prod(shape)) if data is None else len(data)
    return {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, "data": data or [100.0] * count}]}


def area(coords: Any, **extra: Any) -> dict[str, Any]:
    return {"area_coords": coords, **DATES} | extra


def raw(text: str) -> bytes:
    return text.encode()


CASES: dict[str, Case] = {
    # --- bounding boxes -------------------------------------------------------------------------------------------
    "bbox-lat-out-of-range": Case("bbox", PREVIEW, 422, "area_coords.south", area([10, 95, 11, 96])),
    "bbox-lon-out-of-range-v1": Case(
        "bbox", V1, 400, "instances[0].area_coords.west", v1(area_coords=[-200, 50, 9, 51])
    ),
    # the original's paths put swapped corners in order, as the original did (tests/test_compat_original.py)
    "bbox-inverted-lon-v1": Case("bbox", V1, 400, "instances[0].area_coords", v1(area_coords=[11, 50, 10, 51])),
    "bbox-inverted-lat-v2": Case("bbox", V2, 400, "area_coords", v2_area([10, 51, 11, 50])),
    "bbox-zero-width-v1": Case("bbox", V1, 400, "instances[0].area_coords", v1(area_coords=[10, 50, 10, 51])),
    "bbox-zero-height": Case("bbox", SEG, 422, "area_coords", area([10, 50, 11, 50])),
    "bbox-antimeridian-crossing-v1": Case(
        "bbox", V1, 400, "instances[0].area_coords", v1(area_coords=[179, -17, -179, -16])
    ),
    "bbox-antimeridian-crossing": Case("bbox", PREVIEW, 413, "bbox", area([179, -17, -179, -16])),  # 358 deg wide
    "bbox-antimeridian-beyond-180-v2": Case("bbox", V2, 400, "area_coords.east", v2_area([170, 50, 190, 51])),
    "bbox-nan-v2": Case(
        "bbox", V2, 400, "inputs.area_coords.west", data=raw(json.dumps(v2_area([float("nan"), 57.2, 9.85, 57.23])))
    ),
    "bbox-infinity": Case(
        "bbox", UNC, 422, "area_coords.east", data=raw('{"area_coords": [9.8, 57.2, Infinity, 57.3]}')
    ),
    "bbox-1e400": Case("bbox", PREVIEW, 422, "area_coords.north", data=raw('{"area_coords": [9.8, 57.2, 9.9, 1e400]}')),
    "bbox-strings-v1": Case("bbox", V1, 400, "instances[0].area_coords.0", v1(area_coords=["west", 57, 10, 58])),
    "bbox-booleans": Case("bbox", SEG, 422, "area_coords", area([True, 57.2, 9.85, 57.23])),
    "bbox-null": Case("bbox", SEG, 422, "area_coords", area(None)),
    "bbox-three-numbers-v2": Case("bbox", V2, 400, "inputs.area_coords.shape", v2_area([9.8, 57.2, 9.9], [3])),
    # --- dates ----------------------------------------------------------------------------------------------------
    "date-month-13": Case("dates", SEG, 422, "start_date", area(BBOX, start_date="2017-13-01")),
    "date-slashes-v1": Case("dates", V1, 400, "instances[0].start_date", v1(start_date="2017/10/25")),
    "date-integer": Case("dates", UNC, 422, "start_date", area(BBOX, start_date=20171025)),
    "date-word-v2": Case("dates", V2, 400, "parameters.end_date", v2_area(end_date="today")),
    "date-reversed-v2": Case("dates", V2, 400, "parameters.start_date", v2_area(start_date="2017-11-05")),
    "date-reversed-preview": Case("dates", PREVIEW, 422, "start_date", area(BBOX, start_date="2018-01-01")),
    "date-future-v1": Case("dates", V1, 400, "instances[0].end_date", v1(end_date=FUTURE)),
    "date-future-v2": Case("dates", V2, 400, "parameters.end_date", v2_area(start_date="2020-01-01", end_date=FUTURE)),
    "date-before-sentinel2": Case("dates", V2, 400, "parameters.start_date", v2_area(start_date="2015-06-22")),
    "date-before-sentinel2-unc": Case("dates", UNC, 422, "start_date", area(BBOX, start_date="1999-01-01")),
    # --- fusion mode ----------------------------------------------------------------------------------------------
    "fusion-wrong-case": Case("fusion", PREVIEW, 422, "fusion_mode", area(BBOX, fusion_mode="ONLY_MODEL")),
    "fusion-null": Case("fusion", SEG, 422, "fusion_mode", area(BBOX, fusion_mode=None)),
    "fusion-unknown-v1": Case("fusion", V1, 400, "instances[0].fusion_mode", v1(fusion_mode="osm")),
    # --- threshold ------------------------------------------------------------------------------------------------
    "threshold-above-1": Case("threshold", UNC, 422, "threshold", area(BBOX, threshold=1.0001)),
    "threshold-negative-v1": Case("threshold", V1, 400, "instances[0].threshold", v1(threshold=-1)),
    "threshold-word-v2": Case("threshold", V2, 400, "parameters.threshold", v2_area(threshold="high")),
    "threshold-nan": Case("threshold", SEG, 422, "threshold", data=raw(json.dumps(area(BBOX, threshold=float("nan"))))),
    "threshold-boolean": Case("threshold", PREVIEW, 422, "threshold", area(BBOX, threshold=True)),
    "threshold-image-v2": Case(
        "threshold", V2, 400, "parameters.threshold", v2_image([15, 2, 2]) | {"parameters": {"threshold": 3}}
    ),
    # --- bodies ---------------------------------------------------------------------------------------------------
    "body-empty-v2": Case("body", V2, 422, "body", data=b"", headers=JSON),
    "body-empty-uncertainty": Case("body", UNC, 422, "body", data=b"", headers=JSON),
    "body-not-json-v2": Case("body", V2, 422, "body", data=b"{'inputs': []}", headers=JSON),
    "body-not-json-preview": Case("body", PREVIEW, 422, "body", data=b"area_coords=1,2,3,4", headers=JSON),
    "body-not-json-v1": Case("body", V1, 400, "body", data=b"{instances: [1]}", headers=JSON),
    "body-json-array": Case("body", SEG, 422, "body", [BBOX]),
    "body-content-type-text-v2": Case(
        "body", V2, 400, "Content-Type", data=raw(json.dumps(v2_area())), headers={"Content-Type": "text/plain"}
    ),
    "body-content-type-form": Case(
        "body",
        UNC,
        422,
        "body",
        data=b"area_coords=1,2,3,4",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "body-content-type-xml-v1": Case(
        "body", V1, 400, "instances", data=b"<instances/>", headers={"Content-Type": "application/xml"}
    ),
    "body-50mb": Case("body", SEG, 413, "body", data=b" " * MB50, headers=JSON),
    "body-50mb-chunked-v1": Case("body", V1, 413, "body", data=b" " * MB50, headers=JSON, chunked=True),
    "body-50mb-v2": Case("body", V2, 413, "body", data=b"[" + b"0," * (MB50 // 2) + b"0]", headers=JSON),
    "body-deeply-nested-v2": Case("body", V2, 400, "body", data=DEEP, headers=JSON),
    "body-deeply-nested-field": Case("body", SEG, 400, "body", data=b'{"area_coords": ' + DEEP + b"}", headers=JSON),
    "body-not-utf8": Case("body", PREVIEW, 400, "body", data=b'{"area_coords": "\xff\xfe"}', headers=JSON),
    "body-unknown-field-v2": Case("body", V2, 400, "parameters.colour", v2_area(colour="red")),
    "body-too-many-instances-v1": Case("body", V1, 400, "instances", {"instances": [GOOD_BODY] * 9}),
    # --- V2 / V1 image tensors ------------------------------------------------------------------------------------
    "tensor-data-shape-mismatch": Case("tensor", V2, 400, "inputs.image", v2_image([15, 4, 4], data=[1.0] * 200)),
    "tensor-2d-shape": Case("tensor", V2, 400, "inputs.image", v2_image([15, 16])),
    "tensor-batch-of-two": Case("tensor", V2, 400, "inputs.image", v2_image([2, 15, 4, 4])),
    "tensor-dtype-bytes": Case("tensor", V2, 400, "inputs.image.datatype", v2_image([15, 2, 2], "BYTES")),
    "tensor-dtype-int64": Case("tensor", V2, 400, "inputs.image.datatype", v2_image([15, 2, 2], "INT64")),
    "tensor-one-band-short": Case("tensor", V2, 400, "inputs.image", v2_image([len(BANDS) - 1, 4, 4])),
    "tensor-zero-pixels": Case("tensor", V2, 400, "inputs.image", v2_image([15, 0, 4], data=[])),
    "tensor-nan-values": Case(
        "tensor", V2, 400, "inputs.image", data=raw(json.dumps(v2_image([15, 1, 1], data=[float("nan")] * 15)))
    ),
    "tensor-strings": Case("tensor", V2, 400, "inputs.image", v2_image([15, 1, 1], data=["a"] * 15)),
    "tensor-ragged-v1": Case("tensor", V1, 400, "instances[0].image", {"instances": [{"image": [[[1, 2], [3]]]}]}),
    "tensor-bad-crs-v1": Case(
        "tensor", V1, 400, "crs", {"instances": [{"image": np.zeros((15, 2, 2)).tolist(), "crs": "EPSG:99999"}]}
    ),
    # --- areas over the limit (serving.max_pixels = 250,000 px) -------------------------------------------------
    "area-over-limit-v1": Case("area-limit", V1, 413, "bbox", v1(area_coords=[9.0, 56.0, 10.0, 57.0])),
    "area-over-limit-v2": Case("area-limit", V2, 413, "bbox", v2_area([9.5, 57.0, 9.9, 57.3])),
    "area-over-limit-uncertainty": Case("area-limit", UNC, 413, "bbox", area([9.0, 56.0, 9.5, 56.5])),
    "area-whole-world": Case("area-limit", PREVIEW, 413, "bbox", area([-180, -90, 180, 90])),
}


def send(server: Predictor, case: Case) -> requests.Response:
    """The case's request, as a client would send it."""
    if case.data is None:
        return requests.post(server.url + case.path, json=case.body, headers=case.headers, timeout=60)
    data: Any = case.data
    if case.chunked:
        chunk = 1024 * 1024
        data = (case.data[i : i + chunk] for i in range(0, len(case.data), chunk))
    return requests.post(server.url + case.path, data=data, headers=case.headers or JSON, timeout=60)


def check(case: Case, r: requests.Response) -> None:
    """4xx as expected, a JSON answer naming the field and a fix."""
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:500]}"
    assert r.status_code == case.status, r.text[:500]
    answer = r.json()
    original = case.path in (SEG, PREVIEW, UNC)  # the original utility's paths also carry its `detail`
    assert {"error", "field", "fix"} <= set(answer) <= {"error", "field", "fix"} | ({"detail"} if original else set())
    assert case.field in answer["field"], answer
    assert answer["error"].strip() and len(answer["fix"]) >= 10, answer
    assert "Traceback" not in r.text and "Exception" not in r.text


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    tmp = tmp_path_factory.mktemp("hardening_api")
    with start_predictor(tmp, run_config(tmp)) as server:
        yield server


def test_catalogue_covers_every_category() -> None:
    assert len(CASES) >= 30
    assert {c.category for c in CASES.values()} == CATEGORIES
    counts = {cat: sum(c.category == cat for c in CASES.values()) for cat in CATEGORIES}
    assert min(counts.values()) >= 3, counts
    assert {c.path for c in CASES.values()} == {SEG, PREVIEW, UNC, V1, V2}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_a_4xx_naming_field_and_fix(api_server: Predictor, name: str) -> None:
    case = CASES[name]
    check(case, send(api_server, case))


def test_catalogue_concurrently_then_good_requests_and_zero_5xx(api_server: Predictor) -> None:
    """The whole catalogue again from 8 threads at once; afterwards good requests on every protocol succeed."""
    cases = [c for c in CASES.values() if len(c.data or b"") < 1024 * 1024]  # the 50 MB bodies ran above
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda c: (c, send(api_server, c)), cases))
    for case, r in answers:
        check(case, r)
    r = api_server.post(SEG, GOOD_BODY | {"threshold": 0.31})
    assert r.status_code == 200 and r.headers["content-type"] == "image/geotiff"
    r = api_server.post(V1, {"instances": [GOOD_BODY]})
    assert r.status_code == 200 and r.json()["predictions"][0]["crs"] == "EPSG:32632"
    image = np.random.default_rng(3).uniform(0, 3000, (len(BANDS), 16, 16)).astype(np.float32)
    body = {
        "inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32", "data": image.ravel().tolist()}]
    }
    r = api_server.post(V2, body)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [16, 16]
    metrics = api_server.get("/metrics").text
    served = [line for line in metrics.splitlines() if line.startswith("lulc_requests_total{")]
    assert served and not [line for line in served if 'status="5' in line], served
    assert sum(float(line.split()[-1]) for line in served if 'status="4' in line) >= 2 * len(cases)
    assert not server_errors(api_server.log_text())
