"""The block plan of a map: AOI polygons + time frames + a model -> blocks on each UTM zone's grid, and the cost.

Blocks are squares of `mapping.block_px` pixels on a grid anchored at the zone's origin (x = 0, y = 0 of the UTM
projection), so the blocks of two runs over overlapping areas coincide. A block is kept when it touches an AOI
polygon and is clipped to the bounds of the AOI's part in its zone (whole pixels). The AOI is cut along UTM zone
borders and the equator (`lulc_core.grid`), so an AOI over several zones gets one grid, and later one mosaic, per
zone. AOI features with `start`/`end` properties are mapped only in the time frames that overlap their dates.

The plan also estimates, before anything is fetched: pixels, Sentinel Hub processing units (the store's own
formula, `lulc_core.imagery.sentinelhub.tile_processing_units`), GPU-hours from a measured throughput and the
size of the outputs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pydantic import BaseModel, ConfigDict, Field
from shapely.geometry import Polygon, box, mapping, shape

from lulc_core import __version__
from lulc_core.config import AreaConfig, RunConfig
from lulc_core.errors import InputError
from lulc_core.geo import Tile, TimeRange
from lulc_core.grid import AoiPart, _project, _safe, _zone_pieces, project_in_zone
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
AOI_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".geoparquet")
CALIBRATION_PX = 512


class AoiFeature(BaseModel):
    """One AOI feature (a polygon or multi-polygon in EPSG:4326) with its own dates when it has them."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Position in the AOI file; the key of per-feature statistics.")
    name: str = Field(description="The feature's `name` (or `patch`/`id`) property, else feature-<index>.")
    geometry: dict[str, Any] = Field(description="GeoJSON geometry in EPSG:4326.")
    start: date | None = Field(default=None, description="First date this feature may be mapped.")
    end: date | None = Field(default=None, description="Last date this feature may be mapped.")

    def overlaps(self, frame: TimeRange) -> bool:
        return frame.start <= (self.end or date.max) and (self.start or date.min) <= frame.end


class MapBlock(Tile):
    """One block: the unit predicted, written (one COG) and resumed — a Tile of the zone grid with its place in it.

    `id` is <area>-<epsg>-<col>-<row>-<start>-<end> (the file name of its COG); `bounds` are clipped to the AOI.
    """

    zone: str = Field(description="Zone mosaic it belongs to: <area>-<epsg>-<start>-<end>.")
    col: int = Field(description="Column on the zone grid (x // block edge in metres).")
    row: int = Field(description="Row on the zone grid (y // block edge in metres).")
    features: list[int] = Field(description="AOI features the block touches.")

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def tile(self) -> Tile:
        """The plain Tile (what imagery stores and OSM sources take)."""
        return Tile.model_validate(self.model_dump(include=set(Tile.model_fields)))


