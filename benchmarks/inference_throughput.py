"""Benchmark 1 — inference: the served default end to end against the original utility's path, and the distance
to the machine's limit.

Same area, model and imagery for both: SegFormer-b0 (random init, seed 0, 15 bands, v3 label set), an area of
1024 x 1024 px at 10 m (512 with --quick) over a local GeoTIFF of the sample imagery mirror-tiled around it.

- lulc, the served default: `python -m serving` on 127.0.0.1 with the bundle as registration leaves it (model.onnx
  exported and verified at registration, so onnxruntime runs it) and the default serving settings (windows of at
  most 512 px, overlap 32, batch 2, 100 m edge buffer); one POST /segment/ per run (each with its own end date, so
  the idempotency cache never answers), timed until the GeoTIFF is back.
- Baseline, the original's path (GIScience/lulc-utility `app/route/segment.py` and `app/process.py`), in this process
  (no HTTP: in its favour): the buffered area's imagery from the same store in one read, its transform (NaN -> 0,
  normalise, add the batch axis), the whole image through the original's export (the transformers model's logits,
  decode head unfolded: `original_export`) in an onnxruntime session with the memory arena, memory
  patterns and memory reuse off (its `SessionOptions`), `scipy.special.softmax` and a masked argmax over the logits
  at the resolution its export emits (1/4: SegFormer's decoder output, `model.to_onnx` of `forward = model(x).logits`),
  the classes repeated 4x4 onto the pixel grid (the original writes the payload into a raster of the area's size), a
  GeoTIFF written, masked to the area and written again with the colour map, as `__compute_raster_response` does.
- Info: the same original path with the model in torch eager mode instead of onnxruntime.

Runs alternate (baseline, lulc) after a warm-up of each; medians. Distance to the limit: this machine's fp32 matmul
peak (2048² products, the best of 5 before and 5 after the runs: a peak measured only while other jobs load the
machine would flatter the share; on the threads the runtimes use; the best of torch.mm, onnxruntime's MatMul and
one-thread onnxruntime MatMuls side by side: on this AMD CPU torch.mm reaches about half of onnxruntime's MLAS GEMM,
so a torch.mm peak would flatter the share about twofold), the model's FLOPs per window from
`torch.utils.flop_counter.FlopCounterMode` (multiply-adds counted as 2) of the network the served default runs (decode
head folded, `lulc_core.decoder_fold`: about half the unfolded model's FLOPs, which the details also give), the
windows it runs for the area (overlap included), and the achieved share of the peak end to end. Info: the same
share for the model alone (one window through the served default's session on one thread, against the one-thread
peak), which shows how much of the distance lies in the network and how much around it; and, inside the network,
onnxruntime's per-node profile of that window (`operator_profile`): the matrix products' and convolutions' rate
while they run and their share of the window's operator time, which shows how much lies in the GEMMs and how much
in the memory-bound operators between them.

    .venv/bin/python -m benchmarks.inference_throughput            # 1024² px, 5 interleaved repeats
    .venv/bin/python -m benchmarks.inference_throughput --quick    # 512² px, 1 repeat
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.ma as ma
import rasterio
import requests
import torch
from rasterio.transform import from_origin

from benchmarks.common import (
    REPO,
    Row,
    Section,
    bench_main,
    interleaved,
    make_b0_bundle,
    median,
    progress,
    sample_mosaic,
    serving_process,
)

COMMAND = ".venv/bin/python -m benchmarks.inference_throughput"
START, END = date(2017, 10, 25), date(2017, 11, 4)
MARGIN_PX = 64  # imagery beyond the area (the edge buffer is 10 px)


def write_imagery(directory: Path, bounds: tuple[float, float, float, float]) -> Path:
    """The sample patch's 15 bands mirror-tiled over `bounds` (EPSG:32632) plus a margin, one 10 m GeoTIFF."""
    from serving_helpers import BANDS

    x0, y1 = bounds[0] - MARGIN_PX * 10, bounds[3] + MARGIN_PX * 10
    width = math.ceil((bounds[2] - bounds[0]) / 10) + 2 * MARGIN_PX
    height = math.ceil((bounds[3] - bounds[1]) / 10) + 2 * MARGIN_PX
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": len(BANDS), "dtype": "float32",
        "crs": "EPSG:32632", "transform": from_origin(x0, y1, 10.0, 10.0), "tiled": True,
    }  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "area.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(sample_mosaic(height, width))
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(ACQUISITION_DATE="2017-10-30")
    return path


