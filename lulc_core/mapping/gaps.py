"""Where OSM lacks what the model sees: per class the share of the predicted area OSM already maps, the gaps and the
conflicts — the original utility's aim of using the model to fill OSM.

Block by block (bounded memory), the OSM land-use polygons of the label set are rasterised on the block grid at the
map date (the block's time frame end; `lulc_core.labelling.rasterize_labels`, the same labels as training) and
compared with the block's classes and confidence:

- mapped share of class k: predicted k where OSM has any label-set polygon / predicted k;
- gaps: no OSM polygon, the model's class k with confidence ≥ `mapping.gap_confidence`;
- conflicts: OSM says class o, the model says k ≠ o with that confidence.

Gaps and conflicts become polygons (4-connected pixels of one class / pair, at least `mapping.gap_min_pixels`)
with class, area and mean confidence, clipped to the AOI, in EPSG:4326. A polygon that reaches a block border is
kept whatever its size and dissolved with the polygons of the same class (or pair) it shares an edge with in the
neighbouring blocks of its zone (area summed, confidence averaged by area), so a gap across blocks is one polygon;
the size threshold applies to the merged polygon.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape
from tqdm import tqdm

from lulc_core.mapping.assemble import ZoneMosaic
from lulc_core.mapping.blocks import NODATA, BlockStatus, block_path
from lulc_core.mapping.plan import MapBlock, MapPlan
from lulc_core.raster import atomic_path, hex_to_rgba

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
PREVIEW_PX = 1024


def _components(values: np.ndarray, conf: np.ndarray, min_px: int, transform: Any) -> list[dict[str, Any]]:
    """Polygons of 4-connected pixels of equal non-zero value, with value, pixel count and mean confidence: those of
    at least `min_px` pixels and those touching the array's edge (their other part may lie in the next block)."""
    out = []
    for value in np.unique(values[values > 0]):
        labels, n = ndimage.label(values == value, structure=FOUR)
        if not n:
            continue
        ids = np.arange(1, n + 1)
        count = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        mean_conf = ndimage.mean(conf, labels, ids)
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        keep = set(ids[count >= min_px].tolist()) | set(edge[edge > 0].tolist())
        if not keep:
            continue
        kept = np.where(np.isin(labels, list(keep)), labels, 0).astype(np.int32)
        for geom, k in shapes(kept, mask=kept > 0, transform=transform, connectivity=4):
            k = int(k)
            out.append(
                {
                    "value": int(value),
                    "pixels": int(count[k - 1]),
                    "conf": float(mean_conf[k - 1]),
                    "geometry": shape(geom),
                }
            )
    return out


