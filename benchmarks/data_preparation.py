"""Benchmark 3 — data preparation: imagery and labels for 64 tiles from the Sentinel Hub and ohsome stand-ins.

Both stand-ins (tests/standins, each in its own process on 127.0.0.1 like a remote service, driven through the
real sentinelhub-py and ohsome-py clients) add 150 ms of latency to every request. The 64 tiles are an 8 x 8 grid
of 280 m tiles (28 x 28 px at 10 m) over the Jutland sample patch; imagery is the default 15 bands (one Process API
request per tile), labels the v3 label set (6 classes).

- Baseline — the original utility's design (GIScience/lulc-utility): a torch DataLoader with 8 workers (`workers: 8`
  in its model configs), each worker preparing one tile at a time: its imagery request, then one ohsome request per
  class in turn (`OhsomeOps.labels` loops over the label set), no rate limit. Emulated with 8 threads over the tiles
  (the work is waiting on the services), each doing 1 + 6 requests through the same clients.
- lulc — the configuration a user has: `imagery.concurrency` and `labels.concurrency` (8 each), the default rate
  limits from the configuration (`imagery.sentinelhub.max_requests_per_second`, `labels.max_requests_per_second`),
  one ohsome request per tile for every class, imagery and labels side by side (as the training pipeline's tasks
  run).
- lulc without rate limits (info): the same with both limits lifted to 1,000/s, which a user can configure.

The rate limits, not the concurrency, bound throughput against the real services: the ceiling rows report what
the default limits allow, before (1 + 6 requests per tile) and after (1 + 1). Baseline and lulc runs alternate,
each on fresh output directories; medians. Every file is checked afterwards: zero tiles may be lost.

    .venv/bin/python -m benchmarks.data_preparation            # 64 tiles, 3 interleaved repeats
    .venv/bin/python -m benchmarks.data_preparation --quick    # 16 tiles, 1 repeat
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
from typing import Any

import rasterio

from benchmarks.common import (
    REPO,
    TESTS,
    V3_LABELS,
    Row,
    Section,
    bench_main,
    median,
    progress,
)
from lulc_core.config import ImageryConfig, LabelsConfig, SentinelHubConfig
from lulc_core.geo import Tile
from serving.process import free_port

COMMAND = ".venv/bin/python -m benchmarks.data_preparation"
LATENCY_S = 0.15
CLIENT = ("lulc-bench-client", "lulc-bench-secret")
PATCH = "637U_59R_1_3"  # Jutland, 2017-10-30
UNLIMITED = 1000.0
ORIGINAL_WORKERS = 8  # `workers: 8` in the original's conf/model/*.yaml


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


def _sources(sh_url: str, ohsome_url: str, rate: float | None) -> tuple[Any, Any]:
    """The Sentinel Hub store and the ohsome source built from the configuration; `rate` None: its defaults."""
    from lulc_core.imagery.sentinelhub import SentinelHubStore
    from lulc_core.osm import build_osm_source

    limit = {} if rate is None else {"max_requests_per_second": rate}
    token_url = sh_url + "/auth/realms/main/protocol/openid-connect/token"
    sh_cfg = SentinelHubConfig(base_url=sh_url, token_url=token_url, timeout_s=60.0, **limit)
    labels_cfg = LabelsConfig(label_set=V3_LABELS, source="ohsome", ohsome_url=ohsome_url, timeout_s=60.0, **limit)
    return SentinelHubStore(sh_cfg, 10.0, None, credentials=CLIENT), build_osm_source(labels_cfg)


def lulc_prepare(tiles: list[Tile], out: Path, sh_url: str, ohsome_url: str, rate: float | None) -> float:
    """lulc's data preparation as the training pipeline does it (imagery and labels side by side); seconds."""
    from lulc_core.imagery import fetch_tiles
    from lulc_core.labelling import label_tiles
    from lulc_core.labels import LabelSet

    store, source = _sources(sh_url, ohsome_url, rate)
    bands = list(ImageryConfig.model_fields["bands"].get_default(call_default_factory=True))
    imagery_conc = int(ImageryConfig.model_fields["concurrency"].default)
    labels_conc = int(LabelsConfig.model_fields["concurrency"].default)
    label_set = LabelSet.from_yaml(V3_LABELS)
    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        jobs = [
            pool.submit(fetch_tiles, store, tiles, bands, out / "imagery", concurrency=imagery_conc),
            pool.submit(label_tiles, source, label_set, tiles, out / "labels", concurrency=labels_conc),
        ]
        for job in jobs:
            job.result()
    return time.perf_counter() - started


