"""Value types of a prediction request and its result."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lulc_core.config import format_validation_error
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster


class FusionMode(StrEnum):
    """How model predictions and OSM labels are combined (the original utility's modes)."""

    ONLY_MODEL = "only_model"
    ONLY_OSM = "only_osm"
    FAVOUR_MODEL = "favour_model"
    FAVOUR_OSM = "favour_osm"
    MEAN_MIXIN = "mean_mixin"
    ONLY_CORINE = "only_corine"
    HARMONIZED_CORINE = "harmonized_corine"


class PredictOptions(BaseModel):
    """What one prediction request asks for; unset values fall back to the ServingConfig."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Below this winning-class probability a pixel is unknown (0)."
    )
    fusion_mode: FusionMode = Field(default=FusionMode.ONLY_MODEL, description="How model and OSM are combined.")
    probabilities: bool = Field(default=False, description="Also return per-class probabilities.")
    uncertainty: bool = Field(
        default=False, description="Test-time augmentation: return variance and entropy (2-band raster)."
    )
    edge_buffer_m: float | None = Field(
        default=None, ge=0, description="Margin in metres predicted around the bbox and cropped off afterwards."
    )
    tta: bool | None = Field(
        default=None,
        description="Classes from probabilities averaged over test-time augmentations (None: `serving.tta`); "
        "`uncertainty` always uses them.",
    )
    tta_variants: int = Field(
        default=8, ge=2, le=8, description="How many of the 8 flip/rot90 variants test-time augmentation uses."
    )
    mixin_weight: float = Field(
        default=0.5, ge=0, le=1, description="Weight of the one-hot OSM prior in `mean_mixin` fusion."
    )

    @classmethod
    def build(cls, **values: Any) -> PredictOptions:
        """Validate request values; a bad value raises InputError naming `options.<field>`."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise format_validation_error(exc, prefix="options") from exc


@dataclass
class Prediction:
    """The result of a prediction, on the grid of the requested area.

    Attributes:
        classes: 1 band uint8 "class": 0 unknown (nodata, below threshold), 1..N the label set's classes.
        label_set: the classes, names and colours.
        probabilities: N bands (one per class, `unknown` excluded), float16 in memory to halve its size.
        uncertainty: 2 bands float32 "variance" (the largest per-class probability variance across
            augmentations, 0..0.25) and "entropy" (Shannon entropy of the mean probabilities, normalised to 0..1).
        title: a human-readable description of the area and dates (PNG titles).
        confidence: 1 band uint8 "confidence": the winning class's probability after fusion x 250 (mapping).
    """

    classes: Raster
    label_set: LabelSet
    probabilities: Raster | None = None
    uncertainty: Raster | None = None
    title: str | None = None
    confidence: Raster | None = None

    def class_pixel_counts(self) -> dict[str, int]:
        """Pixels per class name (including `unknown`)."""
        counts = np.bincount(self.classes.data[0].ravel(), minlength=self.label_set.num_classes)
        return {name: int(counts[i]) for i, name in enumerate(self.label_set.names)}
