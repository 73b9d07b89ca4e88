"""Inference: class rasters for any area, with overlap blending, OSM fusion and uncertainty.

- `predict_raster(bundle, raster, ...)`: an in-memory raster (e.g. raw tensors a client brings).
- `Predictor(bundle, store, osm_source, settings).predict(bbox, start, end, options)`: any bbox; imagery fetched
  per block of windows, memory bounded by the block and the uint8 output.
- `write_prediction` (COG with colour map), `write_classes` (the classes only, optionally warped onto a box),
  `write_uncertainty`, `write_preview_png`,
  `write_uncertainty_preview_png`.

Modules: `windows` (sliding windows, blending, blocks), `uncertainty` (test-time augmentation), `fusion` (OSM
fusion modes), `predictor` (the two entry points), `outputs` (files).
"""

from lulc_core.inference.fusion import CorineSource, fuse
from lulc_core.inference.options import FusionMode, Prediction, PredictOptions
from lulc_core.inference.outputs import (
    prediction_paths,
    write_classes,
    write_prediction,
    write_preview_png,
    write_uncertainty,
    write_uncertainty_preview_png,
)
from lulc_core.inference.predictor import PROBABILITY_MAX_PIXELS, Predictor, predict_raster

__all__ = [
    "PROBABILITY_MAX_PIXELS",
    "CorineSource",
    "FusionMode",
    "PredictOptions",
    "Prediction",
    "Predictor",
    "fuse",
    "predict_raster",
    "prediction_paths",
    "write_classes",
    "write_prediction",
    "write_preview_png",
    "write_uncertainty",
    "write_uncertainty_preview_png",
]
