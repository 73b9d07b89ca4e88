"""Writing predictions: cloud-optimised GeoTIFFs and PNG previews with a legend.

Every write is atomic (lulc_core.raster.atomic_path / write_geotiff). PNGs are drawn with matplotlib's
object-oriented API (no pyplot global state), so a server may draw from several threads.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from lulc_core.inference.options import Prediction
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster, atomic_path, write_geotiff, write_warped_geotiff

PREVIEW_MAX_PX = 2048
"""Previews of larger areas are subsampled to at most this many pixels per side."""
LEGEND_ALL_MAX = 16
"""A legend of more classes (the 44 CORINE classes) lists only the classes present in the area."""


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name.removesuffix(path.suffix)}.{suffix}{path.suffix or '.tif'}")


def write_prediction(
    prediction: Prediction,
    path: str | Path,
    *,
    probabilities_path: str | Path | None = None,
    uncertainty_path: str | Path | None = None,
) -> Path:
    """Write the class raster as a cloud-optimised GeoTIFF with the label set's colour map and class names.

    Probabilities (float32, one band per class) and uncertainty (variance, entropy) are written beside it as
    `<name>.probabilities.tif` / `<name>.uncertainty.tif` (or the given paths) when the prediction has them.

    Returns:
        The path of the class raster (the others are at `prediction_paths(path)`).
    """
    target = Path(path)
    siblings = prediction_paths(target)
    if prediction.probabilities is not None:
        out = Path(probabilities_path) if probabilities_path else siblings["probabilities"]
        write_geotiff(out, prediction.probabilities, cog=True, dtype="float32")
    if prediction.uncertainty is not None:
        write_uncertainty(prediction, Path(uncertainty_path) if uncertainty_path else siblings["uncertainty"])
    return write_classes(prediction, target)


def write_classes(
    prediction: Prediction,
    path: str | Path,
    bounds: tuple[float, float, float, float] | None = None,
    crs: str = "EPSG:4326",
) -> Path:
    """Write the class raster as a cloud-optimised GeoTIFF with the label set's colour map and class names.

    With `bounds` (W, S, E, N in `crs`) it is warped onto `crs` spanning exactly them, nearest neighbour, straight
    into the file (the bytes `warp_to_bounds` then `write_geotiff` give, without the warped array in memory).
    """
    colormap = prediction.label_set.colormap()
    classes = prediction.classes
    if bounds is None:
        return write_geotiff(path, classes, cog=True, colormap=colormap, dtype="uint8")
    return write_warped_geotiff(path, classes, bounds, crs, colormap=colormap)


def prediction_paths(path: str | Path) -> dict[str, Path]:
    """Where `write_prediction(prediction, path)` puts each output by default."""
    target = Path(path)
    return {
        "classes": target,
        "probabilities": _sibling(target, "probabilities"),
        "uncertainty": _sibling(target, "uncertainty"),
    }


def write_uncertainty(prediction: Prediction, path: str | Path) -> Path:
    """Write the 2-band float32 uncertainty raster ("variance", "entropy"; NaN where no imagery) as a COG."""
    if prediction.uncertainty is None:
        raise ValueError("the prediction has no uncertainty; predict with options.uncertainty=True")
    unc = prediction.uncertainty
    raster = Raster(unc.data, unc.transform, unc.crs, unc.band_names, None, dict(unc.tags))
    return write_geotiff(path, raster, cog=True, dtype="float32", nodata=float("nan"))


def _subsample(data: np.ndarray, max_px: int) -> np.ndarray:
    step = max(1, math.ceil(max(data.shape[-2:]) / max_px))
    return data[..., ::step, ::step]


def _extent(raster: Raster) -> tuple[float, float, float, float]:
    w, s, e, n = raster.bounds
    return (w, e, s, n)


def class_colors(label_set: LabelSet) -> tuple[list[tuple[float, float, float, float]], ListedColormap, BoundaryNorm]:
    """The label set's colours (RGBA 0..1, by raster value), and the colour map and norm that draw class rasters."""
    colors = [(r / 255, g / 255, b / 255, a / 255) for _, (r, g, b, a) in sorted(label_set.colormap().items())]
    norm = BoundaryNorm(np.arange(label_set.num_classes + 1) - 0.5, label_set.num_classes)
    return colors, ListedColormap(colors), norm


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG, atomically."""
    target = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return target


def write_preview_png(
    prediction: Prediction, path: str | Path, *, title: str | None = None, max_px: int = PREVIEW_MAX_PX
) -> Path:
    """A PNG of the class raster in the label set's colours with a legend (class, share of the area; for legends
    of more than 16 classes only those present)."""
    label_set = prediction.label_set
    classes = _subsample(prediction.classes.data[0], max_px)
    colors, cmap, norm = class_colors(label_set)
    counts = np.bincount(prediction.classes.data[0].ravel(), minlength=label_set.num_classes)
    total = max(int(counts.sum()), 1)

    fig = Figure(figsize=(9, 7))
    ax = fig.add_subplot()
    ax.imshow(classes, cmap=cmap, norm=norm, interpolation="nearest", extent=_extent(prediction.classes))
    ax.set_title(title or prediction.title or f"Land use / land cover ({label_set.name})", fontsize=10)
    crs = prediction.classes.crs
    ax.set_xlabel(f"x ({crs.to_string() if crs else 'pixels'})")
    ax.set_ylabel("y")
    ax.ticklabel_format(style="plain", useOffset=False)
    shown = [i for i in range(label_set.num_classes) if counts[i] or label_set.num_classes <= LEGEND_ALL_MAX]
    handles = [
        Patch(facecolor=colors[i], edgecolor="0.3", label=f"{label_set.names[i]} ({100 * counts[i] / total:.1f}%)")
        for i in shown
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="classes")
    return save_figure(fig, path)


def write_uncertainty_preview_png(
    prediction: Prediction, path: str | Path, *, title: str | None = None, max_px: int = PREVIEW_MAX_PX
) -> Path:
    """A PNG with the variance and entropy maps side by side, each with a colour bar."""
    if prediction.uncertainty is None:
        raise ValueError("the prediction has no uncertainty; predict with options.uncertainty=True")
    unc = prediction.uncertainty
    fig = Figure(figsize=(12, 5.5))
    for i, (name, label) in enumerate([("variance", "Variance (TTA)"), ("entropy", "Entropy (Shannon, normalised)")]):
        ax = fig.add_subplot(1, 2, i + 1)
        band = _subsample(unc.data[unc.band_names.index(name)], max_px)
        image = ax.imshow(band, cmap="magma", interpolation="nearest", extent=_extent(unc))
        ax.set_title(label, fontsize=10)
        ax.ticklabel_format(style="plain", useOffset=False)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(title or prediction.title or "Uncertainty", fontsize=10)
    return save_figure(fig, path)