def original_prepare(tiles: list[Tile], out: Path, sh_url: str, ohsome_url: str) -> float:
    """The original's design: 8 DataLoader workers, each tile's imagery then one ohsome request per class; seconds."""
    from lulc_core.imagery import fetch_tiles
    from lulc_core.labels import LabelSet
    from lulc_core.raster import write_geotiff

    store, source = _sources(sh_url, ohsome_url, UNLIMITED)
    bands = list(ImageryConfig.model_fields["bands"].get_default(call_default_factory=True))
    label_set = LabelSet.from_yaml(V3_LABELS)
    (out / "labels").mkdir(parents=True, exist_ok=True)

    def one_tile(tile: Tile) -> None:
        fetch_tiles(store, [tile], bands, out / "imagery")
        raster = labels_one_request_per_class(source, label_set, tile)
        write_geotiff(out / "labels" / f"{tile.id}.tif", raster, colormap=label_set.colormap(), dtype="uint8")

    started = time.perf_counter()
    with ThreadPoolExecutor(ORIGINAL_WORKERS) as pool:
        list(pool.map(one_tile, tiles))
    return time.perf_counter() - started


def labels_one_request_per_class(source: Any, label_set: Any, tile: Tile) -> Any:
    """A tile's class raster as the original made it: one clipped query per class, polygons burnt largest first."""
    import numpy as np
    from rasterio.crs import CRS
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    from lulc_core.raster import Raster

    crs = CRS.from_user_input(tile.crs)
    shapes = []
    for value, cls in enumerate(label_set.classes, start=1):
        gdf = source.features(tile.bbox_wgs84, tile.end, cls.osm_filter)
        for geom in [] if gdf.empty else gdf.to_crs(crs).geometry:
            if geom is not None and not geom.is_empty and geom.area > 0:
                shapes.append((geom, value, float(geom.area)))
    out = np.zeros((tile.height, tile.width), np.uint8)
    transform = from_origin(tile.bounds[0], tile.bounds[3], tile.resolution, tile.resolution)
    if shapes:
        shapes.sort(key=lambda s: -s[2])
        rasterize(((g, v) for g, v, _ in shapes), out=out, transform=transform, dtype="uint8")
    return Raster(out[None], transform, crs, ["class"], None)


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
    """Start both stand-ins with latency, warm them up, then baseline and lulc alternately on fresh directories."""
    if shutil.which("node") is None:
        raise RuntimeError("the Sentinel Hub stand-in runs evalscripts with node, which is not installed")
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http to the stand-in's token endpoint
    n_side, repeats = (4, 1) if quick else (8, 3)
    tiles = grid_tiles(n_side)
    n = len(tiles)
    section = Section("3. Data preparation", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    classes = 6
    sh_rate = float(SentinelHubConfig.model_fields["max_requests_per_second"].default)
    ohsome_rate = float(LabelsConfig.model_fields["max_requests_per_second"].default)
    sh_args = ["--client-id", CLIENT[0], "--client-secret", CLIENT[1]]
    seconds: dict[str, list[float]] = {"original": [], "lulc": [], "lulc_unlimited": []}
    lost = 0
    with (
        standin("sentinelhub", *sh_args) as sh_url,
        standin("ohsome") as ohsome_url,
        tempfile.TemporaryDirectory(prefix="lulc-bench-prep-") as tmp,
    ):
        progress("data preparation: warming up the stand-ins (their data is loaded on the first request)")
        lulc_prepare(grid_tiles(1, size_px=16), Path(tmp) / "warm-up", sh_url, ohsome_url + "/v1", UNLIMITED)
        for r in range(repeats):
            for name in seconds:
                progress(f"data preparation: {name}, {n} tiles (repeat {r + 1}/{repeats})")
                out = Path(tmp) / f"{name}-{r}"
                if name == "original":
                    t = original_prepare(tiles, out, sh_url, ohsome_url + "/v1")
                else:
                    t = lulc_prepare(tiles, out, sh_url, ohsome_url + "/v1", None if name == "lulc" else UNLIMITED)
                seconds[name].append(t)
                lost += n - complete_tiles(tiles, out)
    tps = {name: n / median(values) for name, values in seconds.items()}
    before_ceiling = min(sh_rate / 1, ohsome_rate / classes)
    after_ceiling = min(sh_rate / 1, ohsome_rate / 1)
    original = f"original design: {ORIGINAL_WORKERS} workers, 1 + {classes} requests/tile, no rate limit"
    section.rows += [
        Row(
            "3 data preparation",
            f"tiles/s, {n} tiles, 150 ms/request; lulc at its default rate limits (info)",
            tps["original"],
            tps["lulc"],
            tps["lulc"] / tps["original"],
            "info",
            None,
            f"lulc bound by Sentinel Hub's default {sh_rate:g} requests/s; the original sends without a limit "
            "(against the real services it would meet their quotas as 429s)",
            baseline_name=original,
        ),
        Row(
            "3 data preparation",
            f"tiles/s, {n} tiles, 150 ms/request; lulc with the rate limits lifted (1,000/s)",
            tps["original"],
            tps["lulc_unlimited"],
            tps["lulc_unlimited"] / tps["original"],
            "info",
            None,
            "same concurrency (8) as the original's workers; lulc: 1 + 1 requests per tile, imagery and labels side "
            "by side",
            baseline_name=original,
        ),
        Row(
            "3 data preparation",
            "tiles/s at the services' default rate limits vs the ceiling of 1 + 6 requests/tile",
            round(before_ceiling, 2),
            tps["lulc"],
            tps["lulc"] / before_ceiling,
            ">= 2.4x",
            tps["lulc"] / before_ceiling >= 2.4,
            f"measured with Sentinel Hub {sh_rate:g}/s and ohsome {ohsome_rate:g}/s (the configuration's defaults); "
            f"before: ohsome {ohsome_rate:g}/s / {classes} requests per tile = {before_ceiling:.2f} tiles/s",
            baseline_name="ceiling before (1 + 6 requests/tile)",
        ),
        Row(
            "3 data preparation",
            "tiles/s ceiling of the default rate limits (info)",
            round(before_ceiling, 2),
            round(after_ceiling, 2),
            after_ceiling / before_ceiling,
            "info",
            None,
            f"min(Sentinel Hub {sh_rate:g}/s / 1, ohsome {ohsome_rate:g}/s / requests per tile): now Sentinel Hub's "
            "quota binds",
            baseline_name="ceiling before (1 + 6 requests/tile)",
        ),
        Row("3 data preparation", "tiles lost (all runs)", None, lost, None, "0", lost == 0),
    ]
    section.details.append(
        "the Sentinel Hub stand-in evaluates every evalscript in a node process on the same 2 shared cores (about "
        "0.3-0.5 s of CPU per request): on this machine it, not the client, bounds imagery throughput"
    )
    section.details.append(
        f"seconds per run (alternating): {', '.join(f'{k} {[round(v, 2) for v in vals]}' for k, vals in seconds.items())}"
    )
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "16 tiles (smoke run).")


if __name__ == "__main__":
    main()
