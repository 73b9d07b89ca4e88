"""Benchmark 8 — served memory: the predictor's peak for a 10,000² px request against a 2,000² one, through the
served default (`python -m serving`, the bundle as registration leaves it: model.onnx in onnxruntime; the default
serving settings), each size in a fresh server.

The imagery is a synthetic 15-band GeoTIFF at 100 m covering the area (the local store warps it onto the 10 m
request grid block by block), so the figure measures the serving path — sliding windows in blocks, the uint8
output, the COG encoding — not a 6 GB input file. The server's resident set size is sampled every 0.2 s.

    .venv/bin/python -m benchmarks.serving_memory            # 2,000² then 10,000² px (about 8 minutes on 2 cores)
    .venv/bin/python -m benchmarks.serving_memory --quick    # 1,200² then 2,400² px (smoke run)
    .venv/bin/python -m benchmarks.serving_memory --pixels 2500   # one size, its figures only
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import requests
from pyproj import Transformer
from rasterio.transform import from_origin

from benchmarks.common import REPO, Row, RssSampler, Section, bench_main, make_b0_bundle, progress, serving_process

CENTRE_UTM = (500_000.0, 6_200_000.0)  # EPSG:32632, Jutland


def area_bbox(pixels: int) -> tuple[list[float], tuple[float, float, float, float]]:
    """A lon/lat bbox whose 10 m UTM grid is at most `pixels` x `pixels`, and that grid's bounds."""
    from datetime import date

    from lulc_core.geo import BBox, tile_for_bbox

    half = pixels * 10 / 2 * 0.995
    to_ll = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    for _ in range(20):
        x0, y0 = CENTRE_UTM[0] - half, CENTRE_UTM[1] - half
        w, s = to_ll.transform(x0 + 0.0, y0 + 0.0)
        e, n = to_ll.transform(x0 + 2 * half, y0 + 2 * half)
        tile = tile_for_bbox(BBox(west=w, south=s, east=e, north=n), 10.0, date(2023, 6, 1), date(2023, 6, 10))
        if tile.width <= pixels and tile.height <= pixels:
            return [w, s, e, n], tile.bounds
        half *= 0.998
    raise RuntimeError("could not size the area")


def synthetic_imagery(directory: Path, bounds: tuple[float, float, float, float]) -> Path:
    """One 15-band float32 GeoTIFF (tiled, deflate) at 100 m covering `bounds` (EPSG:32632) plus 3 km."""
    from serving_helpers import BANDS

    res, margin = 100.0, 3000.0
    x0, y1 = bounds[0] - margin, bounds[3] + margin
    width = math.ceil((bounds[2] - bounds[0] + 2 * margin) / res)
    height = math.ceil((bounds[3] - bounds[1] + 2 * margin) / res)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": len(BANDS), "dtype": "float32",
        "crs": "EPSG:32632", "transform": from_origin(x0, y1, res, res), "tiled": True, "compress": "deflate",
    }  # fmt: skip
    path = directory / "synthetic.tif"
    with rasterio.open(path, "w", **profile) as dst:
        for i, name in enumerate(BANDS, start=1):
            dst.write(1500 + 800 * np.sin(yy / (7 + i)) * np.cos(xx / (11 + i)), i)
            dst.set_band_description(i, name)
        dst.update_tags(ACQUISITION_DATE="2023-06-05")
    return path


def measure(pixels: int, window: int | None = None) -> dict[str, float]:
    """Start the served default, request a `pixels`² area, return timings and memory figures (MB)."""
    from serving_helpers import write_run_config

    from lulc_core.config import ServingConfig

    with tempfile.TemporaryDirectory(prefix="lulc-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bbox, bounds = area_bbox(pixels)
        (tmp / "imagery").mkdir()
        synthetic_imagery(tmp / "imagery", bounds)
        bundle = make_b0_bundle(tmp / "bundle", onnx=True)
        d = ServingConfig()
        settings = {"window": window or d.window, "overlap": d.overlap, "batch_size": d.batch_size}
        config = write_run_config(tmp / "run.yaml", tmp / "work", **settings, max_pixels=pixels * pixels)
        text = config.read_text().replace(str(REPO / "data" / "sample" / "imagery"), str(tmp / "imagery"))
        config.write_text(text)
        with serving_process(bundle, config, tmp / "server.log") as (url, pid), RssSampler(pid) as rss:
            idle = rss.first
            started = time.monotonic()
            body = {"area_coords": bbox, "start_date": "2023-06-01", "end_date": "2023-06-10"}
            response = requests.post(url + "/segment/", json=body, timeout=7200)
            seconds = time.monotonic() - started
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
            out = tmp / "out.tif"
            out.write_bytes(response.content)
            with rasterio.open(out) as src:
                width, height = src.width, src.height
        peak = rss.peak
    return {
        "width": width,
        "height": height,
        "seconds": round(seconds, 1),
        "mpx_per_s": round(width * height / 1e6 / seconds, 3),
        "rss_idle_mb": round(idle),
        "rss_peak_mb": round(peak),
        "rss_growth_mb": round(peak - idle),
        "geotiff_mb": round(len(response.content) / 1024 / 1024, 1),
    }


COMMAND = ".venv/bin/python -m benchmarks.serving_memory"


def run(quick: bool = False) -> Section:
    """Both sizes, each in a fresh server; the row compares their peaks."""
    small, large = (1200, 2400) if quick else (2000, 10_000)
    section = Section("8. Served memory", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    figures = {}
    for pixels in (small, large):
        progress(f"served memory: {pixels:,}² px through python -m serving")
        figures[pixels] = measure(pixels)
    a, b = figures[small], figures[large]
    section.rows.append(
        Row(
            "8 served memory",
            f"predictor peak RSS MB, served default, {small:,}² -> {large:,}² px request",
            a["rss_peak_mb"],
            b["rss_peak_mb"],
            b["rss_peak_mb"] / a["rss_peak_mb"],
            "<= 1.3x",
            b["rss_peak_mb"] / a["rss_peak_mb"] <= 1.3,
            "python -m serving with model.onnx (onnxruntime) and the default window/overlap/batch, one POST /segment/ "
            "per fresh server, RSS sampled every 0.2 s (peak includes the loaded model)",
            baseline_name=f"lulc at {small:,}²",
        )
    )
    section.details += [f"{k:,}² px: " + ", ".join(f"{n}={v}" for n, v in f.items()) for k, f in figures.items()]
    section.seconds = time.monotonic() - started
    return section


def _one_size(args: argparse.Namespace) -> bool:
    if args.pixels is None:
        return False
    result = measure(args.pixels, args.window)
    print(" ".join(f"{k}={v}" for k, v in result.items()))
    return True


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pixels", type=int, default=None, help="Only this edge (10 m pixels), its figures only.")
    parser.add_argument("--window", type=int, default=None, help="Sliding-window edge (with --pixels).")


def main() -> None:
    bench_main(run, __doc__, "1,200² and 2,400² px (smoke run).", child=_one_size, extra=_options)


if __name__ == "__main__":
    main()