class ModelInfo(BaseModel):
    """The model a plan maps with, and what the STAC provenance and the area estimates need of it."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="The reference as given, e.g. lulc-sample@production.")
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Resolved version number.")
    uri: str = Field(description="Registry URI of the version.")
    variant: str = Field(description="MiT variant.")
    bands: list[str] = Field(description="Input bands.")
    resolution: float = Field(description="Pixel size the model was trained at (m).")
    label_set: str = Field(description="Label set name and fingerprint.")
    class_names: list[str] = Field(description="Classes 0..N (0 = unknown).")
    label_set_doc: dict[str, Any] = Field(description="The label set (classes, colours) as JSON.")
    metrics: dict[str, float] = Field(description="Headline test metrics (miou, overall_accuracy).")
    confusion_matrix: list[list[int]] = Field(description="Test confusion matrix, rows reference, cols predicted.")


class Cost(BaseModel):
    """What the plan costs, estimated before anything is fetched."""

    model_config = ConfigDict(extra="forbid")

    blocks: int
    zones: int
    pixels: int = Field(description="Pixels of all blocks (predicted and written).")
    aoi_km2: float = Field(description="Area of the AOI (geodesic on the UTM grids), all time frames.")
    fetched_pixels: int = Field(description="Pixels fetched: blocks plus the edge buffer around each.")
    processing_units: float = Field(description="Sentinel Hub PU for the imagery (the store's formula).")
    throughput_px_s: float = Field(description="Prediction throughput used for the estimate (px/s).")
    throughput_source: str = Field(description="Where the throughput comes from.")
    gpu_hours: float = Field(description="Accelerator hours to predict every block at that throughput.")
    output_bytes: int = Field(description="Upper bound of the outputs (uncompressed, overviews included).")


class MapPlan(BaseModel):
    """The plan of a map: what the predict, assemble, area and gap steps all read."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Area name (file names, STAC collection id).")
    model: ModelInfo
    features: list[AoiFeature]
    blocks: list[MapBlock]
    cost: Cost
    fusion_mode: str
    threshold: float
    probabilities: bool = Field(default=False, description="Blocks also get per-class probabilities.")
    uncertainty: bool = Field(default=False, description="Blocks also get TTA variance/entropy.")
    imagery_source: str = Field(description="Store and its settings (provenance).")
    code_version: str = Field(default=__version__)

    @property
    def fingerprint(self) -> str:
        """Changes with the model version and the prediction settings (fusion, threshold, extra outputs): a block
        COG records it, so a re-run with another model or setting redoes the block instead of skipping it."""
        key = [self.model.uri, self.fusion_mode, self.threshold, self.probabilities, self.uncertainty]
        return hashlib.sha256(repr(key).encode()).hexdigest()[:16]

    def zones(self) -> dict[str, list[MapBlock]]:
        """Blocks by zone mosaic, in plan order."""
        out: dict[str, list[MapBlock]] = {}
        for b in self.blocks:
            out.setdefault(b.zone, []).append(b)
        return out

    def label_set(self) -> Any:
        """The model's LabelSet (classes, colours)."""
        from lulc_core.labels import LabelSet

        return LabelSet.model_validate(self.model.label_set_doc)

    def save(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> MapPlan:
        return cls.model_validate_json(Path(path).read_text())

    def aoi_frame(self) -> gpd.GeoDataFrame:
        """The AOI features as a GeoDataFrame in EPSG:4326 (columns index, name)."""
        return gpd.GeoDataFrame(
            {"index": [f.index for f in self.features], "name": [f.name for f in self.features]},
            geometry=[shape(f.geometry) for f in self.features],
            crs=WGS84,
        )

    def summary_lines(self) -> list[str]:
        c = self.cost
        zones = self.zones()
        return [
            f"model          {self.model.name}@{self.model.version} ({self.model.uri}; {self.model.variant}, "
            f"{len(self.model.bands)} bands, {self.model.resolution:g} m)",
            f"area           {self.name}: {len(self.features)} feature(s), {c.aoi_km2:,.1f} km²",
            f"zones          {c.zones}: " + ", ".join(f"{z} ({len(b)} blocks)" for z, b in zones.items()),
            f"blocks         {c.blocks} (edge {max((max(b.width, b.height) for b in self.blocks), default=0):,} px)",
            f"pixels         {c.pixels:,}; fetched with the edge buffer {c.fetched_pixels:,}",
            f"Sentinel Hub   {c.processing_units:,.1f} processing units (if the imagery comes from Sentinel Hub)",
            f"throughput     {c.throughput_px_s:,.0f} px/s ({c.throughput_source})",
            f"GPU-hours      {c.gpu_hours:,.3g}",
            f"output size    at most {_size(c.output_bytes)} (uncompressed, with overviews; COGs are deflated)",
        ]


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


# --- the AOI ---------------------------------------------------------------------------------------------------


def _read_layers(path: Path) -> gpd.GeoDataFrame:
    """Every layer of the file in one frame; layers in different CRSs are refused (one CRS per AOI)."""
    if path.suffix.lower() in (".parquet", ".geoparquet"):
        return gpd.read_parquet(path)
    if path.suffix.lower() != ".gpkg":
        return gpd.read_file(path)
    layers = [gpd.read_file(path, layer=name) for name in gpd.list_layers(path)["name"]]
    crss = sorted({str(g.crs) for g in layers})
    if len(crss) > 1:
        raise InputError(
            "area.aoi", f"{path} has layers in different CRSs ({', '.join(crss)})", "reproject them to one CRS"
        )
    return gpd.GeoDataFrame(pd.concat(layers, ignore_index=True), crs=layers[0].crs)


def _feature_name(row: pd.Series, index: int) -> str:
    for key in ("name", "patch", "id"):
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return f"feature-{index}"


def _date(value: object, field: str) -> date | None:
    if value is None or value is pd.NaT or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(field, f"{value!r} is not an ISO date", "write it as YYYY-MM-DD") from None


def load_features(area: AreaConfig) -> list[AoiFeature]:
    """The AOI of `area` as features in EPSG:4326: GeoJSON, GeoPackage (all layers) or GeoParquet, or the bbox.

    Raises:
        InputError: missing/unreadable file, layers in different CRSs, no CRS and coordinates that are not degrees,
            or no polygon with an area.
    """
    if area.bbox is not None:
        geom = box(*area.bbox)
        return [AoiFeature(index=0, name=area.name, geometry=mapping(geom))]
    assert area.aoi is not None
    path = Path(area.aoi)
    if not path.is_file():
        raise InputError("area.aoi", f"file {str(path)!r} does not exist", "give a GeoJSON, GeoPackage or GeoParquet")
    if path.suffix.lower() not in AOI_SUFFIXES:
        raise InputError("area.aoi", f"{path.name}: unsupported type", f"use one of {', '.join(AOI_SUFFIXES)}")
    try:
        gdf = _read_layers(path)
    except InputError:
        raise
    except Exception as exc:
        raise InputError("area.aoi", f"cannot read {path}: {exc}", "give a GeoJSON, GeoPackage or GeoParquet") from exc
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    gdf = gdf.set_crs(WGS84) if gdf.crs is None else gdf.to_crs(WGS84)
    w, s, e, n = gdf.total_bounds if len(gdf) else (0, 0, 0, 0)
    if w < -180 or e > 180 or s < -90 or n > 90:
        raise InputError(
            "area.aoi",
            f"{path}: coordinates {tuple(round(v) for v in (w, s, e, n))} are not degrees in EPSG:4326 — the file "
            "has no CRS or the wrong one (GeoJSON is always EPSG:4326)",
            "write the file with its CRS (GeoPackage/GeoParquet) or reproject it to EPSG:4326",
        )
    features = []
    for i, (_, row) in enumerate(gdf.iterrows()):
        geom = shapely.make_valid(row.geometry)
        polys = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and p.area > 0]
        if not polys:
            continue
        start, end = _date(row.get("start"), "area.aoi.start"), _date(row.get("end"), "area.aoi.end")
        union = shapely.union_all(polys)
        features.append(AoiFeature(index=i, name=_feature_name(row, i), geometry=mapping(union), start=start, end=end))
    if not features:
        raise InputError("area.aoi", f"{path} holds no polygon with an area", "draw the area as (multi)polygons")
    return features


