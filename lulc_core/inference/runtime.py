"""Which engine runs the bundle's network: its `model.onnx` in onnxruntime, or the torch model.

`logits_function(bundle, runtime)` returns a function from a normalised batch (B, bands, h, w) to the network's
logits at 1/4 resolution (B, classes, h/4, w/4):

- "onnx": the bundle's `model.int8.onnx` when it has one (`registry.onnx_quantization: int8`, checked against fp32
  by `lulc_core.quantization`), else its `model.onnx` (written by `lulc_core.bundle.export_onnx`, verified against
  torch there), in an onnxruntime session with its memory arena on (buffers are reused from one window to the next
  instead of being allocated per operator) and memory patterns off (a pattern is one more block per input shape,
  kept beside the arena: SegFormer-b0 at 2 x 512² px holds 377 MB with it, 193 MB without, at the same speed).
  The predictor runs one batch per torch thread at once, each call on one thread (`parallel_batches`): SegFormer
  has many small operators, and two threads sharing each of them spend much of a call waiting for each other;
- "torch": the bundle's torch model with its decode head folded (`lulc_core.decoder_fold`, as in model.onnx)
  under `torch.inference_mode`;
- "auto" (default): onnx when the bundle has a `model.onnx` matching its bands and classes, the model is on
  the CPU and the precision is fp32, torch otherwise. On CPU, onnxruntime runs a window about twice as fast as torch.

`precision` ("fp32", "bf16", "fp16"; `serving.precision`) runs the torch model under `torch.autocast` on its device
(mixed precision: matmuls and convolutions in 16 bits, reductions in fp32); the logits come back as float32.

Sessions are created once per bundle and thread count and shared by all predictions (session.run is
thread-safe).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from lulc_core.bundle import INT8_FILE, ONNX_FILE, ModelBundle
from lulc_core.decoder_fold import inference_network
from lulc_core.errors import ConfigError, InputError

log = logging.getLogger(__name__)

Runtime = Literal["auto", "torch", "onnx"]
RUNTIMES: tuple[str, ...] = ("auto", "torch", "onnx")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

LogitsFunction = Callable[[torch.Tensor], torch.Tensor]
"""Normalised batch (B, bands, h, w) -> logits (B, classes, h/4, w/4)."""

_sessions: weakref.WeakKeyDictionary[ModelBundle, dict[int, Any]] = weakref.WeakKeyDictionary()
_sessions_lock = threading.Lock()


def _device_is_cpu(bundle: ModelBundle) -> bool:
    try:
        return next(bundle.model.parameters()).device.type == "cpu"
    except StopIteration:
        return True


def onnx_file(bundle: ModelBundle) -> Path:
    """The ONNX file the predictor runs: model.int8.onnx when the bundle has one, else model.onnx."""
    int8 = bundle.path / INT8_FILE
    return int8 if int8.is_file() else bundle.path / ONNX_FILE


def engine(bundle: ModelBundle, runtime: str, precision: str = "fp32") -> str:
    """What runs the network, for the outputs' tags: 'onnxruntime:model.int8.onnx', 'torch:bf16', ..."""
    if resolve_runtime(bundle, runtime, precision) == "onnx":
        return f"onnxruntime:{onnx_file(bundle).name}"
    return f"torch:{precision}"


def _session(bundle: ModelBundle, threads: int) -> Any:
    """The bundle's onnxruntime session running each call on `threads` threads (created once)."""
    import onnxruntime as ort

    with _sessions_lock:
        per_bundle = _sessions.setdefault(bundle, {})
        session = per_bundle.get(threads)
        if session is None:
            options = session_options(threads)
            path = onnx_file(bundle)
            try:
                session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
                raise ConfigError(
                    str(path), f"onnxruntime cannot load it: {exc}", "re-export: lulc model export-onnx"
                ) from exc
            _check_session(session, bundle)
            per_bundle[threads] = session
            log.info("inference on onnxruntime: %s (threads per call: %d)", path, threads)
        return session


