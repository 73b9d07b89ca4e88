"""Other inference engines on the served default's model.onnx: how far each gets from this machine's fp32 GEMM peak.

Not part of `make bench` and not a dependency of lulc: it needs OpenVINO and NNCF, which lulc does not ship. It
answers one question with numbers: would another engine reach what onnxruntime does not (int8 at least 1.5x fp32,
0.7 of the fp32 matmul peak)?

One window of the benchmark's b0 bundle (random init, seed 0, 15 bands; model.onnx as registration exports it,
decode head folded) over real sample imagery (`sample_mosaic`), on ONE thread, interleaved repeats, medians:

- onnxruntime fp32: the served default's engine (`lulc_core.inference.runtime`);
- onnxruntime int8: `model.int8.onnx` as registration makes it (`lulc_core.quantization.quantize_onnx`);
- OpenVINO fp32 and bf16 (`INFERENCE_PRECISION_HINT`; bf16 runs natively on CPUs with AVX512-BF16 or AMX) on the
  same model.onnx with a static input shape (its dynamic shapes ran slower than onnxruntime here);
- OpenVINO int8: NNCF's post-training quantisation (`nncf.quantize`, transformer preset) of that model.

Calibration for both int8 models: 32 chips of the same imagery. Agreement: share of pixels whose class equals
onnxruntime fp32's (a random-init model is less decided than a trained one, so agreement here is a lower bound).
The peak: `inference_throughput.matmul_peak_gflops(1)`, the best one-thread fp32 GEMM.

    .venv/bin/pip install --target /tmp/engines openvino==2026.4.1 openvino-telemetry nncf==3.4.0 --no-deps
    PYTHONPATH=/tmp/engines .venv/bin/python -m benchmarks.engines          # 384² window, 15 interleaved repeats
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.common import make_b0_bundle, median, sample_mosaic
from benchmarks.inference_throughput import describe_peak, matmul_peak_gflops, window_flops

log = logging.getLogger(__name__)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--window", type=int, default=384, help="window edge in pixels (a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=15, help="interleaved timed runs of each engine")
    args = parser.parse_args()
    try:
        import nncf
        import openvino as ov
    except ImportError:
        sys.exit("needs OpenVINO and NNCF, which lulc does not ship: see `python -m benchmarks.engines --help`")
    import onnxruntime as ort
    import torch

    from lulc_core.bundle import ModelBundle
    from lulc_core.decoder_fold import FoldedSegformer
    from lulc_core.quantization import CalibrationChips, quantize_onnx

    win = args.window
    with tempfile.TemporaryDirectory(prefix="lulc-engines-") as tmp_name:
        tmp = Path(tmp_name)
        bundle_dir = make_b0_bundle(tmp / "bundle", onnx=True)
        bundle = ModelBundle.load(bundle_dir)
        meta = bundle.metadata
        mean = np.asarray(meta.normalisation.mean, np.float32)[:, None, None]
        std = np.asarray(meta.normalisation.std, np.float32)[:, None, None]
        image = (np.nan_to_num(sample_mosaic(2 * win, 2 * win)) - mean) / std
        spots = [(r, c) for r in range(0, win + 1, win // 4) for c in range(0, win + 1, win // 4)][:32]
        windows = [np.ascontiguousarray(image[None, :, r : r + win, c : c + win]) for r, c in spots]
        chips = CalibrationChips([w[0, :, : meta.chip_size, : meta.chip_size] for w in windows])
        fp32, int8 = bundle_dir / "model.onnx", tmp / "model.int8.onnx"
        quantize_onnx(fp32, int8, chips)

        def ort_session(path: Path) -> Callable[[np.ndarray], np.ndarray]:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            return lambda x: session.run(["logits"], {"pixel_values": x})[0]  # type: ignore[no-any-return]

        core = ov.Core()

        def ov_model() -> object:
            model = core.read_model(str(fp32))
            model.reshape([1, len(meta.bands), win, win])
            return model

        def ov_request(model: object, precision: str) -> Callable[[np.ndarray], np.ndarray]:
            config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "INFERENCE_PRECISION_HINT": precision}
            request = core.compile_model(model, "CPU", config).create_infer_request()
            return lambda x: request.infer({0: x})[0]  # type: ignore[no-any-return]

        nncf_int8 = nncf.quantize(ov_model(), nncf.Dataset(windows), model_type=nncf.ModelType.TRANSFORMER)
        engines = {
            "onnxruntime fp32 (the served default)": ort_session(fp32),
            "onnxruntime int8 (registration's model.int8.onnx)": ort_session(int8),
            "OpenVINO fp32": ov_request(ov_model(), "f32"),
            "OpenVINO bf16": ov_request(ov_model(), "bf16"),
            "OpenVINO int8 (NNCF)": ov_request(nncf_int8, "f32"),
        }
        reference = "onnxruntime fp32 (the served default)"
        x = windows[len(windows) // 2]
        classes = {name: run(x).argmax(1) for name, run in engines.items()}
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.repeats):
            for name, run in engines.items():
                t0 = time.perf_counter()
                run(x)
                times[name].append(time.perf_counter() - t0)
        flops, upsampling = window_flops(FoldedSegformer(bundle.model), len(meta.bands), win)
        torch.set_num_threads(1)
        rates = matmul_peak_gflops(1)
    peak = max(rates.values())
    counted = flops - upsampling
    base = median(times[reference])
    print(f"one {win}² window of b0 (15 bands) on one thread: {counted / 1e9:.2f} GFLOP (as the inference row counts)")
    print(f"one-thread fp32 GEMM peak {peak:.0f} GFLOP/s ({describe_peak(rates)})")
    print()
    print("| engine | ms per window | vs onnxruntime fp32 | share of the fp32 GEMM peak | agreement |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        t = median(ts)
        agreement = float((classes[name] == classes[reference]).mean())
        print(f"| {name} | {t * 1e3:.1f} | {base / t:.2f}x | {counted / t / 1e9 / peak:.2f} | {agreement:.4f} |")


if __name__ == "__main__":
    main()