# --- blocks ----------------------------------------------------------------------------------------------------


def _zone_blocks(
    name: str, epsg: int, pieces: list[tuple[int, Any]], frame: TimeRange, block_px: int, res: float
) -> list[MapBlock]:
    """Blocks of one zone and time frame over the projected AOI pieces (feature index, geometry)."""
    crs = f"EPSG:{epsg}"
    projected = [(idx, _project(geom, crs)) for idx, geom in pieces]
    union = shapely.union_all([g for _, g in projected])
    ux0, uy0, ux1, uy1 = union.bounds
    x0, y0 = math.floor(ux0 / res) * res, math.floor(uy0 / res) * res
    x1, y1 = math.ceil(ux1 / res) * res, math.ceil(uy1 / res) * res
    size = block_px * res
    cols = np.arange(math.floor(x0 / size), math.ceil(x1 / size))
    rows = np.arange(math.floor(y0 / size), math.ceil(y1 / size))
    cc, rr = (a.ravel() for a in np.meshgrid(cols, rows))
    boxes = shapely.box(
        np.maximum(cc * size, x0),
        np.maximum(rr * size, y0),
        np.minimum((cc + 1) * size, x1),
        np.minimum((rr + 1) * size, y1),
    )
    hit = _overlapping(union, boxes)
    zone = f"{name}-{epsg}-{frame.start:%Y%m%d}-{frame.end:%Y%m%d}"
    order = sorted(np.flatnonzero(hit), key=lambda k: (-int(rr[k]), int(cc[k])))  # north to south, west to east
    chosen = boxes[order]
    shapely.prepare([g for _, g in projected])
    touching = [(idx, shapely.intersects(g, chosen)) for idx, g in projected]
    rounded = np.round(shapely.bounds(chosen), 6).tolist()
    blocks = []
    for j, k in enumerate(order):
        bounds = tuple(rounded[j])
        touched = sorted({idx for idx, hits in touching if hits[j]})
        blocks.append(
            MapBlock(
                id=f"{name}-{epsg}-{int(cc[k])}-{int(rr[k])}-{frame.start:%Y%m%d}-{frame.end:%Y%m%d}",
                zone=zone,
                crs=crs,
                col=int(cc[k]),
                row=int(rr[k]),
                bounds=bounds,  # type: ignore[arg-type]
                resolution=res,
                start=frame.start,
                end=frame.end,
                features=touched,
            )
        )
    return blocks


