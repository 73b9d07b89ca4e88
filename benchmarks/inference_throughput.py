"""Benchmark 1 — inference throughput: SegFormer-b0, 15 bands, a 1024 x 1024 px raster.

Baseline (the original utility's serving path): the model exported to ONNX, one whole-image onnxruntime session
with the memory arena and memory patterns disabled, then a full softmax and a masked argmax in numpy. Its logits
are at 1/4 resolution; they are upsampled (bilinear, as lulc does) so that both give a class per pixel, and class 0
(`unknown`) is left out of the argmax as lulc does, so that the outputs are comparable.

Ours: `lulc_core.inference.predict_raster` on the same bundle (with its `model.onnx`) and raster, with a window
covering the raster. Same random-init weights (seed 0) and the sample imagery mirror-tiled to 1024 px.

    .venv/bin/python -m benchmarks.inference_throughput            # 5 interleaved repeats
    .venv/bin/python -m benchmarks.inference_throughput --quick    # 512 px, 1 repeat
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.ma as ma
import torch

from benchmarks.common import (
    Row,
    Section,
    bench_main,
    interleaved,
    make_b0_bundle,
    median,
    progress,
    sample_mosaic,
)

COMMAND = ".venv/bin/python -m benchmarks.inference_throughput"


def baseline_session(onnx_path: Path, threads: int) -> Any:
    """The original utility's session: memory arena and memory patterns off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def baseline_predict(session: Any, data: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Whole image -> logits (1/4 res) -> bilinear to full size -> softmax -> masked argmax (classes 1..N)."""
    x = ((data - mean) / std)[None].astype(np.float32)
    x[~np.isfinite(x)] = 0.0
    logits = session.run(None, {"pixel_values": x})[0]
    full = torch.nn.functional.interpolate(
        torch.from_numpy(logits), size=data.shape[-2:], mode="bilinear", align_corners=False
    )[0].numpy()
    shifted = np.exp(full - full.max(axis=0, keepdims=True))
    probabilities = shifted / shifted.sum(axis=0, keepdims=True)
    threshold = 0.0
    masked = ma.array(probabilities[1:], mask=probabilities[1:] < threshold)
    return (ma.argmax(masked, axis=0, fill_value=0) + 1).astype(np.uint8)


def run(quick: bool = False) -> Section:
    """Measure baseline and ours, interleaved; return the rows."""
    from affine import Affine
    from rasterio.crs import CRS
    from serving_helpers import BANDS

    from lulc_core.bundle import ModelBundle
    from lulc_core.inference import predict_raster
    from lulc_core.raster import Raster

    size = 512 if quick else 1024
    repeats = 1 if quick else 5
    threads = torch.get_num_threads()
    section = Section("1. Inference throughput", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lulc-bench-inf-") as tmp:
        progress(f"inference: b0 bundle + ONNX export, {size} px raster")
        bundle_dir = make_b0_bundle(Path(tmp) / "bundle", onnx=True)
        bundle = ModelBundle.load(bundle_dir)
        data = sample_mosaic(size, size)
        raster = Raster(data, Affine(10, 0, 500_000, 0, -10, 6_200_000), CRS.from_epsg(32632), BANDS, None)
        norm = bundle.metadata.normalisation
        mean = np.asarray(norm.mean, np.float32)[:, None, None]
        std = np.asarray(norm.std, np.float32)[:, None, None]
        session = baseline_session(bundle_dir / "model.onnx", threads)

        def base() -> np.ndarray:
            return baseline_predict(session, data, mean, std)

        def ours_whole() -> np.ndarray:
            p = predict_raster(bundle, raster, window=size, overlap=0, batch_size=1, progress=False)
            return np.asarray(p.classes.data[0])

        def ours_default() -> np.ndarray:
            p = predict_raster(bundle, raster, progress=False)  # window 256, overlap 32, batch 4
            return np.asarray(p.classes.data[0])

        progress(f"inference: baseline vs ours (whole-image window), {repeats} interleaved repeats")
        base_t, ours_t, base_cls, ours_cls = interleaved(base, ours_whole, repeats)
        progress("inference: ours with the default serving window (256 px, overlap 32)")
        _, default_t, _, default_cls = interleaved(base, ours_default, max(1, repeats // 2), warmup=False)

    px = size * size
    base_pxs, ours_pxs = px / median(base_t), px / median(ours_t)
    agreement = float((base_cls == ours_cls).mean())
    default_agreement = float((base_cls == default_cls).mean())
    speedup = ours_pxs / base_pxs
    section.rows += [
        Row(
            "1 inference",
            f"px/s, b0 15 bands {size}² (whole-image window)",
            round(base_pxs),
            round(ours_pxs),
            speedup,
            ">= 2x",
            speedup >= 2.0,
            f"median of {repeats} interleaved runs; {threads} threads both",
        ),
        Row(
            "1 inference",
            "class agreement with the baseline",
            None,
            f"{agreement:.4%}",
            None,
            ">= 99.9%",
            agreement >= 0.999,
        ),
        Row(
            "1 inference",
            "px/s, default window 256 / overlap 32 (info)",
            round(base_pxs),
            round(px / median(default_t)),
            (px / median(default_t)) / base_pxs,
            "info",
            None,
            f"agreement {default_agreement:.2%}: windows see less context than the whole image, and a random-init "
            "model's class margins are tiny, so context flips classes",
        ),
    ]
    section.details.append(
        f"seconds per run: baseline {[round(t, 2) for t in base_t]}, ours {[round(t, 2) for t in ours_t]}, "
        f"ours default window {[round(t, 2) for t in default_t]}"
    )
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "512 px and one repeat (smoke run).")


if __name__ == "__main__":
    main()
