"""Benchmark 3 — data preparation: imagery and labels for 64 tiles from the Sentinel Hub and ohsome stand-ins.

Both stand-ins (tests/standins, each in its own process on 127.0.0.1 like a remote service, driven through the
real sentinelhub-py and ohsome-py clients) add 150 ms of latency to every request. The 64 tiles are an 8 x 8 grid of 280 m tiles (28 x 28 px at 10 m) over the
Jutland sample patch; imagery is the default 15 bands (one Process API request per tile, evaluated by the
stand-in's evalscript runner), labels the v3 label set (one ohsome request per class and tile: 6 per tile).

- Baseline: one tile at a time (`fetch_tiles(concurrency=1)`, `label_tiles(concurrency=1)`), as the original.
- Ours: the default concurrency (`imagery.concurrency` and `labels.concurrency`, 8 each).

The per-source rate limits (`imagery.sentinelhub.max_requests_per_second`, `labels.max_requests_per_second`) protect a real
account's quota; the stand-ins have none, so both runs lift them to 1,000/s, and what the defaults allow is
reported beside. Every file is checked afterwards: zero tiles may be lost.

    .venv/bin/python -m benchmarks.data_preparation            # 64 tiles
    .venv/bin/python -m benchmarks.data_preparation --quick    # 16 tiles
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import rasterio

from benchmarks.common import (
    REPO,
    TESTS,
    V3_LABELS,
    Row,
    Section,
    bench_main,
    progress,
    timed,
)
from lulc_core.config import ImageryConfig, LabelsConfig, SentinelHubConfig
from lulc_core.geo import Tile
from serving.process import free_port

COMMAND = ".venv/bin/python -m benchmarks.data_preparation"
LATENCY_S = 0.15
CLIENT = ("lulc-bench-client", "lulc-bench-secret")
PATCH = "637U_59R_1_3"  # Jutland, 2017-10-30
UNLIMITED = 1000.0


def grid_tiles(n_side: int, size_px: int = 28) -> list[Tile]:
    """`n_side` x `n_side` tiles of `size_px` px at 10 m over the sample patch, in its time frame."""
    with rasterio.open(REPO / "data" / "sample" / "imagery" / f"{PATCH}_s2.tif") as src:
        west, north, crs = src.bounds.left, src.bounds.top, src.crs.to_string()
    edge = size_px * 10.0
    return [
        Tile(
            id=f"bench_r{r}_c{c}",
            crs=crs,
            bounds=(west + c * edge, north - (r + 1) * edge, west + (c + 1) * edge, north - r * edge),
            resolution=10.0,
            start=date(2017, 10, 25),
            end=date(2017, 11, 4),
        )
        for r in range(n_side)
        for c in range(n_side)
    ]


def prepare(
    tiles: list[Tile], out: Path, sh_url: str, ohsome_url: str, concurrency: int, side_by_side: bool = False
) -> dict[str, float]:
    """Fetch imagery and labels of `tiles` into `out` with `concurrency`; seconds per step and in total.

    With `side_by_side`, the imagery and the labels step run at the same time, as the training pipeline's
    imagery and labels tasks do (pipelines/training.py); otherwise one after the other, as `lulc run` does.
    """
    from lulc_core.imagery import fetch_tiles
    from lulc_core.imagery.sentinelhub import SentinelHubStore
    from lulc_core.labelling import label_tiles
    from lulc_core.labels import LabelSet
    from lulc_core.osm.ohsome import OhsomeSource

    sh_cfg = SentinelHubConfig(
        base_url=sh_url,
        token_url=sh_url + "/auth/realms/main/protocol/openid-connect/token",
        timeout_s=60.0,
        max_requests_per_second=UNLIMITED,
    )
    store = SentinelHubStore(sh_cfg, 10.0, None, credentials=CLIENT)
    source = OhsomeSource(ohsome_url, timeout_s=60.0, max_requests_per_second=UNLIMITED)
    bands = list(ImageryConfig.model_fields["bands"].get_default(call_default_factory=True))
    label_set = LabelSet.from_yaml(V3_LABELS)

    def imagery() -> float:
        return timed(lambda: fetch_tiles(store, tiles, bands, out / "imagery", concurrency=concurrency))[0]

    def labels() -> float:
        return timed(lambda: label_tiles(source, label_set, tiles, out / "labels", concurrency=concurrency))[0]

    if not side_by_side:
        imagery_s, labels_s = imagery(), labels()
        return {"imagery_s": imagery_s, "labels_s": labels_s, "total_s": imagery_s + labels_s}
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        img, lab = pool.submit(imagery), pool.submit(labels)
        imagery_s, labels_s = img.result(), lab.result()
    return {"imagery_s": imagery_s, "labels_s": labels_s, "total_s": time.perf_counter() - started}


def complete_tiles(tiles: list[Tile], out: Path) -> int:
    """Tiles whose imagery (15 bands) and labels (1 band) are both readable on the tile grid."""
    bands = len(ImageryConfig.model_fields["bands"].get_default(call_default_factory=True))
    ok = 0
    for t in tiles:
        try:
            with (
                rasterio.open(out / "imagery" / f"{t.id}.tif") as img,
                rasterio.open(out / "labels" / f"{t.id}.tif") as lab,
            ):
                good = img.count == bands and lab.count == 1
                good = good and (img.width, img.height) == (lab.width, lab.height) == (t.width, t.height)
                img.read(1)
                lab.read(1)
        except rasterio.errors.RasterioIOError:
            good = False
        ok += good
    return ok


@contextlib.contextmanager
def standin(module: str, *args: str) -> Iterator[str]:
    """`python -m standins.<module> --port P --latency 0.15 ...` in its own process (a remote service: its CPU
    work does not compete for the client's interpreter); yields its base URL once it accepts connections."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", f"standins.{module}", "--port", str(port), "--latency", str(LATENCY_S), *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"stand-in {module} did not start: {err[-2000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(quick: bool = False) -> Section:
    """Start both stand-ins with latency, warm them up, then baseline and ours on fresh output directories."""
    if shutil.which("node") is None:
        raise RuntimeError("the Sentinel Hub stand-in runs evalscripts with node, which is not installed")
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http to the stand-in's token endpoint
    n_side = 4 if quick else 8
    tiles = grid_tiles(n_side)
    concurrency = int(ImageryConfig.model_fields["concurrency"].default)
    labels_concurrency = int(LabelsConfig.model_fields["concurrency"].default)
    assert concurrency == labels_concurrency, "the benchmark reports one default concurrency"
    section = Section("3. Data preparation", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    classes = 6
    sh_args = ["--client-id", CLIENT[0], "--client-secret", CLIENT[1]]
    with (
        standin("sentinelhub", *sh_args) as sh_url,
        standin("ohsome") as ohsome_url,
        tempfile.TemporaryDirectory(prefix="lulc-bench-prep-") as tmp,
    ):
        progress("data preparation: warming up the stand-ins (their data is loaded on the first request)")
        prepare(grid_tiles(1, size_px=16), Path(tmp) / "warm-up", sh_url, ohsome_url + "/v1", 1)
        results = {}
        runs = (("baseline", 1, False), ("ours", concurrency, False), ("ours_pipeline", concurrency, True))
        for name, conc, side_by_side in runs:
            how = "imagery and labels side by side" if side_by_side else "imagery, then labels"
            progress(f"data preparation: {len(tiles)} tiles, concurrency {conc}, {how}")
            out = Path(tmp) / name
            timings = prepare(tiles, out, sh_url, ohsome_url + "/v1", conc, side_by_side)
            results[name] = {**timings, "complete": complete_tiles(tiles, out)}
    base, ours, pipe = results["baseline"], results["ours"], results["ours_pipeline"]
    n = len(tiles)
    base_tps = n / base["total_s"]
    lost = sum(n - r["complete"] for r in results.values())
    from lulc_core.config import OHSOME_REQUESTS_PER_SECOND as OHSOME_RPS
    from lulc_core.config import SentinelHubConfig

    sh_rps = SentinelHubConfig().max_requests_per_second
    default_ceiling = min(sh_rps / 1, OHSOME_RPS / classes)
    for label, r in (
        ("steps in sequence, as `lulc run`", ours),
        ("imagery and labels side by side, as the KFP pipeline", pipe),
    ):
        tps = n / r["total_s"]
        section.rows.append(
            Row(
                "3 data preparation",
                f"tiles/s, {n} tiles, 150 ms/request; {label}",
                base_tps,
                tps,
                tps / base_tps,
                ">= 6x",
                tps / base_tps >= 6.0,
                f"concurrency 1 vs {concurrency} (default): imagery {base['imagery_s']:.1f} s -> "
                f"{r['imagery_s']:.1f} s ({base['imagery_s'] / r['imagery_s']:.1f}x), labels {base['labels_s']:.1f} s "
                f"-> {r['labels_s']:.1f} s ({base['labels_s'] / r['labels_s']:.1f}x)",
            )
        )
    section.rows += [
        Row(
            "3 data preparation",
            "tiles lost (all runs)",
            n - base["complete"],
            (n - ours["complete"]) + (n - pipe["complete"]),
            None,
            "0",
            lost == 0,
        ),
        Row(
            "3 data preparation",
            "tiles/s ceiling with the default rate limits (info)",
            None,
            round(default_ceiling, 2),
            None,
            "info",
            None,
            f"Sentinel Hub {sh_rps:g} requests/s (1 per tile), ohsome {OHSOME_RPS:g} requests/s ({classes} per tile): "
            "against the real services "
            "the quotas, not the concurrency, bound throughput",
        ),
    ]
    section.details.append(
        f"requests per tile: 1 Process API + {classes} ohsome (v3 label set); stand-ins in their own processes; "
        f"baseline {_rounded(base)}; ours {_rounded(ours)}; ours side by side {_rounded(pipe)}"
    )
    section.seconds = time.monotonic() - started
    return section


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 2) for k, v in values.items()}


def main() -> None:
    bench_main(run, __doc__, "16 tiles (smoke run).")


if __name__ == "__main__":
    main()