def _overlapping(area: Any, boxes: np.ndarray) -> np.ndarray:
    """Which boxes share a positive area with `area`: their interiors intersect (not merely an edge or a corner).

    Prepared predicates: a country's border against ~10^5 boxes takes seconds; intersecting the area with each box
    to test its area took minutes.
    """
    shapely.prepare(area)
    return shapely.intersects(area, boxes) & ~shapely.touches(area, boxes)  # type: ignore[no-any-return]


def plan_blocks(
    name: str, features: Sequence[AoiFeature], frames: Sequence[TimeRange], block_px: int, res: float
) -> list[MapBlock]:
    """Blocks per UTM zone and time frame over the AOI features (each feature only in the frames it overlaps)."""
    blocks: list[MapBlock] = []
    for frame in frames:
        chosen = [f for f in features if f.overlaps(frame)]
        parts = [AoiPart(shape(f.geometry)) for f in chosen]
        for epsg, pieces in sorted(_zone_pieces(parts).items()):
            by_feature = [(chosen[i].index, g) for i, g in pieces]
            blocks.extend(_zone_blocks(name, epsg, by_feature, frame, block_px, res))
    if not blocks:
        raise InputError(
            "area.time_frames",
            "no time frame overlaps the start/end dates of the AOI features",
            "align area.time_frames (or --time-frame) with the AOI's start/end properties",
        )
    return blocks


def aoi_km2(features: Sequence[AoiFeature], blocks: Sequence[MapBlock]) -> float:
    """AOI area on the UTM grids of its blocks (each feature counted once per zone and time frame it is mapped in)."""
    total = 0.0
    for zone_blocks in _by_zone(blocks).values():
        crs = zone_blocks[0].crs
        wanted = {i for b in zone_blocks for i in b.features}
        geoms = [project_in_zone(shape(f.geometry), crs) for f in features if f.index in wanted]
        cover = shapely.union_all([box(*b.bounds) for b in zone_blocks])
        total += shapely.union_all(geoms).intersection(cover).area
    return total / 1e6


def _by_zone(blocks: Sequence[MapBlock]) -> dict[str, list[MapBlock]]:
    out: dict[str, list[MapBlock]] = {}
    for b in blocks:
        out.setdefault(b.zone, []).append(b)
    return out


# --- costs -----------------------------------------------------------------------------------------------------


