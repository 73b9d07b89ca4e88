"""ONNX export of a bundle's SegFormer: `model.onnx` beside `lulc.json`.

Input `pixel_values` float32 (batch, bands, height, width), normalised as the bundle's `normalisation` says;
output `logits` (batch, classes, height/4, width/4). Batch, height and width are dynamic (multiples of 32).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from lulc_core.bundle import ONNX_FILE, ModelBundle
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)


def export_onnx(bundle_dir: Path, opset: int = 17, size: int = 64) -> Path:
    """Write `<bundle_dir>/model.onnx` (atomically) and return its path."""
    import torch

    bundle = ModelBundle.load(bundle_dir)
    model = bundle.model
    example = torch.zeros(1, len(bundle.metadata.bands), size, size)
    target = Path(bundle_dir) / ONNX_FILE
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={
                "pixel_values": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height_4", 3: "width_4"},
            },
            opset_version=opset,
            dynamo=False,
        )
    log.info("ONNX model written to %s", target)
    return target
