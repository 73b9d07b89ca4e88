"""A prediction against its reference labels: the classes resampled onto the reference grid, the agreement, and
a side-by-side picture (prediction | reference | where they agree), so a reader sees what a model learned.

Used by `lulc demo` on the held-back test area; works for any class GeoTIFF and the label rasters of its tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from pydantic import BaseModel, Field
from rasterio.merge import merge
from rasterio.warp import Resampling, reproject

from lulc_core.inference.outputs import class_colors, save_figure
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster

AGREE_COLORS = ["#d9d9d9", "#1a9850", "#d73027"]
"""unlabelled reference, agreement, disagreement."""


class Agreement(BaseModel):
    """How often the prediction matches the reference where the reference has a class."""

    agreement: float = Field(description="Share of labelled reference pixels whose predicted class is the same.")
    pixels: int = Field(description="Labelled reference pixels compared (reference class > 0).")
    per_class: dict[str, float] = Field(description="Per reference class: share predicted as that class (recall).")


@dataclass
class Panel:
    """One compared area: the prediction on the reference grid, the reference, and a caption."""

    title: str
    predicted: np.ndarray
    reference: np.ndarray


def reference_mosaic(label_paths: Sequence[Path]) -> Raster:
    """The label rasters of neighbouring tiles (same CRS and grid) as one class raster; 0 where no tile is."""
    if not label_paths:
        raise ValueError("no label rasters to compare against")
    data, transform = merge([str(p) for p in label_paths], nodata=0)
    with rasterio.open(label_paths[0]) as src:
        crs = src.crs
    return Raster(data[:1].astype(np.uint8), transform, crs, ["class"])


def on_grid(prediction_path: Path, reference: Raster) -> np.ndarray:
    """The predicted classes resampled (nearest) onto the reference grid; 0 (unknown) outside the prediction."""
    out = np.zeros((reference.height, reference.width), dtype=np.uint8)
    with rasterio.open(prediction_path) as src:
        reproject(
            source=rasterio.band(src, 1),
            destination=out,
            dst_transform=reference.transform,
            dst_crs=reference.crs,
            dst_nodata=0,
            resampling=Resampling.nearest,
        )
    return out


def agreement(panels: Sequence[Panel], label_set: LabelSet) -> Agreement:
    """Agreement over every panel's labelled reference pixels (class 0 = unknown is not compared)."""
    predicted = np.concatenate([p.predicted.ravel() for p in panels])
    reference = np.concatenate([p.reference.ravel() for p in panels])
    labelled = reference > 0
    n = int(labelled.sum())
    if n == 0:
        raise ValueError("the reference has no labelled pixel in the compared area")
    same = predicted[labelled] == reference[labelled]
    per_class = {}
    for value, name in enumerate(label_set.names):
        mask = reference[labelled] == value
        if value and mask.any():
            per_class[name] = round(float(same[mask].mean()), 4)
    return Agreement(agreement=round(float(same.mean()), 4), pixels=n, per_class=per_class)


def plot_comparison(panels: Sequence[Panel], label_set: LabelSet, result: Agreement, path: Path) -> Path:
    """One row per panel: prediction, reference and the agreement map, with the class legend."""
    colors, classes, norm = class_colors(label_set)
    agree = ListedColormap(AGREE_COLORS)
    fig = Figure(figsize=(11, 3.4 * len(panels) + 0.8))
    for row, panel in enumerate(panels):
        match = np.where(panel.reference == 0, 0, np.where(panel.predicted == panel.reference, 1, 2))
        images = [
            (panel.predicted, classes, norm, f"prediction — {panel.title}"),
            (panel.reference, classes, norm, "reference (labels)"),
            (match, agree, BoundaryNorm([-0.5, 0.5, 1.5, 2.5], 3), "green: same, red: differs, grey: no label"),
        ]
        for col, (data, cmap, nrm, title) in enumerate(images):
            ax = fig.add_subplot(len(panels), 3, 3 * row + col + 1)
            ax.imshow(data, cmap=cmap, norm=nrm, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    handles = [Patch(facecolor=colors[i], edgecolor="0.3", label=name) for i, name in enumerate(label_set.names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8)
    fig.suptitle(
        f"Held-back test area: agreement {result.agreement:.1%} over {result.pixels:,} labelled pixels", fontsize=10
    )
    return save_figure(fig, path)