def processing_units(cfg: RunConfig, blocks: Sequence[MapBlock], bands: Sequence[str], buffer_px: int) -> float:
    """Sentinel Hub PU of fetching every block with its edge buffer (the store's formula, per sub-request)."""
    from lulc_core.imagery.sentinelhub import load_evalscript, tile_processing_units

    script = load_evalscript(cfg.imagery.sentinelhub.evalscript)
    limit = cfg.imagery.sentinelhub.max_pixels_per_request
    total = 0.0
    for b in blocks:
        pad = buffer_px * b.resolution
        x0, y0, x1, y1 = b.bounds
        tile = b.tile().model_copy(update={"bounds": (x0 - pad, y0 - pad, x1 + pad, y1 + pad)})
        total += tile_processing_units(script, tile, bands, limit)
    return total


def calibrate_throughput(bundle_dir: Path, cfg: RunConfig) -> float:
    """Pixels per second of `predict_raster` with the serving window/overlap/batch on this machine (CPU or GPU).

    One warm-up pass on a small raster, then one timed pass on CALIBRATION_PX² px of random input.
    """
    from affine import Affine
    from rasterio.crs import CRS

    from lulc_core.bundle import ModelBundle
    from lulc_core.inference import predict_raster
    from lulc_core.raster import Raster

    bundle = ModelBundle.load(bundle_dir)
    meta = bundle.metadata
    rng = np.random.default_rng(0)
    s = cfg.serving

    def raster(n: int) -> Raster:
        mean = np.asarray(meta.normalisation.mean, np.float32)[:, None, None]
        std = np.asarray(meta.normalisation.std, np.float32)[:, None, None]
        data = (mean + std * rng.standard_normal((len(meta.bands), n, n))).astype(np.float32)
        return Raster(data, Affine(10, 0, 0, 0, -10, 0), CRS.from_epsg(32632), list(meta.bands))

    kwargs = {"window": s.window, "overlap": s.overlap, "batch_size": s.batch_size, "progress": False}
    predict_raster(bundle, raster(s.window), **kwargs)  # type: ignore[arg-type]
    big = raster(CALIBRATION_PX)
    started = time.perf_counter()
    predict_raster(bundle, big, **kwargs)  # type: ignore[arg-type]
    return CALIBRATION_PX * CALIBRATION_PX / (time.perf_counter() - started)


def output_bytes(pixels: int, n_classes: int, probabilities: bool, uncertainty: bool) -> int:
    """Upper bound of the outputs: class + confidence bands (1 B each), optional probabilities (4 B per class) and
    uncertainty (8 B), for the blocks and again for the zone mosaics, with overviews (+1/3)."""
    per_px = 2 + (4 * n_classes if probabilities else 0) + (8 if uncertainty else 0)
    return int(pixels * per_px * 2 * 4 / 3)


def model_info(ref: str, info: Any, bundle_dir: Path) -> ModelInfo:
    """ModelInfo from a registry version and its bundle; the bundle must carry a test confusion matrix."""
    from lulc_core.bundle import ModelBundle

    meta = ModelBundle.read_metadata(bundle_dir)
    matrix = meta.metrics.get("confusion_matrix")
    if not matrix:
        raise InputError(
            "--model",
            f"{ref} has no test confusion matrix in its lulc.json, which the error-adjusted area estimates need",
            "evaluate the model first (lulc model evaluate, or the training pipeline) and register that bundle",
        )
    headline: dict[str, float] = {k: float(meta.metrics[k]) for k in ("miou", "overall_accuracy") if k in meta.metrics}
    return ModelInfo(
        ref=ref,
        name=info.name,
        version=info.version,
        uri=info.uri,
        variant=meta.variant,
        bands=list(meta.bands),
        resolution=meta.resolution,
        label_set=f"{meta.label_set.name}:{meta.label_set.fingerprint()}",
        class_names=list(meta.label_set.names),
        label_set_doc=meta.label_set.model_dump(mode="json"),
        metrics=headline,
        confusion_matrix=[[int(v) for v in row] for row in matrix],
    )


