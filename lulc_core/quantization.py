"""int8 ONNX for the predictor: static quantisation of a bundle's `model.onnx`, calibrated on training chips and
checked against fp32 on the test tiles before it may be served.

`quantize_bundle` (`registry.onnx_quantization: int8`; run after evaluation by `lulc run` and the pipeline's
evaluate step, before registration):

1. `model.onnx` (exported and verified against torch unless a verified export of these weights is there) goes
   through onnxruntime's `quant_pre_process` (symbolic shape inference, graph optimisation), then
   `quantize_static` in QDQ format of the nodes `int8_nodes` chooses (the MatMuls with constant weights): int8
   weights per output channel, uint8 activations whose ranges come from a `CalibrationDataReader` over
   `data.chip_size` chips of the *training* tiles (never the test tiles).
2. fp32 and int8 sessions predict every test tile whole; the share of pixels with the same class (agreement) and
   each one's test mIoU (torchmetrics, as `lulc_core.evaluation`) are compared.
3. Accepted (agreement >= `int8_min_agreement` and mIoU drop <= `int8_max_miou_drop`): `model.int8.onnx` is written
   into the bundle and the predictor serves it. Rejected: no int8 file, one warning line with the reason, and the
   version is served in fp32 (registration goes on: the fp32 model was verified on its own).

Either way the figures go into lulc.json `metrics["int8"]` (agreement, miou, miou_fp32, miou_delta, accepted), so
the registry records them with the version (`int8/agreement`, ... metrics and `lulc.metric.int8/...` tags).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lulc_core.bundle import INT8_FILE, BundleMetadata, ModelBundle, export_onnx
from lulc_core.dataset import chip_offsets
from lulc_core.errors import InputError
from lulc_core.raster import atomic_path

if TYPE_CHECKING:
    from lulc_core.config import RegistryConfig
    from lulc_core.split import TileSplit

log = logging.getLogger(__name__)

METRICS_KEY = "int8"
"""Key of the int8 figures in lulc.json `metrics` (and prefix of the registered metrics)."""


class Int8Report(BaseModel):
    """The int8 model against fp32 ONNX on the test tiles."""

    model_config = ConfigDict(extra="forbid")

    accepted: bool = Field(description="Whether model.int8.onnx is in the bundle (served instead of fp32).")
    reason: str = Field(description="Why it was accepted or rejected, in one line.")
    agreement: float = Field(description="Share of test pixels whose int8 class equals fp32's.")
    miou: float = Field(description="Test mIoU of the int8 model.")
    miou_fp32: float = Field(description="Test mIoU of the fp32 ONNX model.")
    miou_delta: float = Field(description="miou - miou_fp32 (negative: int8 is worse).")
    calibration_chips: int = Field(description="Training chips used for calibration.")
    test_tiles: int = Field(description="Test tiles compared.")


class CalibrationChips:
    """Normalised chips (1, C, h, w) that calibrate the int8 ranges; `reader()` feeds them to onnxruntime."""

    def __init__(self, chips: Sequence[np.ndarray]) -> None:
        self.chips = [_padded(c)[None] for c in chips]

    def reader(self) -> Any:
        """A fresh onnxruntime CalibrationDataReader over the chips (onnxruntime is imported here, lazily)."""
        from onnxruntime.quantization import CalibrationDataReader

        chips = self.chips

        class _Reader(CalibrationDataReader):  # type: ignore[misc]
            def __init__(self) -> None:
                self._it: Iterator[np.ndarray] = iter(chips)

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self._it, None)
                return None if x is None else {"pixel_values": x}

        return _Reader()


def training_chips(
    meta: BundleMetadata, imagery_dir: Path, labels_dir: Path, tile_ids: Sequence[str], limit: int
) -> CalibrationChips:
    """Up to `limit` chips (`meta.chip_size`, as in training) of the training tiles, evenly spread over them."""
    from lulc_core.evaluation import read_tile

    if not tile_ids:
        raise InputError("split.train", "no training tiles to calibrate int8 on", "train on at least one tile")
    chip = meta.chip_size
    places = [(tile_id, r, c) for tile_id in tile_ids for r, c in _chip_grid(imagery_dir, tile_id, chip)]
    chosen = [places[int(i)] for i in np.unique(np.linspace(0, len(places) - 1, min(limit, len(places))))]
    images: dict[str, np.ndarray] = {}
    chips = []
    for tile_id, row, col in chosen:
        if tile_id not in images:
            images = {tile_id: read_tile(meta, imagery_dir, labels_dir, tile_id)[0]}
        chips.append(images[tile_id][:, row : row + chip, col : col + chip])
    return CalibrationChips(chips)


def _chip_grid(imagery_dir: Path, tile_id: str, chip: int) -> list[tuple[int, int]]:
    import rasterio

    with rasterio.open(Path(imagery_dir) / f"{tile_id}.tif") as src:
        height, width = src.height, src.width
    return [(r, c) for r in chip_offsets(height, chip) for c in chip_offsets(width, chip)]


def _padded(image: np.ndarray) -> np.ndarray:
    """(C, h, w) zero-padded to multiples of 32 (SegFormer's stride), float32 and contiguous."""
    _, h, w = image.shape
    return np.ascontiguousarray(np.pad(image, ((0, 0), (0, -h % 32), (0, -w % 32))), dtype=np.float32)


def session(path: Path, threads: int = 1) -> Any:
    """A CPU onnxruntime session for `path` with all graph optimisations."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


QUANTIZED_OPS = ("MatMul",)
"""Operator types quantised (which nodes of them: `int8_nodes`)."""


def int8_nodes(model_path: Path) -> list[str]:
    """The nodes quantised: the MatMuls with constant weights (attention Q/K/V and output projections, the
    MixFFN's dense layers) — the int8 setup measured fastest at agreement >= 0.99 on the folded graph
    (docs/performance.md, int8).

    Kept fp32: the attention's activation x activation products and Softmax (quantised, `QLinearSoftmax` costs more
    than it saves; onnxruntime's `MatMulConstBOnly` alone did not keep them out once nodes are listed), every
    convolution (patch embeddings, the attention's reduction, the MixFFN's depthwise 3x3, the folded decoder's
    per-stage projections and the classifier: int8 `QLinearConv` needs NHWC transposes that cost more than it saves
    here), Resize, LayerNorm, GELU. The exported graph names its nodes after the torch modules (`/encoder/...`).
    """
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    producers = {out: node for node in graph.node for out in node.output}

    def constant(name: str) -> bool:
        node = producers.get(name)
        return name in constants or (node is not None and node.op_type == "Transpose" and constant(node.input[0]))

    return [n.name for n in graph.node if n.op_type == "MatMul" and constant(n.input[1])]


def quantize_onnx(fp32: Path, target: Path, chips: CalibrationChips, per_channel: bool = True) -> Path:
    """Pre-process `fp32` and quantise it statically (QDQ, int8 weights, uint8 activations) into `target`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="lulc-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=False)
        with atomic_path(target) as out:
            quantize_static(
                str(prepared),
                str(out),
                chips.reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_quantize=int8_nodes(prepared),
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"CalibTensorRangeSymmetric": False, "MatMulConstBOnly": True},
            )
    return target


def _onnx_logits(sess: Any) -> Any:
    def logits(x: torch.Tensor) -> torch.Tensor:
        out = torch.from_numpy(sess.run(["logits"], {"pixel_values": x.numpy()})[0])
        return torch.nn.functional.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return logits


def compare_on_tiles(
    meta: BundleMetadata, fp32: Path, int8: Path, imagery_dir: Path, labels_dir: Path, tile_ids: Sequence[str]
) -> tuple[float, float, float]:
    """(agreement, int8 mIoU, fp32 mIoU) of two ONNX files over whole tiles."""
    from lulc_core.evaluation import SegmentationScorer, classes_by_block, read_tile

    names = meta.label_set.names
    scorers = {"fp32": SegmentationScorer(len(names)), "int8": SegmentationScorer(len(names))}
    logits = {"fp32": _onnx_logits(session(fp32)), "int8": _onnx_logits(session(int8))}
    same = total = 0
    for tile_id in tile_ids:
        image, labels = read_tile(meta, imagery_dir, labels_dir, tile_id)
        classes = {k: classes_by_block(fn, image) for k, fn in logits.items()}
        same += int((classes["fp32"] == classes["int8"]).sum())
        total += classes["fp32"].size
        for k, scorer in scorers.items():
            scorer.update(torch.from_numpy(classes[k]), torch.from_numpy(labels))
    agreement = same / max(total, 1)
    return agreement, scorers["int8"].report(names).miou, scorers["fp32"].report(names).miou


def quantize_bundle(
    bundle_dir: Path,
    imagery_dir: Path,
    labels_dir: Path,
    train_ids: Sequence[str],
    test_ids: Sequence[str],
    *,
    calibration_chips: int = 64,
    min_agreement: float = 0.99,
    max_miou_drop: float = 0.01,
) -> Int8Report:
    """Quantise the bundle's model.onnx to int8 and keep it only when it agrees with fp32 (module docstring)."""
    if not test_ids:
        raise InputError("split.test", "no test tiles to check the int8 model on", "give the split test tiles")
    bundle_dir = Path(bundle_dir)
    fp32 = export_onnx(bundle_dir, reuse=True)  # a model.onnx of other weights would be quantised otherwise
    meta = ModelBundle.read_metadata(bundle_dir)
    chips = training_chips(meta, Path(imagery_dir), Path(labels_dir), train_ids, calibration_chips)
    target = bundle_dir / INT8_FILE
    with tempfile.TemporaryDirectory(prefix="lulc-int8-") as tmp:
        candidate = quantize_onnx(fp32, Path(tmp) / INT8_FILE, chips)
        agreement, miou, miou_fp32 = compare_on_tiles(meta, fp32, candidate, imagery_dir, labels_dir, test_ids)
        delta = miou - miou_fp32
        problems = []
        if agreement < min_agreement:
            problems.append(f"agreement {agreement:.4f} < {min_agreement:g}")
        if -delta > max_miou_drop:
            problems.append(f"mIoU drop {-delta:.4f} > {max_miou_drop:g}")
        accepted = not problems
        if accepted:
            candidate.replace(target)
            reason = f"agreement {agreement:.4f}, mIoU {miou:.4f} vs fp32 {miou_fp32:.4f}"
            log.info("int8 accepted (%s): %s", reason, target)
        else:
            target.unlink(missing_ok=True)
            reason = "; ".join(problems)
            log.warning("int8 rejected, the version is served in fp32: %s", reason)
    report = Int8Report(
        accepted=accepted,
        reason=reason,
        agreement=agreement,
        miou=miou,
        miou_fp32=miou_fp32,
        miou_delta=delta,
        calibration_chips=len(chips.chips),
        test_tiles=len(test_ids),
    )
    bundle = ModelBundle(bundle_dir, meta, torch.nn.Identity())
    meta.metrics[METRICS_KEY] = report.model_dump(mode="json")
    bundle.write_metadata()
    return report


def quantize_if_configured(
    registry: RegistryConfig, bundle_dir: Path, imagery_dir: Path, labels_dir: Path, split: TileSplit
) -> Int8Report | None:
    """`quantize_bundle` with the `registry.int8_*` settings when `registry.onnx_quantization` is 'int8', else None.

    Calibrates on the split's training tiles and compares on its test tiles (validation tiles when it has none).
    """
    if registry.onnx_quantization != "int8":
        return None
    return quantize_bundle(
        bundle_dir,
        imagery_dir,
        labels_dir,
        split.train,
        split.test or split.val,
        calibration_chips=registry.int8_calibration_chips,
        min_agreement=registry.int8_min_agreement,
        max_miou_drop=registry.int8_max_miou_drop,
    )
