"""Class areas of a map: mapped area and the error-adjusted area with a 95 % confidence interval.

The estimator is the stratified one of Olofsson et al. (2014, "Good practices for estimating area and assessing
accuracy of land change", Remote Sensing of Environment 148, 42-57), eqs. 9-10: the map classes are the strata,
W_i the share of the classified area mapped as class i, n_ij the test confusion matrix with i the map class and j
the reference class (the bundle stores reference rows and predicted columns: it is transposed here):

    p_ij = W_i n_ij / n_i.            A_j = A * sum_i p_ij
    S(p_.j) = sqrt(sum_i W_i² (n_ij / n_i.)(1 - n_ij / n_i.) / (n_i. - 1))        CI95 = ± 1.96 A S(p_.j)

A map class with no test pixel (n_i. = 0) cannot be corrected: its area is kept as mapped, without variance.
The test confusion matrix counts pixels of test tiles, which are spatially correlated: the intervals are narrower
than those of a probability sample of independent points would be. Pixels the model left `unknown` (below the
threshold, no imagery) and pixels of blocks that are missing ("not mapped") are reported as they are, so the
areas of every feature add up to the feature's area on the map grid.

Counts are taken window by window from the zone mosaics (bounded memory), per AOI feature (rasterised on each
window, pixel centres) and for the whole AOI ("all").
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import shape

from lulc_core.grid import project_in_zone
from lulc_core.mapping.assemble import ZoneMosaic
from lulc_core.mapping.blocks import NODATA
from lulc_core.mapping.plan import MapPlan
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

Z95 = 1.959964
ROWS_PER_WINDOW = 1024
UNKNOWN, NOT_MAPPED = "unknown", "not mapped"


class AreaRow(BaseModel):
    """The area of one class in one AOI feature (or in the whole AOI, feature 'all'), in km²."""

    model_config = ConfigDict(extra="forbid")

    feature: str
    cls: str = Field(serialization_alias="class")
    mapped_km2: float
    adjusted_km2: float
    ci95_km2: float = Field(description="Half-width of the 95 % confidence interval of the adjusted area.")
    lower_km2: float
    upper_km2: float


def olofsson(mapped: np.ndarray, confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error-adjusted areas and their standard errors (same unit as `mapped`) for classes 1..N.

    Args:
        mapped: mapped area of classes 1..N.
        confusion: test confusion matrix, rows = reference, columns = predicted (classes 1..N).
    """
    total = float(mapped.sum())
    if total <= 0:
        return np.zeros_like(mapped, dtype=float), np.zeros_like(mapped, dtype=float)
    n = np.asarray(confusion, float).T  # rows = map class i, columns = reference class j
    w = mapped / total
    row = n.sum(axis=1)
    share = np.divide(n, row[:, None], out=np.zeros_like(n), where=row[:, None] > 0)
    untested = row == 0
    share[untested] = np.eye(len(mapped))[untested]  # no test pixel mapped as i: keep its area as mapped
    p = w[:, None] * share
    var_terms = np.divide(
        w[:, None] ** 2 * share * (1 - share),
        (row - 1)[:, None],
        out=np.zeros_like(n),
        where=(row > 1)[:, None],
    )
    return total * p.sum(axis=0), total * np.sqrt(var_terms.sum(axis=0))


def count_pixels(plan: MapPlan, zones: Sequence[ZoneMosaic]) -> dict[str, np.ndarray]:
    """Pixel counts per AOI feature name (and 'all') of values 0..255 over the zone mosaics, window by window."""
    counts: dict[str, np.ndarray] = {}
    names = {f.index: f.name for f in plan.features}
    for z in zones:
        feats = [(f.index, project_in_zone(shape(f.geometry), z.crs)) for f in plan.features]
        feats = [(index, geom) for index, geom in feats if not geom.is_empty]  # a feature outside this zone
        with rasterio.open(z.path) as src:
            for r0 in range(0, src.height, ROWS_PER_WINDOW):
                win = Window(0, r0, src.width, min(ROWS_PER_WINDOW, src.height - r0))
                data = src.read(1, window=win)
                tf = src.window_transform(win)
                for index, geom in feats:
                    inside = rasterize([(geom, 1)], out_shape=data.shape, transform=tf, fill=0, dtype="uint8") > 0
                    if inside.any():
                        hist = np.bincount(data[inside], minlength=256)
                        counts[names[index]] = counts.get(names[index], 0) + hist
                        counts["all"] = counts.get("all", 0) + hist
    return counts


def area_table(plan: MapPlan, zones: Sequence[ZoneMosaic]) -> list[AreaRow]:
    """Mapped and error-adjusted area per class, per feature and for the whole AOI."""
    classes = plan.model.class_names
    n_cls = len(classes) - 1
    confusion = np.asarray(plan.model.confusion_matrix, float)
    if confusion.shape != (n_cls, n_cls):
        raise ValueError(f"the test confusion matrix is {confusion.shape}, expected {n_cls} x {n_cls} classes")
    px_km2 = plan.blocks[0].resolution ** 2 / 1e6
    rows = []
    for feature, hist in count_pixels(plan, zones).items():
        mapped = hist[1 : n_cls + 1].astype(float) * px_km2
        adjusted, se = olofsson(mapped, confusion)
        for k, name in enumerate(classes[1:]):
            ci = Z95 * se[k]
            rows.append(AreaRow(feature=feature, cls=name, mapped_km2=mapped[k], adjusted_km2=adjusted[k],
                                ci95_km2=ci, lower_km2=max(0.0, adjusted[k] - ci), upper_km2=adjusted[k] + ci))  # fmt: skip
        for name, value in ((UNKNOWN, hist[0]), (NOT_MAPPED, hist[NODATA])):
            a = float(value) * px_km2
            rows.append(AreaRow(feature=feature, cls=name, mapped_km2=a, adjusted_km2=a, ci95_km2=0.0,
                                lower_km2=a, upper_km2=a))  # fmt: skip
    return rows


def write_areas(rows: Sequence[AreaRow], out_dir: Path) -> dict[str, Path]:
    """areas.csv, areas.json and area_chart.png (the whole AOI: mapped vs adjusted with the 95 % interval)."""
    import pandas as pd

    out = Path(out_dir)
    frame = pd.DataFrame([r.model_dump(by_alias=True) for r in rows])
    paths = {"csv": out / "areas.csv", "json": out / "areas.json", "png": out / "area_chart.png"}
    with atomic_path(paths["csv"]) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps([r.model_dump(by_alias=True) for r in rows], indent=1))
    whole = frame[(frame.feature == "all") & ~frame["class"].isin([NOT_MAPPED])]
    fig = Figure(figsize=(max(6, len(whole) * 0.9), 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(whole))
    ax.bar(x - 0.2, whole.mapped_km2, 0.4, label="mapped", color="#9ecae1")
    err = [whole.adjusted_km2 - whole.lower_km2, whole.upper_km2 - whole.adjusted_km2]
    ax.bar(x + 0.2, whole.adjusted_km2, 0.4, yerr=err, capsize=3, label="error-adjusted (95 % CI)", color="#3182bd")
    ax.set_xticks(x, list(whole["class"]), rotation=30, ha="right")
    ax.set_ylabel("km²")
    ax.set_title("Class areas of the AOI (Olofsson et al. 2014)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(paths["png"]) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    log.info("areas of %d features written to %s", frame.feature.nunique() - 1, out)
    return paths


def total_km2(rows: Sequence[AreaRow], feature: str = "all") -> float:
    return math.fsum(r.mapped_km2 for r in rows if r.feature == feature)
