"""Benchmark 2 — large areas: 2,000², 5,000² and 10,000² px predicted from a local imagery store.

Each size runs in a fresh process (`--child`), so its peak RSS (getrusage ru_maxrss: imports, model, imagery blocks,
sliding-window accumulators and the uint8 output) is its own. The process loads the bundle, warms up on a small
area, then times `Predictor.predict` over the whole area (serving settings: window 256, overlap 32, batch 4,
imagery fetched per 1024 px block). The store is `LocalGeoTiffStore` over a synthetic 15-band float32 GeoTIFF
(tiled, deflate) at 100 m covering the largest area; the store warps it onto the 10 m request grid block by block,
so the figure includes reading and warping imagery but not a 6 GB input file.

The model is a small SegFormer (MiT with hidden sizes 16/32/64/128, one block per stage, 64-channel decoder,
random init, 15 bands) so that the areas fit the `make bench` budget on 2 cores; memory does not depend on it.

    .venv/bin/python -m benchmarks.large_areas            # 2,000 / 5,000 / 10,000 px
    .venv/bin/python -m benchmarks.large_areas --quick    # 500 / 1,000 / 2,000 px
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Row,
    Section,
    bench_main,
    median,
    peak_rss_mb,
    progress,
    run_child,
    timed,
)
from lulc_core.geo import BBox

COMMAND = ".venv/bin/python -m benchmarks.large_areas"
SIZES = (2000, 5000, 10_000)
QUICK_SIZES = (500, 1000, 2000)
TINY: dict[str, Any] = {"hidden_sizes": [16, 32, 64, 128], "depths": [1, 1, 1, 1], "decoder_hidden_size": 64}
DATES = (date(2023, 6, 1), date(2023, 6, 10))


def make_tiny_bundle(path: Path) -> Path:
    """A small random-init SegFormer (see the module docstring) on the sample's 15 bands and the v3 label set."""
    import torch
    from serving_helpers import BANDS, REPO
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from lulc_core.bundle import BundleMetadata, Normalisation, save_bundle
    from lulc_core.labels import LabelSet

    label_set = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")
    torch.manual_seed(0)
    config = SegformerConfig(num_channels=len(BANDS), num_labels=label_set.num_classes, **TINY)  # type: ignore[call-arg]
    meta = BundleMetadata(
        variant="tiny",
        bands=BANDS,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[1500.0] * 12 + [-12.0, -18.0, 50.0], std=[1000.0] * 12 + [5.0, 5.0, 50.0]),
        label_set=label_set,
    )
    return save_bundle(path, SegformerForSemanticSegmentation(config), meta)


def child(pixels: int, work: Path) -> dict[str, float]:
    """In a fresh process: load, warm up, predict a `pixels`² area; timings and peak RSS."""
    from benchmarks.serving_memory import area_bbox
    from lulc_core.bundle import ModelBundle
    from lulc_core.config import ServingConfig
    from lulc_core.imagery.local import LocalGeoTiffStore
    from lulc_core.inference import PredictOptions, Predictor

    bundle = ModelBundle.load(work / "bundle")
    settings = ServingConfig(window=256, overlap=32, batch_size=4, max_pixels=10_500 * 10_500, edge_buffer_m=0)
    predictor = Predictor(bundle, LocalGeoTiffStore(work / "imagery"), None, settings, progress=False)
    options = PredictOptions()
    predictor.predict(_bbox(area_bbox(256)[0]), *DATES, options)
    rss_ready = peak_rss_mb()
    cpu_before = _cpu_seconds()
    seconds, prediction = timed(lambda: predictor.predict(_bbox(area_bbox(pixels)[0]), *DATES, options))
    cpu = _cpu_seconds() - cpu_before
    height, width = prediction.classes.height, prediction.classes.width
    mpx = width * height / 1e6
    return {
        "pixels": pixels,
        "width": width,
        "height": height,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "s_per_mpx": seconds / mpx,
        "cpu_s_per_mpx": cpu / mpx,
        "peak_rss_mb": peak_rss_mb(),
        "rss_ready_mb": rss_ready,
    }