def compare_block(
    plan: MapPlan, block: MapBlock, osm_labels: np.ndarray, out_dir: Path, confidence: float, min_px: int
) -> tuple[np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]:
    """(counts (N+1, 3): predicted / OSM-mapped / agreeing pixels per class, gap polygons, conflict polygons)."""
    with rasterio.open(block_path(out_dir, block)) as src:
        classes, tf = src.read(1), src.transform
    with rasterio.open(block_path(out_dir, block, "confidence")) as src:
        conf = src.read(1).astype(np.float32) / 250.0
    n = len(plan.model.class_names)
    mapped = (classes > 0) & (classes != NODATA)
    counts = np.zeros((n, 3), np.int64)
    counts[:, 0] = np.bincount(classes[mapped], minlength=n)[:n]
    counts[:, 1] = np.bincount(classes[mapped & (osm_labels > 0)], minlength=n)[:n]
    counts[:, 2] = np.bincount(classes[mapped & (osm_labels == classes)], minlength=n)[:n]
    sure = mapped & (conf >= confidence)
    gap_values = np.where(sure & (osm_labels == 0), classes, 0).astype(np.int32)
    pair = osm_labels.astype(np.int32) * 256 + classes
    conflict_values = np.where(sure & (osm_labels > 0) & (osm_labels != classes), pair, 0).astype(np.int32)
    res2 = block.resolution**2
    gaps = [
        {"class": plan.model.class_names[g["value"]], "area_m2": g["pixels"] * res2, "mean_confidence": g["conf"],
         "block": block.id, "zone": block.zone, "crs": block.crs, "geometry": g["geometry"]}
        for g in _components(gap_values, conf, min_px, tf)
    ]  # fmt: skip
    conflicts = [
        {"osm_class": plan.model.class_names[c["value"] // 256], "model_class": plan.model.class_names[c["value"] % 256],
         "area_m2": c["pixels"] * res2, "mean_confidence": c["conf"], "block": block.id, "zone": block.zone,
         "crs": block.crs, "geometry": c["geometry"]}
        for c in _components(conflict_values, conf, min_px, tf)
    ]  # fmt: skip
    return counts, gaps, conflicts


def merge_across_blocks(rows: list[dict[str, Any]], keys: Sequence[str], resolution: float) -> list[dict[str, Any]]:
    """Dissolve polygons of one zone and equal `keys` (class, or OSM/model class pair) that share an edge across
    block borders: one polygon each, area summed, mean confidence weighted by area, the blocks joined by ','."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from shapely.strtree import STRtree

    if not rows:
        return []
    grid = resolution / 1000  # pixel corners of neighbouring blocks coincide up to float noise
    geoms = shapely.set_precision(np.array([r["geometry"] for r in rows], dtype=object), grid)
    edges = []
    for i, j in np.asarray(STRtree(geoms).query(geoms, predicate="intersects")).T:
        a, b = rows[i], rows[j]
        same = i < j and a["block"] != b["block"] and a["zone"] == b["zone"] and all(a[k] == b[k] for k in keys)
        if same and shapely.intersection(geoms[i], geoms[j]).length > 0:  # a shared edge, not a corner
            edges.append((i, j))
    pairs = np.array(edges, dtype=np.int64).reshape(-1, 2)
    adjacency = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(rows), len(rows)))
    _, group_of = connected_components(adjacency, directed=False)
    merged = []
    for group in (np.flatnonzero(group_of == g).tolist() for g in np.unique(group_of)):
        parts = [rows[i] for i in group]
        area = sum(p["area_m2"] for p in parts)
        merged.append(
            {
                **parts[0],
                "area_m2": area,
                "mean_confidence": sum(p["mean_confidence"] * p["area_m2"] for p in parts) / area,
                "block": ",".join(sorted({p["block"] for p in parts})),
                "geometry": shapely.union_all(geoms[group], grid_size=grid) if len(group) > 1 else geoms[group[0]],
            }
        )
    return merged


def _to_wgs84(rows: list[dict[str, Any]], aoi: gpd.GeoDataFrame, columns: list[str]) -> gpd.GeoDataFrame:
    """Polygons of several UTM zones -> one frame in EPSG:4326, clipped to the AOI."""
    frames = []
    for crs in sorted({r["crs"] for r in rows}):
        part = [r for r in rows if r["crs"] == crs]
        frames.append(gpd.GeoDataFrame(part, geometry="geometry", crs=crs).to_crs(WGS84))
    if not frames:
        return gpd.GeoDataFrame({c: [] for c in columns}, geometry=[], crs=WGS84)
    gdf = gpd.GeoDataFrame(np.concatenate([f.values for f in frames]), columns=frames[0].columns)
    gdf = gpd.GeoDataFrame(gdf, geometry="geometry", crs=WGS84)
    gdf["geometry"] = gdf.geometry.intersection(shapely.union_all(aoi.geometry.values))
    gdf = gdf[~gdf.geometry.is_empty]
    return gdf[[*columns, "geometry"]].sort_values("area_m2", ascending=False).reset_index(drop=True)


def gap_report(
    plan: MapPlan,
    statuses: Sequence[BlockStatus],
    osm_source: Any,
    map_dir: Path,
    out_dir: Path,
    confidence: float,
    min_px: int,
) -> dict[str, Any]:
    """Compare every complete block (under `map_dir`) with OSM; write gaps.parquet, conflicts.parquet,
    conflicts.csv and gap_stats.json to `out_dir`.

    Returns the statistics (per class: predicted km², OSM-mapped share, agreement share; gap and conflict totals).
    """
    from lulc_core.labelling import rasterize_labels

    label_set = plan.label_set()
    done = {s.id for s in statuses if s.complete}
    n = len(plan.model.class_names)
    counts = np.zeros((n, 3), np.int64)
    gaps: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    for block in tqdm([b for b in plan.blocks if b.id in done], desc="OSM gaps", unit="block", leave=False):
        osm = rasterize_labels(osm_source, label_set, block.tile(), when=block.end)
        c, g, k = compare_block(plan, block, np.asarray(osm.data[0], np.uint8), map_dir, confidence, min_px)
        counts += c
        gaps += g
        conflicts += k
    res = plan.blocks[0].resolution if plan.blocks else 10.0
    min_m2 = min_px * res**2
    gaps = [g for g in merge_across_blocks(gaps, ["class"], res) if g["area_m2"] >= min_m2]
    conflicts = [c for c in merge_across_blocks(conflicts, ["osm_class", "model_class"], res) if c["area_m2"] >= min_m2]
    aoi = plan.aoi_frame()
    base = ["area_m2", "mean_confidence", "block", "zone"]
    gap_frame = _to_wgs84(gaps, aoi, ["class", *base])
    conflict_frame = _to_wgs84(conflicts, aoi, ["osm_class", "model_class", *base])
    out = Path(out_dir)
    for name, frame in (("gaps.parquet", gap_frame), ("conflicts.parquet", conflict_frame)):
        with atomic_path(out / name) as tmp:
            frame.to_parquet(tmp, index=False)
    with atomic_path(out / "conflicts.csv") as tmp:
        conflict_frame.drop(columns="geometry").to_csv(tmp, index=False)
    px_km2 = plan.blocks[0].resolution ** 2 / 1e6
    per_class = {
        plan.model.class_names[k]: {
            "predicted_km2": float(counts[k, 0] * px_km2),
            "osm_mapped_share": float(counts[k, 1] / counts[k, 0]) if counts[k, 0] else None,
            "osm_agreement_share": float(counts[k, 2] / counts[k, 0]) if counts[k, 0] else None,
            "gap_km2": float(gap_frame.loc[gap_frame["class"] == plan.model.class_names[k], "area_m2"].sum() / 1e6),
        }
        for k in range(1, n)
    }
    stats = {
        "per_class": per_class,
        "gap_polygons": len(gap_frame),
        "gap_km2": float(gap_frame.area_m2.sum() / 1e6),
        "conflict_polygons": len(conflict_frame),
        "conflict_km2": float(conflict_frame.area_m2.sum() / 1e6),
        "confidence": confidence,
        "min_pixels": min_px,
        "blocks_compared": len(done),
        "blocks_total": len(plan.blocks),
    }
    with atomic_path(out / "gap_stats.json") as tmp:
        tmp.write_text(json.dumps(stats, indent=1))
    log.info(
        "OSM gaps: %d polygons (%.3f km²), %d conflicts", stats["gap_polygons"], stats["gap_km2"], len(conflict_frame)
    )
    return stats


def gap_map_png(plan: MapPlan, zones: Sequence[ZoneMosaic], gaps: gpd.GeoDataFrame, path: Path) -> Path:
    """One panel per zone mosaic: the classes (decimated) with the gap polygons outlined in red."""
    label_set = plan.label_set()
    colours = [tuple(v / 255 for v in hex_to_rgba(c.color)) for c in label_set.classes]
    cmap = ListedColormap([(0.85, 0.85, 0.85, 1.0), *colours])  # unknown in grey
    fig = Figure(figsize=(5 * max(1, len(zones)), 5))
    FigureCanvasAgg(fig)
    for i, z in enumerate(zones, start=1):
        ax = fig.add_subplot(1, max(1, len(zones)), i)
        with rasterio.open(z.path) as src:
            step = max(1, int(np.ceil(max(src.width, src.height) / PREVIEW_PX)))
            data = src.read(1, out_shape=(max(1, src.height // step), max(1, src.width // step)))
            w, s, e, n = src.bounds
        shown = np.ma.masked_equal(data, NODATA)
        ax.imshow(shown, cmap=cmap, vmin=0, vmax=len(colours), extent=(w, e, s, n), interpolation="nearest")
        mine = gaps[gaps.zone == z.zone]
        if len(mine):
            mine.to_crs(z.crs).boundary.plot(ax=ax, color="red", linewidth=0.8)
        ax.set_title(f"{z.zone}: {len(mine)} gaps" + ("" if z.complete else " (INCOMPLETE)"), fontsize=8)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
