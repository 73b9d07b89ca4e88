"""Benchmark 5 — serving under load: `python -m serving` on 127.0.0.1 at concurrency 1, 4 and 16.

The server runs the serving tests' bundle (SegFormer-b0, random init, 15 bands; torch) over a local imagery store
(a synthetic 15-band GeoTIFF at 100 m around Jutland, warped per request to 10 m) with the default serving
settings (window 256, overlap 32, batch 4, 100 m edge buffer, one prediction at a time). A load generator of
`concurrency` threads, each with its own HTTP session, posts `/segment/` requests for random ~256 x 256 px areas
(2.56 km squares, never the same twice, so the idempotency cache never answers) for 60 s per level, and checks that
every answer is a 200 GeoTIFF. The server's RSS is sampled throughout; "start" is taken after a short warm-up
(the first requests allocate the per-block buffers once), "end" after the last level.

    .venv/bin/python -m benchmarks.serving_load            # 60 s per level
    .venv/bin/python -m benchmarks.serving_load --quick    # 10 s per level
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from pyproj import Transformer

from benchmarks.common import (
    REPO,
    Row,
    RssSampler,
    Section,
    bench_main,
    make_b0_bundle,
    progress,
    serving_process,
)

COMMAND = ".venv/bin/python -m benchmarks.serving_load"
LEVELS = (1, 4, 16)
AREA_M = 20_000.0  # requests fall in a 20 km square around the centre
EDGE_M = 2560.0  # 256 px at 10 m
BODY = {"start_date": "2023-06-01", "end_date": "2023-06-10"}


@dataclass
class Level:
    """What one concurrency level saw."""

    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def random_bbox(rng: random.Random, to_ll: Transformer) -> list[float]:
    """A lon/lat bbox of a 2.56 km UTM square somewhere in the area."""
    from benchmarks.serving_memory import CENTRE_UTM

    x0 = CENTRE_UTM[0] - AREA_M / 2 + rng.random() * (AREA_M - EDGE_M)
    y0 = CENTRE_UTM[1] - AREA_M / 2 + rng.random() * (AREA_M - EDGE_M)
    w, s = to_ll.transform(x0, y0)
    e, n = to_ll.transform(x0 + EDGE_M, y0 + EDGE_M)
    return [w, s, e, n]


def drive(url: str, concurrency: int, seconds: float, seed: int) -> Level:
    """`concurrency` client threads posting requests back to back for `seconds` (requests started before the
    deadline are awaited and counted)."""
    level = Level(concurrency)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)  # one per thread
        with requests.Session() as session:
            while time.monotonic() < deadline:
                body = {"area_coords": random_bbox(rng, to_ll), **BODY}
                t0 = time.monotonic()
                try:
                    response = session.post(url + "/segment/", json=body, timeout=600)
                    ok = response.status_code == 200 and response.content[:4] in (b"II*\x00", b"MM\x00*")
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except requests.RequestException as exc:
                    problem = f"{type(exc).__name__}: {exc}"
                elapsed = time.monotonic() - t0
                with lock:
                    if problem is None:
                        level.latencies.append(elapsed)
                    else:
                        level.errors.append(problem)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    level.seconds = time.monotonic() - started
    return level


def run(quick: bool = False) -> Section:
    """Start the server, warm up, drive each concurrency level, return the rows."""
    from serving_helpers import write_run_config

    from benchmarks.serving_memory import area_bbox, synthetic_imagery

    seconds = 10.0 if quick else 60.0
    section = Section("5. Serving under load", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lulc-bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "imagery").mkdir()
        synthetic_imagery(tmp / "imagery", area_bbox(int(AREA_M / 10) + 200)[1])  # the requests' area + 1 km
        bundle = make_b0_bundle(tmp / "bundle")
        config = write_run_config(
            tmp / "run.yaml", tmp / "work", window=256, overlap=32, batch_size=4, max_pixels=1_000_000,
            edge_buffer_m=100,
        )  # fmt: skip
        text = config.read_text().replace(str(REPO / "data" / "sample" / "imagery"), str(tmp / "imagery"))
        config.write_text(text)
        progress("serving load: starting python -m serving")
        with serving_process(bundle, config, tmp / "server.log") as (url, pid), RssSampler(pid, 0.5) as rss:
            idle = rss.last
            progress("serving load: warm-up (5 s at concurrency 2)")
            warm = drive(url, 2, 5.0, seed=99)
            rss_start = rss.last
            levels = []
            rss_after: list[float] = []
            for i, concurrency in enumerate(LEVELS):
                progress(f"serving load: concurrency {concurrency} for {seconds:.0f} s")
                levels.append(drive(url, concurrency, seconds, seed=i))
                rss_after.append(rss.last)
            time.sleep(1.0)
            rss_end, rss_peak = rss.last, rss.peak
    peak = max(lv.throughput for lv in levels)
    at16 = levels[-1].throughput
    errors = sum(len(lv.errors) for lv in levels) + len(warm.errors)
    growth = rss_end / rss_start - 1
    for lv in levels:
        section.rows.append(
            Row(
                "5 serving",
                f"concurrency {lv.concurrency}: throughput; latency p50/p95/p99; errors",
                None,
                f"{lv.throughput:.2f} req/s; {lv.percentile(50):.2f}/{lv.percentile(95):.2f}/{lv.percentile(99):.2f} s; "
                f"{len(lv.errors)}",
                None,
                "info",
                None,
            )
        )
    section.rows += [
        Row("5 serving", "errors (all levels)", None, errors, None, "0", errors == 0),
        Row("5 serving", "server RSS MB, start -> end", round(rss_start), round(rss_end), rss_end / rss_start,
            "<= 1.1x", growth <= 0.10, f"idle before warm-up {idle:.0f} MB, peak {rss_peak:.0f} MB",
            baseline_name="lulc after warm-up"),
        Row("5 serving", "req/s at 16 vs peak", round(peak, 2), round(at16, 2), at16 / peak, ">= 0.9x",
            at16 / peak >= 0.9, baseline_name="lulc at its peak"),
    ]  # fmt: skip
    section.details.append(
        f"{seconds:.0f} s per level; requests per level {[len(lv.latencies) for lv in levels]}; server RSS MB "
        f"idle {idle:.0f}, after warm-up {rss_start:.0f}, after each level {[round(r) for r in rss_after]}; "
        f"first errors: {[e for lv in levels for e in lv.errors][:3]}"
    )
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "10 s per level (smoke run).")


if __name__ == "__main__":
    main()
