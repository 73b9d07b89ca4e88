"""Soak test (`make soak`, marker `soak`, not part of `make test`): the predictor under steady load on 127.0.0.1.

16 client threads (LULC_SOAK_CONCURRENCY) send small requests for 3 minutes (LULC_SOAK_SECONDS) after a 20 s
warm-up: areas of the bundled sample through /segment/ and V1 (idempotency-cache hits and misses: 12 thresholds,
shifted boxes, for a cache of 8), V2 image tensors of 15 x 32 x 32, label-set and health requests. Every request
must be answered 2xx (zero errors, no client timeout), the server must count exactly the requests sent, and its
resident memory may grow by less than 10 % over the measured period. Prints requests served, errors, latency and RSS.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_helpers import Predictor, run_config, server_errors, start_predictor
from serving_helpers import BANDS, BBOX, DATES

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("LULC_SOAK_SECONDS", "180"))
WARM_UP_S = float(os.environ.get("LULC_SOAK_WARMUP_SECONDS", "20"))
CONCURRENCY = int(os.environ.get("LULC_SOAK_CONCURRENCY", "16"))
MAX_RSS_GROWTH = 0.10
THRESHOLDS = [round(0.05 * i, 2) for i in range(12)]


def _request(rng: random.Random, image: list[float]) -> tuple[str, str, Any]:
    """One small request: (method, path, JSON body)."""
    kind = rng.choices(["segment", "v1", "v2-image", "describe", "health"], weights=[4, 2, 2, 1, 1])[0]
    if kind == "segment":
        dx = rng.choice([0.0, 0.001, 0.002])
        bbox = [BBOX[0] + dx, BBOX[1], BBOX[2] + dx, BBOX[3]]
        return "POST", "/segment/", {"area_coords": bbox, **DATES, "threshold": rng.choice(THRESHOLDS)}
    if kind == "v1":
        instance = {"area_coords": BBOX, **DATES, "threshold": rng.choice(THRESHOLDS)}
        return "POST", "/v1/models/lulc:predict", {"instances": [instance]}
    if kind == "v2-image":
        shape = [len(BANDS), 32, 32]
        return (
            "POST",
            "/v2/models/lulc/infer",
            {"inputs": [{"name": "image", "shape": shape, "datatype": "FP32", "data": image}]},
        )
    if kind == "describe":
        return "GET", "/segment/describe", None
    return "GET", "/health", None


class Load:
    """Client threads sending requests until `stop` is set; counts answers, errors and latencies."""

    def __init__(self, url: str, concurrency: int) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.statuses: Counter[str] = Counter()
        self.errors: list[str] = []
        self.latencies: list[float] = []
        image = np.random.default_rng(5).uniform(0, 3000, len(BANDS) * 32 * 32).round(1).tolist()
        self.threads = [
            threading.Thread(target=self._client, args=(random.Random(i), image), daemon=True)
            for i in range(concurrency)
        ]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(180)

    def _client(self, rng: random.Random, image: list[float]) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            method, path, body = _request(rng, image)
            started = time.monotonic()
            with self.lock:
                self.sent += 1
            try:
                r = session.request(method, self.url + path, json=body, timeout=120)
                ok = 200 <= r.status_code < 300
                detail = f"{method} {path}: {r.status_code} {r.text[:200]}"
            except requests.RequestException as exc:
                ok, detail = False, f"{method} {path}: {type(exc).__name__}: {exc}"
                r = None
            with self.lock:
                self.latencies.append(time.monotonic() - started)
                self.statuses[str(r.status_code) if r is not None else "no answer"] += 1
                if not ok:
                    self.errors.append(detail)


def _served_by_server(server: Predictor) -> float:
    """Requests the server counted (lulc_requests_total over all endpoints and statuses)."""
    total = 0.0
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("lulc_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def soak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    tmp = tmp_path_factory.mktemp("soak")
    with start_predictor(tmp, run_config(tmp)) as server:
        yield server


def test_soak(soak_server: Predictor, capsys: pytest.CaptureFixture[str]) -> None:
    server = soak_server
    counted_before = _served_by_server(server)
    rss: list[tuple[float, int]] = []
    with Load(server.url, CONCURRENCY) as load:
        time.sleep(WARM_UP_S)  # imports, allocator pools, the idempotency cache filling up
        started = time.monotonic()
        baseline = server.rss_bytes()
        while (elapsed := time.monotonic() - started) < SECONDS:
            time.sleep(min(5.0, SECONDS - elapsed))
            rss.append((time.monotonic() - started, server.rss_bytes()))
            assert server.process.poll() is None, "the predictor died"
    final = rss[-1][1]
    peak = max(v for _, v in rss)
    latencies = np.array(load.latencies)
    answered = sum(load.statuses.values())
    counted = _served_by_server(server) - counted_before - 1  # minus the /metrics request of this count
    report = {
        "seconds": round(WARM_UP_S + SECONDS),
        "concurrency": CONCURRENCY,
        "requests sent": load.sent,
        "requests answered": answered,
        "counted by the server": int(counted),
        "errors": len(load.errors),
        "statuses": dict(load.statuses),
        "requests/s": round(answered / (WARM_UP_S + SECONDS), 1),
        "latency p50/p99/max s": [round(float(np.percentile(latencies, q)), 3) for q in (50, 99, 100)],
        "RSS baseline/final/peak MB": [round(v / 2**20, 1) for v in (baseline, final, peak)],
        "RSS growth %": round(100 * (final - baseline) / baseline, 2),
    }
    with capsys.disabled():  # shown by `make soak` (pytest -q) too
        print("\nsoak:", "; ".join(f"{k} {v}" for k, v in report.items()))
    assert not load.errors, load.errors[:10]
    assert answered == load.sent  # every request got an answer
    assert counted == answered  # ... and the server saw each one once
    assert final < baseline * (1 + MAX_RSS_GROWTH), report
    assert not server_errors(server.log_text())