def original_export(bundle: Any, target: Path) -> Path:
    """The original's export: the transformers model's logits as they are (`model.to_onnx` of `model(x).logits`),
    decode head unfolded, with dynamic batch and size (lulc's `model.onnx` has its decode head folded)."""
    import warnings

    from lulc_core.decoder_fold import LogitsOnly

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsOnly(bundle.model.eval()),
            (torch.zeros(1, len(bundle.metadata.bands), 64, 64),),
            str(target),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={"pixel_values": {0: "batch", 2: "h", 3: "w"}, "logits": {0: "batch", 2: "h4", 3: "w4"}},
            opset_version=17,
            dynamo=False,
        )
    return target


def original_session(onnx_path: Path, threads: int) -> Any:
    """The original's session options: memory arena, memory patterns and memory reuse off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = False
    options.enable_mem_reuse = False
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class OriginalPath:
    """The original utility's request path (see the module docstring) on lulc's imagery store and bundle."""

    def __init__(self, bundle: Any, store: Any, bbox: Any, logits: Callable[[np.ndarray], np.ndarray]) -> None:
        from lulc_core.geo import Tile, tile_for_bbox

        self.store, self.bbox, self.logits = store, bbox, logits
        meta = bundle.metadata
        self.bands = meta.bands
        self.mean = np.asarray(meta.normalisation.mean, np.float32)[:, None, None]
        self.std = np.asarray(meta.normalisation.std, np.float32)[:, None, None]
        self.colormap = meta.label_set.colormap()
        tile = tile_for_bbox(bbox, 10.0, START, END)
        buf = 100.0  # the original's edge_smoothing_buffer, lulc's edge_buffer_m default
        w, s, e, n = tile.bounds
        self.tile = Tile(id="original", crs=tile.crs, bounds=(w - buf, s - buf, e + buf, n + buf), resolution=10.0,
                         start=START, end=END)  # fmt: skip

    def __call__(self) -> bytes:
        from rasterio.io import MemoryFile
        from rasterio.mask import mask
        from scipy.special import softmax
        from shapely.geometry import box, mapping

        raster = self.store.fetch(self.tile, self.bands)
        x = np.nan_to_num(np.asarray(raster.data, np.float32))
        x = ((x - self.mean) / self.std)[None]
        logits = self.logits(x)[0]  # (classes, h/4, w/4)
        pred = softmax(logits, axis=0)
        labels = ma.argmax(ma.array(pred, mask=pred < 0.0), axis=0, fill_value=0).astype(np.uint8)
        h, w = x.shape[-2:]
        payload = np.repeat(np.repeat(labels, 4, axis=0), 4, axis=1)[:h, :w]
        profile = {"driver": "GTiff", "height": h, "width": w, "count": 1, "dtype": "uint8", "crs": raster.crs,
                   "transform": raster.transform}  # fmt: skip
        clip = box(*self.tile.bounds).buffer(-100.0)
        with MemoryFile() as first:
            with first.open(**profile) as dst:
                dst.write(payload, 1)
            with first.open() as src:
                masked, transform = mask(src, shapes=[mapping(clip)], crop=True)
            with MemoryFile() as second:
                with second.open(**{**profile, "height": masked.shape[1], "width": masked.shape[2],
                                    "transform": transform}) as dst:  # fmt: skip
                    dst.write(masked)
                    dst.write_colormap(1, self.colormap)
                return bytes(second.read())


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's fp32 matmul rate on `threads` threads, by three GEMMs (GFLOP/s of n x n products, the best of
    `repeats` each): torch.mm on that many torch threads, onnxruntime's MatMul (MLAS, the served default's GEMM)
    with that many intra-op threads, and that many one-thread onnxruntime MatMuls at once (how the served default
    runs its windows). The peak is the best of them: on this AMD CPU torch's BLAS reaches about half of MLAS's
    rate, so torch.mm alone would understate the peak and flatter the share."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, n]) for name in ("a", "b")]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        inputs,
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8

    def session(intra: int) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    wide, single = session(threads), session(1)
    feeds = {"a": a, "b": b}
    pool = ThreadPoolExecutor(threads)
    products: dict[str, tuple[Callable[[], object], int]] = {
        "torch.mm": (lambda: torch.mm(ta, tb), 1),
        "onnxruntime MatMul": (lambda: wide.run(None, feeds), 1),
    }
    if threads > 1:
        products[f"{threads} one-thread onnxruntime MatMuls at once"] = (
            lambda: list(pool.map(lambda _: single.run(None, feeds), range(threads))),
            threads,
        )
    rates = {}
    try:
        for name, (product, count) in products.items():
            product()
            best = math.inf
            for _ in range(repeats):
                t0 = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - t0)
            rates[name] = count * 2 * n**3 / best / 1e9
    finally:
        pool.shutdown()
        torch.set_num_threads(torch_threads)
    return rates


def best_rates(*runs: dict[str, float]) -> dict[str, float]:
    """Each GEMM's best rate over several `matmul_peak_gflops` runs (before and after the timed runs)."""
    return {name: max(run[name] for run in runs) for name in runs[0]}