def session_options(threads: int) -> Any:
    """The onnxruntime session options the predictor runs its sessions with (`threads` per call; see the module
    docstring). Benchmarks profile a session built with these, so they measure the served configuration."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = True
    options.enable_mem_pattern = False  # see the module docstring: half the memory, same speed
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle threads sleep instead of spinning: spinning burns a pod's CPU quota and, on shared cores,
    # the time of the very threads it waits for
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # one memory arena for the sessions of every thread count (each keeps what it once needed otherwise)
    _register_shared_arena()
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


@functools.cache
def _register_shared_arena() -> None:
    """Register onnxruntime's process-wide CPU arena once (sessions opt in with `session.use_env_allocators`)."""
    import onnxruntime as ort

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, None)


def _check_session(session: Any, bundle: ModelBundle) -> None:
    """The ONNX model must take the bundle's bands and predict its classes (a stale export would not)."""
    meta = bundle.metadata
    channels = session.get_inputs()[0].shape[1]
    classes = session.get_outputs()[0].shape[1]
    n_out = int(getattr(getattr(bundle.model, "config", None), "num_labels", meta.label_set.num_classes))
    if channels != len(meta.bands) or classes != n_out:
        raise ConfigError(
            str(onnx_file(bundle)),
            f"takes {channels} channels and predicts {classes} classes, the bundle has {len(meta.bands)} bands "
            f"and {n_out} outputs",
            "re-export it from the bundle's weights: lulc model export-onnx",
        )


def resolve_runtime(bundle: ModelBundle, runtime: str = "auto", precision: str = "fp32") -> str:
    """ "onnx" or "torch": what `runtime` means for this bundle (see the module docstring).

    Raises:
        InputError: unknown runtime or precision, or "onnx" for a bundle without model.onnx, with the model off the
            CPU or with a precision other than fp32.
    """
    if runtime not in RUNTIMES:
        raise InputError("runtime", f"{runtime!r} is not a runtime", f"use one of {list(RUNTIMES)}")
    if precision != "fp32" and precision not in AUTOCAST_DTYPES:
        raise InputError("serving.precision", f"{precision!r} is not a precision", "use fp32, bf16 or fp16")
    has_onnx = onnx_file(bundle).is_file()
    if runtime == "auto":
        if not has_onnx or not _device_is_cpu(bundle) or precision != "fp32":
            return "torch"
        try:
            import onnxruntime  # noqa: F401
        except ImportError:  # pragma: no cover - onnxruntime is a dependency
            return "torch"
        return "onnx"
    if runtime == "onnx" and not has_onnx:
        raise InputError(
            "runtime", f"the bundle {bundle.path} has no {ONNX_FILE}", "export it: lulc model export-onnx, or use torch"
        )
    if runtime == "onnx" and not _device_is_cpu(bundle):
        raise InputError("runtime", "onnxruntime runs on the CPU here but the model is on a GPU", "use torch")
    if runtime == "onnx" and precision != "fp32":
        raise InputError("serving.precision", f"onnxruntime runs fp32, not {precision}", "use fp32 or runtime torch")
    return runtime


def parallel_batches(bundle: ModelBundle, runtime: str = "auto", precision: str = "fp32") -> int:
    """How many batches to predict at once: on onnxruntime one per torch thread, each run on one thread (no
    synchronisation between the threads of every operator: SegFormer's many small operators keep two threads of one
    run waiting for each other); 1 on torch, whose operators use every thread themselves."""
    return torch.get_num_threads() if resolve_runtime(bundle, runtime, precision) == "onnx" else 1


def logits_function(
    bundle: ModelBundle, runtime: str = "auto", precision: str = "fp32", threads: int | None = None
) -> LogitsFunction:
    """The bundle's network as batch -> 1/4-resolution float32 logits, on the chosen runtime and precision.

    `threads`: onnxruntime's threads per call (default: torch's thread count); the predictor calls it from
    `parallel_batches` threads at once with `threads=1`."""
    if resolve_runtime(bundle, runtime, precision) == "onnx":
        session = _session(bundle, threads or torch.get_num_threads())

        def run_onnx(x: torch.Tensor) -> torch.Tensor:
            batch = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
            return torch.from_numpy(session.run(["logits"], {"pixel_values": batch})[0])

        return run_onnx

    model = inference_network(bundle.model.eval())
    device = next(model.parameters()).device

    dtype = AUTOCAST_DTYPES.get(precision)

    def run_torch(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return model(x.to(device)).float()  # type: ignore[no-any-return]

    return run_torch