def resolve_model(cfg: RunConfig, ref: str | None) -> tuple[ModelInfo, Path]:
    """Resolve the model reference (CLI --model, else mapping.model) through the configured registry.

    Raises:
        InputError: no reference given, or the model lacks a test confusion matrix.
        NotFoundError: the reference does not resolve (no such model, version or stage).
    """
    from lulc_core.registry import build_registry

    given = ref or cfg.mapping.model
    if not given:
        raise InputError("--model", "no model to map with", "give --model NAME@STAGE or set mapping.model")
    registry = build_registry(cfg.registry, cfg.work_dir)
    info = registry.get(given)
    bundle_dir = registry.resolve(info.ref)
    return model_info(given, info, bundle_dir), bundle_dir


def imagery_source(cfg: RunConfig) -> str:
    if cfg.imagery.store == "local":
        return f"local GeoTIFF directory {cfg.imagery.local_dir}"
    sh = cfg.imagery.sentinelhub
    return f"Sentinel Hub {sh.endpoint} ({sh.base_url}), evalscript {sh.evalscript}, {sh.mosaicking_order}"


def make_plan(cfg: RunConfig, model: ModelInfo, bundle_dir: Path, *, throughput_px_s: float | None = None) -> MapPlan:
    """The plan of mapping `cfg.area` with `model`: blocks and their cost (nothing is fetched).

    The throughput is `throughput_px_s`, else `mapping.throughput_px_s` (a figure measured on the target node),
    else a calibration of the model on this machine (`calibrate_throughput`); the plan says which.
    """
    m = cfg.mapping
    if not math.isclose(model.resolution, cfg.imagery.resolution):
        log.info(
            "mapping at the model's resolution %g m (imagery.resolution is %g m)",
            model.resolution,
            cfg.imagery.resolution,
        )
    features = load_features(cfg.area)
    blocks = plan_blocks(_safe(cfg.area.name), features, cfg.area.time_frames, m.block_px, model.resolution)
    buffer_px = math.ceil(cfg.serving.edge_buffer_m / model.resolution - 1e-9)
    pixels = sum(b.pixels for b in blocks)
    fetched = sum((b.width + 2 * buffer_px) * (b.height + 2 * buffer_px) for b in blocks)
    measured = throughput_px_s or m.throughput_px_s
    if measured:
        source = "measured on the target node (mapping.throughput_px_s)"
    else:
        import torch

        device = "GPU" if torch.cuda.is_available() else "CPU"
        measured = calibrate_throughput(bundle_dir, cfg)
        source = (
            f"calibrated now on this machine's {device}: {CALIBRATION_PX}² px, window {cfg.serving.window}, "
            f"overlap {cfg.serving.overlap}; set mapping.throughput_px_s to a GPU node's figure"
        )
    tta = 8 if m.uncertainty else 1
    threshold = cfg.serving.threshold if m.threshold is None else m.threshold
    cost = Cost(
        blocks=len(blocks),
        zones=len({b.zone for b in blocks}),
        pixels=pixels,
        aoi_km2=round(aoi_km2(features, blocks), 3),
        fetched_pixels=fetched,
        processing_units=round(processing_units(cfg, blocks, model.bands, buffer_px), 2),
        throughput_px_s=round(measured, 1),
        throughput_source=source,
        gpu_hours=round(fetched * tta / measured / 3600, 4),
        output_bytes=output_bytes(pixels, len(model.class_names) - 1, m.probabilities, m.uncertainty),
    )
    return MapPlan(
        name=_safe(cfg.area.name),
        model=model,
        features=features,
        blocks=blocks,
        cost=cost,
        fusion_mode=m.fusion_mode,
        threshold=threshold,
        probabilities=m.probabilities,
        uncertainty=m.uncertainty,
        imagery_source=imagery_source(cfg),
    )


def output_dir(cfg: RunConfig) -> Path:
    """The run's output location: mapping.output_dir, else <work_dir>/maps/<area name>; an `s3://bucket/prefix` is
    GDAL's `/vsis3/bucket/prefix` (`lulc_core.objectstore`: read by GDAL, written whole by boto3)."""
    from lulc_core.objectstore import is_s3, vsi_path

    out = cfg.mapping.output_dir
    if out and is_s3(out):
        return vsi_path(out)
    return Path(out or cfg.work_dir / "maps" / _safe(cfg.area.name))