def describe_peak(rates: dict[str, float]) -> str:
    """'name X, name Y, ...' GFLOP/s of each GEMM, the best first."""
    return ", ".join(f"{name} {rate:.0f}" for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]))


def model_alone_seconds(bundle_dir: Path, window: int, repeats: int) -> float:
    """Median seconds of one window through the served default's own session (`logits_function`) on one thread,
    as each of the predictor's workers runs it; random input, after a warm-up."""
    from lulc_core.bundle import ModelBundle
    from lulc_core.inference.runtime import logits_function

    bundle = ModelBundle.load(bundle_dir)
    logits = logits_function(bundle, threads=1)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, len(bundle.metadata.bands), window, window)))
    x = x.float()
    logits(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits(x)
        times.append(time.perf_counter() - t0)
    return median(times)


GEMM_OPS = ("MatMul", "FusedMatMul", "Gemm", "Conv", "FusedConv")
"""onnxruntime kernels that are matrix products or convolutions (the FLOPs the peak is about)."""


@dataclass
class OperatorProfile:
    """Where one window's time goes inside the served default's session (onnxruntime's own per-node profile)."""

    gemm_flops: float
    """FLOPs of the matrix products and convolutions, from the shapes they ran at (a multiply-add counts 2)."""
    gemm_seconds: float
    """Their kernel time per window."""
    kernel_seconds: float
    """Every node's kernel time per window."""
    seconds_by_op: dict[str, float]
    """Kernel time per window by operator type."""


def node_flops(op: str, inputs: list[list[int]], output: list[int]) -> float:
    """FLOPs of a matrix product or convolution node from the shapes onnxruntime's profile records. A product's
    inner dimension is the first input's elements per output row (a transposed input has the same count); a
    constant (pre-packed) weight is not listed and is not needed. A convolution's weight is [out, in/groups, k...]."""
    out = math.prod(output)
    if op in ("Conv", "FusedConv"):
        return 2.0 * out * math.prod(inputs[1][1:])
    return 2.0 * out * (math.prod(inputs[0]) / math.prod(output[:-1]))


def operator_profile(bundle_dir: Path, window: int, repeats: int) -> OperatorProfile:
    """Profile one window on one thread in a session of the bundle's served ONNX file with the predictor's own
    options (`session_options`), medians over `repeats` runs after a warm-up."""
    import onnxruntime as ort

    from lulc_core.bundle import ModelBundle
    from lulc_core.inference.runtime import onnx_file, session_options

    bundle = ModelBundle.load(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="lulc-bench-prof-") as tmp:
        options = session_options(1)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "window")
        session = ort.InferenceSession(str(onnx_file(bundle)), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal((1, len(bundle.metadata.bands), window, window))
        feeds = {"pixel_values": x.astype(np.float32)}
        session.run(None, feeds)  # warm-up (its events are dropped below: only the last `repeats` runs count)
        for _ in range(repeats):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_node: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_node[event["name"]].append(event)
    gemm_flops = gemm_seconds = kernel_seconds = 0.0
    by_op: dict[str, float] = defaultdict(float)
    for runs in per_node.values():
        args = runs[-1]["args"]
        seconds = median(e["dur"] for e in runs[-repeats:]) / 1e6
        kernel_seconds += seconds
        by_op[args["op_name"]] += seconds
        if args["op_name"] in GEMM_OPS:
            shapes = [next(iter(d.values())) for d in args["input_type_shape"]]
            output = next(iter(args["output_type_shape"][0].values()))
            gemm_flops += node_flops(args["op_name"], shapes, output)
            gemm_seconds += seconds
    return OperatorProfile(gemm_flops, gemm_seconds, kernel_seconds, dict(by_op))


def window_flops(model: torch.nn.Module, channels: int, window: int) -> tuple[float, float]:
    """FLOPs of one forward pass of a window (FlopCounterMode: a multiply-add counts 2), and how many of them are
    the folded head's upsampling products (its matrix products; its convolutions are the model's work)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, channels, window, window))
    head = counter.get_flop_counts().get(f"{type(model).__name__}.head", {})
    upsampling = sum(v for op, v in head.items() if "convolution" not in str(op))
    return float(counter.get_total_flops()), float(upsampling)


def served_windows(height: int, width: int, window: int, overlap: int, buffer_px: int) -> tuple[int, int]:
    """(windows, window edge) the served default runs for an area (edge buffer on every side; square areas)."""
    from lulc_core.inference.predictor import DEFAULT_BLOCK_PX
    from lulc_core.inference.windows import plan_axis

    rows = plan_axis(height + 2 * buffer_px, window, overlap, DEFAULT_BLOCK_PX)
    cols = plan_axis(width + 2 * buffer_px, window, overlap, DEFAULT_BLOCK_PX)
    return len(rows.origins) * len(cols.origins), rows.window


def int8_against_fp32(bundle_dir: Path, mosaic: np.ndarray, window: int, batch: int, repeats: int) -> dict[str, Any]:
    """int8 vs fp32 ONNX through the predictor's own sessions (`lulc_core.inference.runtime`), in this run.

    The bundle is quantised as registration does (`lulc_core.quantization.quantize_onnx`), calibrated on 32 chips
    of the benchmark's imagery; both runtimes then predict the same batches of `batch` windows of `window`²,
    alternately after a warm-up; medians. Agreement: share of pixels with the same class (classes 1..N).
    """
    import shutil

    from lulc_core.bundle import INT8_FILE, ONNX_FILE, ModelBundle
    from lulc_core.inference.runtime import logits_function
    from lulc_core.quantization import CalibrationChips, quantize_onnx

    meta = ModelBundle.read_metadata(bundle_dir)
    mean = np.asarray(meta.normalisation.mean, np.float32)[:, None, None]
    std = np.asarray(meta.normalisation.std, np.float32)[:, None, None]
    x = (np.nan_to_num(mosaic.astype(np.float32)) - mean) / std
    chip = meta.chip_size
    _, h, w = x.shape
    spots = [(r, c) for r in range(0, h - chip + 1, chip) for c in range(0, w - chip + 1, chip)]
    chips = [x[:, r : r + chip, c : c + chip] for r, c in spots[:: max(1, len(spots) // 32)][:32]]
    int8_dir = bundle_dir.parent / "bundle-int8"
    shutil.copytree(bundle_dir, int8_dir)
    quantize_onnx(bundle_dir / ONNX_FILE, int8_dir / INT8_FILE, CalibrationChips(chips))
    runtimes = {
        "fp32": logits_function(ModelBundle.load(bundle_dir)),
        "int8": logits_function(ModelBundle.load(int8_dir)),
    }
    batch_x = torch.from_numpy(np.ascontiguousarray(np.stack([x[:, :window, :window]] * batch)))
    classes: dict[str, torch.Tensor] = {}
    times: dict[str, list[float]] = {}
    for name, fn in runtimes.items():  # warm-up, and the classes compared
        classes[name] = fn(batch_x)[:, 1:].argmax(dim=1)
        times[name] = []
    for _ in range(repeats):
        for name, fn in runtimes.items():
            t0 = time.perf_counter()
            fn(batch_x)
            times[name].append(time.perf_counter() - t0)
    px = batch * window * window
    return {
        "fp32_pxs": px / median(times["fp32"]),
        "int8_pxs": px / median(times["int8"]),
        "agreement": float((classes["fp32"] == classes["int8"]).float().mean()),
        "times": {k: [round(t, 3) for t in v] for k, v in times.items()},
    }


def run(quick: bool = False) -> Section:
    """Start the predictor, then the original's path and a request to it alternately; the limit; the rows."""
    from serving_helpers import write_run_config

    from benchmarks.serving_memory import area_bbox
    from lulc_core.bundle import ModelBundle
    from lulc_core.config import ServingConfig
    from lulc_core.decoder_fold import FoldedSegformer, LogitsOnly
    from lulc_core.geo import BBox
    from lulc_core.imagery.local import LocalGeoTiffStore

    size = 512 if quick else 1024
    repeats = 1 if quick else 5
    threads = torch.get_num_threads()
    defaults = ServingConfig()
    section = Section("1. Inference, served end to end", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lulc-bench-inf-") as tmp_name:
        tmp = Path(tmp_name)
        progress(f"inference: b0 bundle with model.onnx (as registration exports it), {size}² px area")
        bundle_dir = make_b0_bundle(tmp / "bundle", onnx=True)
        bundle = ModelBundle.load(bundle_dir)
        bbox_list, bounds = area_bbox(size)
        bbox = BBox.from_sequence(bbox_list, "bbox")
        write_imagery(tmp / "imagery", bounds)
        serving = {k: getattr(defaults, k) for k in ("window", "overlap", "batch_size", "edge_buffer_m")}
        config = write_run_config(tmp / "run.yaml", tmp / "work", **serving, max_pixels=4 * size * size)
        config.write_text(config.read_text().replace(str(REPO / "data" / "sample" / "imagery"), str(tmp / "imagery")))
        store = LocalGeoTiffStore(tmp / "imagery")
        session = original_session(original_export(bundle, tmp / "original.onnx"), threads)
        original = OriginalPath(bundle, store, bbox, lambda x: session.run(None, {"pixel_values": x})[0])

        def torch_logits(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return bundle.model(pixel_values=torch.from_numpy(x)).logits.numpy()  # type: ignore[no-any-return]

        original_torch = OriginalPath(bundle, store, bbox, torch_logits)
        body = {"area_coords": bbox_list, "start_date": str(START), "end_date": str(END)}
        with serving_process(bundle_dir, config, tmp / "server.log") as (url, _pid):
            days = iter(range(1000))

            def served() -> bytes:
                # a new end date each time: the predictor's idempotency cache must not answer a repeated request
                end = END + timedelta(days=next(days))
                response = requests.post(url + "/segment/", json={**body, "end_date": str(end)}, timeout=3600)
                if response.status_code != 200:
                    raise RuntimeError(f"/segment/ answered {response.status_code}: {response.text[:300]}")
                return response.content

            peak_before = matmul_peak_gflops(threads)
            progress(f"inference: original path vs served default, {repeats} interleaved repeats")
            base_t, ours_t, base_tif, ours_tif = interleaved(original, served, repeats)
            progress("inference: original path with torch eager (info)")
            torch_t, _, _, _ = interleaved(original_torch, served, max(1, repeats // 2))
        with rasterio.io.MemoryFile(ours_tif) as mem, mem.open() as src:
            served_shape, served_runtime_ok = (src.height, src.width), src.count == 1
        progress("inference: fp32 matmul peak and the model's FLOPs")
        rates = best_rates(peak_before, matmul_peak_gflops(threads))
        peak = max(rates.values())
        buffer_px = math.ceil(defaults.edge_buffer_m / 10.0)
        windows, win = served_windows(served_shape[0], served_shape[1], defaults.window, defaults.overlap, buffer_px)
        run_window, upsampling = window_flops(FoldedSegformer(bundle.model), len(bundle.metadata.bands), win)
        per_window = run_window - upsampling  # bilinear upsampling counts zero, as torch counts F.interpolate
        per_window_unfolded, _ = window_flops(LogitsOnly(bundle.model), len(bundle.metadata.bands), win)
        progress("inference: the model alone, one window on one thread")
        alone = model_alone_seconds(bundle_dir, win, 3 if quick else 12)
        profile = operator_profile(bundle_dir, win, 3 if quick else 12)
        rates_one = matmul_peak_gflops(1)
        peak_one = max(rates_one.values())
        progress("inference: int8 vs fp32 ONNX (the predictor's sessions), interleaved")
        mosaic = sample_mosaic(defaults.window * 2, defaults.window * 2)
        q = int8_against_fp32(bundle_dir, mosaic, defaults.window, defaults.batch_size, 3 if quick else 9)

    px = served_shape[0] * served_shape[1]
    base_pxs, ours_pxs, torch_pxs = px / median(base_t), px / median(ours_t), px / median(torch_t)
    achieved = per_window * windows / median(ours_t) / 1e9
    share = achieved / peak
    achieved_unfolded = per_window_unfolded * windows / median(ours_t) / 1e9
    alone_gflops = per_window / alone / 1e9
    model_part = windows * alone / threads / median(ours_t)  # the request's time the windows would fill at that rate
    gemm_gflops = profile.gemm_flops / profile.gemm_seconds / 1e9
    gemm_part = profile.gemm_seconds / profile.kernel_seconds
    others = sorted(((op, t) for op, t in profile.seconds_by_op.items() if op not in GEMM_OPS), key=lambda kv: -kv[1])
    slowest_others = ", ".join(f"{op} {t / profile.kernel_seconds:.0%}" for op, t in others[:6])
    original_name = "original: whole image, onnxruntime (arenas off), 1/4-res post-processing"
    section.rows += [
        Row(
            "1 inference",
            f"px/s, served default end to end: POST /segment/ -> GeoTIFF, b0 15 bands {size}²",
            round(base_pxs),
            round(ours_pxs),
            ours_pxs / base_pxs,
            ">= 2.5x",
            ours_pxs / base_pxs >= 2.5,
            f"median of {repeats} interleaved runs, {threads} threads both; lulc: python -m serving, onnxruntime "
            f"(model.onnx from registration), window {defaults.window} / overlap {defaults.overlap} / batch "
            f"{defaults.batch_size}; the baseline runs in-process (no HTTP)",
            baseline_name=original_name,
        ),
        Row(
            "1 inference",
            f"px/s, served default end to end, b0 15 bands {size}² (info)",
            round(torch_pxs),
            round(ours_pxs),
            ours_pxs / torch_pxs,
            "info",
            None,
            "the original's path with the model in torch eager mode",
            baseline_name="original path, torch eager",
        ),
        Row(
            "1 inference",
            "share of the fp32 matmul peak, served default end to end (b0 fp32)",
            round(peak, 1),
            round(achieved, 1),
            share,
            ">= 0.7x",
            share >= 0.7,
            f"GFLOP/s; the model's FLOPs as run: {per_window / win**2:,.0f} FLOP/px at the {win}² window "
            f"({per_window / 1e9:.2f} GFLOP; decode head folded, lulc_core.decoder_fold; unfolded "
            f"{per_window_unfolded / win**2:,.0f} FLOP/px; not counted: the {upsampling / win**2:,.0f} FLOP/px of "
            "the folded head's upsampling products, bilinear interpolation as dense matrices), "
            f"{windows} windows for {served_shape[0]}x{served_shape[1]} px + {buffer_px} px edge buffer; peak: the "
            f"best fp32 GEMM of 2048² on {threads} threads, before and after the runs (GFLOP/s: {describe_peak(rates)}); "
            "the served default runs "
            f"{threads} one-thread onnxruntime calls at once",
            baseline_name="fp32 matmul peak GFLOP/s",
        ),
        Row(
            "1 inference",
            "the unfolded model's FLOPs per second over the fp32 matmul peak (info: not a utilisation)",
            round(peak, 1),
            round(achieved_unfolded, 1),
            achieved_unfolded / peak,
            "info",
            None,
            f"GFLOP/s of the transformers model's FLOPs ({per_window_unfolded / win**2:,.0f} FLOP/px), whose logits the "
            "folded graph reproduces: the rate at which the served default delivers the original model's work. Not "
            "a utilisation: the fold skips most of those FLOPs, so it can exceed 1; the target row counts the FLOPs "
            "run",
            baseline_name="fp32 matmul peak GFLOP/s",
        ),
        Row(
            "1 inference",
            f"share of the one-thread fp32 matmul peak, the served model alone: one {win}² window on one thread (info)",
            round(peak_one, 1),
            round(alone_gflops, 1),
            alone_gflops / peak_one,
            "info",
            None,
            f"GFLOP/s of the FLOPs the target row counts, median of {3 if quick else 12} runs of the predictor's "
            f"own session ({alone * 1e3:.1f} ms per window); peak: the best fp32 GEMM of 2048² on one thread ({describe_peak(rates_one)}). Where the end-to-end "
            f"share is lost: at this rate the {windows} windows would fill {model_part:.0%} of the request's time on "
            f"{threads} threads; the rest goes to reading and normalising the imagery, blending the windows, the "
            "classes, the GeoTIFF and HTTP, and to the threads sharing the machine",
            baseline_name="fp32 matmul peak GFLOP/s, one thread",
        ),
        Row(
            "1 inference",
            f"share of the one-thread fp32 matmul peak, the served model's matrix products and convolutions while they "
            f"run, one {win}² window (info)",
            round(peak_one, 1),
            round(gemm_gflops, 1),
            gemm_gflops / peak_one,
            "info",
            None,
            f"GFLOP/s of the matrix-product and convolution kernels in onnxruntime's per-node profile of the served "
            f"session on one thread ({profile.gemm_flops / 1e9:.2f} GFLOP from the shapes they ran at, the folded head's upsampling "
            f"products included, in "
            f"{profile.gemm_seconds * 1e3:.1f} ms). They take {gemm_part:.0%} of the window's operator time "
            f"({profile.kernel_seconds * 1e3:.1f} ms); the rest is operators with few FLOPs that move the "
            f"activations (by time: {slowest_others}). The distance to the peak is in those operators, not in the "
            "GEMMs",
            baseline_name="fp32 matmul peak GFLOP/s, one thread",
        ),
        Row(
            "1 inference",
            f"px/s, int8 vs fp32 ONNX, b0 {defaults.batch_size} x {defaults.window}² windows (agreement "
            f"{q['agreement']:.3f})",
            round(q["fp32_pxs"]),
            round(q["int8_pxs"]),
            q["int8_pxs"] / q["fp32_pxs"],
            ">= 1.5x",
            q["int8_pxs"] / q["fp32_pxs"] >= 1.5,
            f"medians of {3 if quick else 9} interleaved runs, {threads} threads, the predictor's onnxruntime "
            "sessions (model.onnx vs model.int8.onnx, both with the decode head folded: static QDQ of the MatMuls with "
            "constant weights (lulc_core.quantization.int8_nodes), calibrated on 32 chips of the "
            "imagery); agreement of a random-init model's classes (the trained model's agreement and test mIoU "
            "are checked at registration: docs/performance.md)",
            baseline_name="lulc fp32 ONNX",
        ),
    ]
    section.details += [
        f"int8 vs fp32 seconds per batch: {q['times']}",
        f"seconds per run: original (onnxruntime) {[round(t, 2) for t in base_t]}, served default "
        f"{[round(t, 2) for t in ours_t]}, original (torch eager) {[round(t, 2) for t in torch_t]}",
        f"served GeoTIFF {served_shape[1]}x{served_shape[0]} px ({len(ours_tif) / 1024:.0f} KiB, one band: "
        f"{served_runtime_ok}); original's GeoTIFF {len(base_tif) / 1024:.0f} KiB",
    ]
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "512² px and one repeat (smoke run).")


if __name__ == "__main__":
    main()