def _cpu_seconds() -> float:
    """User + system CPU time of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _bbox(values: list[float]) -> BBox:
    return BBox(west=values[0], south=values[1], east=values[2], north=values[3])


def run(quick: bool = False) -> Section:
    """Set up the bundle and the store, then one fresh process per size (the smallest three times)."""
    from benchmarks.serving_memory import area_bbox, synthetic_imagery

    sizes = QUICK_SIZES if quick else SIZES
    small, large = sizes[0], sizes[-1]
    # the smallest size is cheap: it runs before, between and after the others, and its median is the reference,
    # so that a burst of background load during one short run does not decide the time ratio
    order = [small, *sizes[1:-1], small, large, small]
    section = Section("2. Large areas", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    results: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    with tempfile.TemporaryDirectory(prefix="lulc-bench-large-") as tmp:
        work = Path(tmp)
        make_tiny_bundle(work / "bundle")
        (work / "imagery").mkdir()
        synthetic_imagery(work / "imagery", area_bbox(large)[1])
        for pixels in order:
            progress(f"large areas: {pixels:,} x {pixels:,} px in a fresh process")
            args = ["--child", str(pixels), "--work", str(work)]
            results[pixels].append(run_child("benchmarks.large_areas", args, timeout_s=1800))

    def typical(n: int) -> dict[str, float]:
        runs = sorted(results[n], key=lambda r: r["s_per_mpx"])
        return {**runs[len(runs) // 2], "peak_rss_mb": median([r["peak_rss_mb"] for r in runs])}

    for n in sizes:
        r = typical(n)
        section.rows.append(
            Row(
                "2 large areas",
                f"{r['width']:,.0f} x {r['height']:,.0f} px: s/Mpx, peak RSS"
                + (f" (median of {len(results[n])})" if len(results[n]) > 1 else ""),
                None,
                f"{r['s_per_mpx']:.3f} s/Mpx, {r['peak_rss_mb']:.0f} MB",
                None,
                "info",
                None,
            )
        )
    first, last = typical(small), typical(large)
    rss_ratio = last["peak_rss_mb"] / first["peak_rss_mb"]
    time_ratio = last["s_per_mpx"] / first["s_per_mpx"]
    cpu_ratio = last["cpu_s_per_mpx"] / first["cpu_s_per_mpx"]
    n0, n1 = f"{small:,}²", f"{large:,}²"
    section.rows += [
        Row("2 large areas", f"peak RSS MB, {n0} -> {n1}", round(first["peak_rss_mb"]), round(last["peak_rss_mb"]),
            rss_ratio, "<= 1.3x", rss_ratio <= 1.3, baseline_name=f"lulc at {n0}"),
        Row("2 large areas", f"wall s per Mpx, {n0} -> {n1}", round(first["s_per_mpx"], 3),
            round(last["s_per_mpx"], 3), time_ratio, "<= 1.2x", time_ratio <= 1.2, baseline_name=f"lulc at {n0}"),
        Row("2 large areas", f"CPU s per Mpx, {n0} -> {n1} (info)", round(first["cpu_s_per_mpx"], 3),
            round(last["cpu_s_per_mpx"], 3), cpu_ratio, "info", None, baseline_name=f"lulc at {n0}"),
    ]  # fmt: skip
    section.details += [
        "model: small SegFormer (MiT 16/32/64/128, one block per stage, decoder 64), torch, random init; window "
        "256, overlap 32, batch 4, blocks of 1024 px, no edge buffer; LocalGeoTiffStore over a 100 m synthetic "
        "15-band GeoTIFF warped to the 10 m request grid",
        "the larger area also holds its uint8 output (1 byte/px: 99 MB at 10,000²) and GDAL's block cache of "
        "the part of the input it read",
        "runs: "
        + "; ".join(
            json.dumps({k: round(v, 3) for k, v in r.items() if k not in ("width", "height")})
            for n in sizes
            for r in results[n]
        ),
    ]
    section.seconds = time.monotonic() - started
    return section


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)


def _as_child(args: argparse.Namespace) -> bool:
    """`--child N --work DIR`: measure one size in this (fresh) process and print its JSON line."""
    if args.child is None:
        return False
    print(json.dumps(child(args.child, args.work)))
    return True


def main() -> None:
    bench_main(run, __doc__, "500 / 1,000 / 2,000 px (smoke run).", child=_as_child, extra=_arguments)


if __name__ == "__main__":
    main()
