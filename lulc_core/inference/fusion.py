"""Fusion of model predictions with OSM labels (the original utility's fusion modes).

All functions work on arrays of one region: class probabilities (N, h, w) of classes 1..N, a validity mask
(h, w) of the imagery, and OSM labels (h, w) uint8 in the label set's values (0 = no OSM polygon).

- only_model: the model's winning class; unknown (0) where the imagery has no data or the winning probability
  is below the threshold.
- only_osm: the OSM labels (the model is not run).
- favour_model: the model's class; OSM fills where the model says unknown.
- favour_osm: OSM where it has a label; the model elsewhere.
- mean_mixin: where OSM has a label, probabilities = (1 - w) * model + w * one-hot(OSM) (w = 0.5 by default),
  then winner and threshold as in only_model; where OSM has no label the model alone decides (the original mixed
  a "background" channel in there, which turned every unlabelled pixel into unknown); where the imagery has no
  data, OSM decides.
- harmonized_corine: CORINE Land Cover codes mapped onto the label set via each class's `corine_codes` (the model
  is not run); needs a `CorineSource` (`lulc_core.imagery.corine`, the Sentinel Hub BYOC collection).
- only_corine: the raw CORINE classes (the model is not run), written with the CORINE legend
  (`lulc_core.corine.corine_legend`: CLC colours and names) instead of the model's label set, as the original did.

The OSM modes fuse with the configured label source — OSM polygons, or CORINE mapped onto the label set when
`labels.source` is corine.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from lulc_core.corine import harmonize_corine, require_corine_codes
from lulc_core.errors import InputError
from lulc_core.geo import Tile
from lulc_core.inference.options import FusionMode
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster

if TYPE_CHECKING:
    from lulc_core.config import RunConfig
    from lulc_core.labelling import LabelSource

OSM_MODES = frozenset({FusionMode.ONLY_OSM, FusionMode.FAVOUR_MODEL, FusionMode.FAVOUR_OSM, FusionMode.MEAN_MIXIN})
CORINE_MODES = frozenset({FusionMode.ONLY_CORINE, FusionMode.HARMONIZED_CORINE})
MODES = ", ".join(m.value for m in FusionMode)
__all__ = [
    "CorineSource",
    "build_fusion_sources",
    "check_fusion",
    "fuse",
    "harmonize_corine",
    "model_classes",
    "one_hot",
]


@runtime_checkable
class CorineSource(Protocol):
    """A label source that can also give CORINE Land Cover (e.g. the Sentinel Hub BYOC CLC collection)."""

    def corine_codes(self, tile: Tile) -> Raster:
        """CLC level-3 codes (e.g. 311 broad-leaved forest) on the tile grid, 0 where there is none."""
        ...


def build_fusion_sources(
    cfg: RunConfig, label_set: LabelSet, cache_dir: Path | None, *, labels: bool = True
) -> tuple[LabelSource | None, CorineSource | None]:
    """The sources a predictor fuses with: the configured label source (when `labels`) and a CORINE source.

    The label source is built for `label_set` (the model's); CORINE comes from the label source itself when
    `labels.source` is corine, else from `imagery.sentinelhub.byoc_corine_collection` when that is set.

    Raises:
        ConfigError: missing credentials, a label set without corine_codes, a missing OSM file.
    """
    from lulc_core.imagery.corine import build_corine_source
    from lulc_core.labelling import build_label_source

    source = build_label_source(cfg, label_set, cache_dir) if labels else None
    if isinstance(source, CorineSource):
        return source, None
    return source, build_corine_source(cfg, cache_dir)


def check_fusion(
    mode: FusionMode, osm_source: object | None, corine: object | None = None, label_set: LabelSet | None = None
) -> None:
    """Refuse a fusion mode the configured sources cannot serve, with the reason and the fix.

    Args:
        mode: the requested fusion mode.
        osm_source: the label source for the OSM modes (None: not configured).
        corine: the CORINE source (None: not configured; a label source that is a `CorineSource` counts).
        label_set: the model's label set (harmonized_corine needs its `corine_codes`).
    """
    if mode in CORINE_MODES:
        if not isinstance(corine, CorineSource) and not isinstance(osm_source, CorineSource):
            raise InputError(
                "fusion_mode",
                f"{mode.value} needs CORINE Land Cover, which comes from the Sentinel Hub BYOC CORINE collection "
                "(imagery.sentinelhub.byoc_corine_collection), and none is configured",
                "set imagery.sentinelhub.byoc_corine_collection and Sentinel Hub credentials (SH_CLIENT_ID, "
                f"SH_CLIENT_SECRET), or choose one of {MODES} without CORINE",
            )
        if mode == FusionMode.HARMONIZED_CORINE and label_set is not None:
            require_corine_codes(label_set)
    if mode in OSM_MODES and osm_source is None:
        raise InputError(
            "fusion_mode",
            f"{mode.value} combines the model with OSM labels, but no OSM source is configured",
            "configure labels.source (file or ohsome) or use fusion_mode only_model",
        )


def model_classes(probabilities: np.ndarray, valid: np.ndarray, threshold: float) -> np.ndarray:
    """Winning class 1..N (the first on a tie); 0 where invalid or the winning probability is below `threshold`.

    One pass per class over its (h, w) plane, keeping the running maximum: half the time of `np.argmax` along the
    class axis plus the gather of the winner's probability (numpy reduces a strided first axis slowly).
    """
    top = probabilities[0].copy()
    classes = np.ones(top.shape, np.uint8)
    for c in range(1, len(probabilities)):
        classes[np.greater(probabilities[c], top)] = c + 1
        np.maximum(top, probabilities[c], out=top)
    classes[(top < threshold) | ~valid] = 0
    return classes


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(N, h, w) float32 one-hot of labels 1..N; all zero where the label is 0."""
    out = np.zeros((n_classes, *labels.shape), np.float32)
    for c in range(1, n_classes + 1):
        out[c - 1][labels == c] = 1.0
    return out


def fuse(
    mode: FusionMode,
    probabilities: np.ndarray | None,
    valid: np.ndarray,
    osm: np.ndarray | None,
    threshold: float,
    mixin_weight: float = 0.5,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Classes (h, w) uint8 and the probabilities behind them (N, h, w) for one region.

    Args:
        mode: fusion mode (not only_corine; harmonized_corine labels are passed as `osm`).
        probabilities: model probabilities of classes 1..N (None for only_osm/harmonized_corine).
        valid: imagery validity mask.
        osm: OSM (or harmonised CORINE) labels; needed by every mode but only_model.
        threshold: minimum winning probability of a model class.
        mixin_weight: weight of the OSM one-hot prior in mean_mixin.
    """
    if mode == FusionMode.ONLY_MODEL:
        assert probabilities is not None
        return model_classes(probabilities, valid, threshold), probabilities
    if osm is None:
        raise ValueError(f"fusion mode {mode.value} needs OSM labels")
    if mode in (FusionMode.ONLY_OSM, FusionMode.HARMONIZED_CORINE):
        prior = one_hot(osm, probabilities.shape[0]) if probabilities is not None else None
        return osm.astype(np.uint8, copy=True), prior
    assert probabilities is not None
    if mode == FusionMode.FAVOUR_MODEL:
        classes = model_classes(probabilities, valid, threshold)
        return np.where(classes == 0, osm, classes).astype(np.uint8), probabilities
    if mode == FusionMode.FAVOUR_OSM:
        classes = model_classes(probabilities, valid, threshold)
        return np.where(osm > 0, osm, classes).astype(np.uint8), probabilities
    if mode == FusionMode.MEAN_MIXIN:
        prior = one_hot(osm, probabilities.shape[0])
        labelled = (osm > 0)[None]
        mixed = np.where(labelled, (1.0 - mixin_weight) * probabilities + mixin_weight * prior, probabilities)
        mixed = np.where(valid[None], mixed, prior).astype(np.float32)
        classes = model_classes(mixed, valid | (osm > 0), threshold)
        return classes, mixed
    raise ValueError(f"unsupported fusion mode {mode.value}")
