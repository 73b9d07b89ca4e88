"""Memory of Predictor.predict does not grow with the area beyond the uint8 output.

The measurement runs in a fresh interpreter (this file is also a script): a tiny SegFormer bundle, a synthetic
imagery store that computes any tile on demand (a test double of the imagery boundary, so the input does not sit in
memory), then predictions of growing areas while a thread samples the resident set size and tracemalloc traces
numpy's allocations. Bigger areas by hand:

    .venv/bin/python tests/test_inference_memory.py 1000 4000 10000

Measured (2 shared CPU cores, 1 torch thread, window 128, overlap 16, 512 px blocks, tiny SegFormer):
    988 x 989 px:     0.9 s, RSS +23 MB, numpy peak  26 MB (output   1 MB)
    3979 x 3979 px:  10.6 s, RSS +57 MB, numpy peak  43 MB (output  15 MB)
    10090 x 10088 px: 82 s,  RSS +107 MB, numpy peak 130 MB (output 97 MB)
The part beyond the output (~25-33 MB) is the block accumulators and imagery plus the carried strip below, which
is `overlap` rows x the area's width (4.5 MB at 10,000 px wide).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import numpy as np

BANDS = ["B02", "B03", "B04"]
ORIGIN = (500_000.0, 6_400_000.0)  # UTM 32N, Denmark


class SyntheticStore:
    """Imagery computed from map coordinates: any tile, on the tile grid, no memory kept between calls."""

    def fetch(self, tile, bands: Sequence[str]):  # type: ignore[no-untyped-def]
        from affine import Affine
        from rasterio.crs import CRS

        from lulc_core.raster import Raster

        res = tile.resolution
        ys = tile.bounds[3] - (np.arange(tile.height, dtype=np.float32) + 0.5) * res
        xs = tile.bounds[0] + (np.arange(tile.width, dtype=np.float32) + 0.5) * res
        data = np.empty((len(bands), tile.height, tile.width), np.float32)
        for k in range(len(bands)):
            data[k] = 1000 + 300 * np.sin(ys[:, None] / (170 + 40 * k)) * np.cos(xs[None, :] / (230 + 50 * k))
        transform = Affine(res, 0, tile.bounds[0], 0, -res, tile.bounds[3])
        return Raster(data, transform, CRS.from_user_input(tile.crs), list(bands), None)


def _tiny_bundle(directory: Path):  # type: ignore[no-untyped-def]
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from lulc_core.bundle import BundleMetadata, ModelBundle, Normalisation, save_bundle
    from lulc_core.labels import LabelSet

    torch.manual_seed(0)
    label_set = LabelSet.from_yaml(Path(__file__).resolve().parents[1] / "conf" / "labels" / "v3.yaml")
    config = SegformerConfig(
        num_channels=len(BANDS),
        num_labels=label_set.num_classes,
        hidden_sizes=[8, 16, 32, 64],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=32,
    )
    meta = BundleMetadata(
        variant="b0",
        bands=BANDS,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=[1000.0] * 3, std=[300.0] * 3),
        label_set=label_set,
    )
    return ModelBundle.load(save_bundle(directory / "tiny", SegformerForSemanticSegmentation(config), meta))


def _bbox(size_px: int):  # type: ignore[no-untyped-def]
    from pyproj import Transformer

    from lulc_core.geo import BBox

    to_wgs = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    x0, y1 = ORIGIN
    # shrink a little: tile_for_bbox grows the box to the densified UTM bounds of its lon/lat corners
    w, s, e, n = to_wgs.transform_bounds(x0, y1 - size_px * 10 * 0.985, x0 + size_px * 10 * 0.985, y1)
    return BBox(west=w, south=s, east=e, north=n)


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def measure(sizes: Sequence[int]) -> list[dict[str, float]]:
    """Predict square areas of `sizes` px; per size: pixels, seconds, RSS growth and traced numpy peak (MB)."""
    import torch

    from lulc_core.config import ServingConfig
    from lulc_core.inference import PredictOptions, Predictor

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = _tiny_bundle(Path(tmp))
    settings = ServingConfig(window=128, overlap=16, batch_size=8, edge_buffer_m=0, max_pixels=200_000_000)
    predictor = Predictor(bundle, SyntheticStore(), settings=settings, block_px=512, progress=False)
    start, end = date(2023, 6, 1), date(2023, 6, 30)
    predictor.predict(_bbox(600), start, end, PredictOptions())  # warm-up: allocator pools, lazy imports
    results = []
    for size in sizes:
        baseline = _rss()
        peak = [baseline]
        done = threading.Event()

        def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss())
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        tracemalloc.start()
        t0 = time.perf_counter()
        prediction = predictor.predict(_bbox(size), start, end, PredictOptions())
        seconds = time.perf_counter() - t0
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        done.set()
        sampler.join()
        pixels = prediction.classes.width * prediction.classes.height
        results.append(
            {
                "size": size,
                "width": prediction.classes.width,
                "height": prediction.classes.height,
                "pixels": pixels,
                "seconds": round(seconds, 2),
                "output_mb": round(pixels / 2**20, 1),
                "rss_growth_mb": round((peak[0] - baseline) / 2**20, 1),
                "numpy_peak_mb": round(traced_peak / 2**20, 1),
            }
        )
        del prediction
    return results


def test_memory_does_not_grow_with_the_area() -> None:
    script = Path(__file__).resolve()
    proc = subprocess.run(
        [sys.executable, str(script), "1000", "4000"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=script.parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    small, large = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps([small, large], indent=1))
    assert large["pixels"] > 15 * small["pixels"] > 0
    # numpy allocations: the uint8 output plus a constant (block accumulators, block imagery, carried strips)
    constant = small["numpy_peak_mb"] - small["output_mb"]
    assert large["numpy_peak_mb"] - large["output_mb"] < constant + 8
    assert large["numpy_peak_mb"] < large["output_mb"] + 80
    # process memory: 16x the area may cost the extra output and some allocator noise, nothing proportional
    extra_output = large["output_mb"] - small["output_mb"]
    assert large["rss_growth_mb"] - small["rss_growth_mb"] < extra_output + 40


if __name__ == "__main__":
    print(json.dumps(measure([int(a) for a in sys.argv[1:]] or [1000, 4000])))
