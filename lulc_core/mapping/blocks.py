"""Predicting the blocks of a plan: one COG per block in the run's output location, resumable, a status per block.

Each block goes through the same `lulc_core.inference.Predictor` as the KServe predictor (`predict_tile` on the
block's grid: imagery fetched per sub-block, sliding windows, fusion, threshold). Pixels outside the AOI are
nodata (255); parts of a block the imagery store has nothing for are `unknown` (0). Written per block:

    blocks/<id>.tif              classes, uint8, colour table, nodata 255 (COG)
    blocks/<id>.confidence.tif   winning probability x 250, uint8, nodata 255 (COG; the OSM gap report reads it)
    blocks/<id>.probabilities.tif, blocks/<id>.uncertainty.tif   when mapping.probabilities / .uncertainty
    status/<id>.json             BlockStatus

A block whose COG exists, is a valid COG of the block's grid and records the plan's fingerprint (model version,
fusion, threshold) is skipped, so a killed run redoes only the blocks that were in flight. A block without any
imagery in the AOI is `no_imagery`; a block that fails is `failed` with the error — the other blocks go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import shapely
from pydantic import BaseModel, ConfigDict, Field
from rasterio.features import geometry_mask
from shapely.geometry import shape
from tqdm import tqdm

from lulc_core.config import RunConfig
from lulc_core.errors import LulcError, NotCoveredError
from lulc_core.grid import project_in_zone
from lulc_core.inference import PredictOptions, Predictor
from lulc_core.inference.options import FusionMode
from lulc_core.inference.predictor import CONFIDENCE_SCALE
from lulc_core.mapping.plan import MapBlock, MapPlan
from lulc_core.objectstore import exists
from lulc_core.raster import Raster, atomic_path, write_geotiff

log = logging.getLogger(__name__)

NODATA = 255
BLOCK_DIR = "blocks"
STATUS_DIR = "status"
Status = Literal["done", "skipped", "no_imagery", "failed"]


class BlockStatus(BaseModel):
    """What happened to one block."""

    model_config = ConfigDict(extra="forbid")

    id: str
    zone: str
    status: Status = Field(description="done, skipped (a valid COG was there), no_imagery or failed.")
    valid_share: float = Field(default=0.0, description="Share of the block's AOI pixels with imagery.")
    seconds: float = Field(default=0.0, description="Time spent on the block.")
    message: str | None = Field(default=None, description="Why the block is not done.")

    @property
    def complete(self) -> bool:
        return self.status in ("done", "skipped")


def block_path(out_dir: Path, block: MapBlock, kind: str = "") -> Path:
    """`<out>/blocks/<id>.tif`, or `<id>.<kind>.tif` for confidence, probabilities and uncertainty."""
    return Path(out_dir) / BLOCK_DIR / (f"{block.id}.{kind}.tif" if kind else f"{block.id}.tif")


def is_cog(path: Path) -> bool:
    """GDAL reports the COG layout (tiles, overviews and header first, as written by the COG driver). Not rasterio's
    `tiled`: it is false for an image of exactly one tile (a 512 px block in the COG driver's 512 px tiles)."""
    with rasterio.open(path) as src:
        return src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def is_valid_block(path: Path, block: MapBlock, fingerprint: str) -> bool:
    """Whether `path` is a complete COG of `block` written under the same plan fingerprint."""
    if not exists(path):
        return False
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
            same_grid = (
                (src.width, src.height) == (block.width, block.height)
                and src.crs == rasterio.crs.CRS.from_user_input(block.crs)
                and np.allclose(tuple(src.bounds), block.bounds, atol=block.resolution * 1e-3)
            )
        return (
            same_grid and tags.get("LULC_BLOCK") == block.id and tags.get("LULC_PLAN") == fingerprint and is_cog(path)
        )
    except rasterio.errors.RasterioIOError:
        return False


def aoi_mask(plan: MapPlan, block: MapBlock) -> np.ndarray:
    """True where a pixel centre of the block lies in an AOI feature the block touches."""
    geoms = [project_in_zone(shape(f.geometry), block.crs) for f in plan.features if f.index in block.features]
    transform = rasterio.transform.from_origin(block.bounds[0], block.bounds[3], block.resolution, block.resolution)
    union = shapely.union_all(geoms)
    if union.is_empty:
        return np.zeros((block.height, block.width), dtype=bool)
    return geometry_mask([union], (block.height, block.width), transform, invert=True)


def build_predictor(cfg: RunConfig, bundle_dir: Path, cache_root: Path, device: str = "auto") -> Predictor:
    """The Predictor of the mapping steps: the bundle on `device` (auto: CUDA when present), the configured imagery
    store and (for fusion modes that need it) OSM source, missing imagery predicted as unknown."""
    import torch

    from lulc_core.bundle import ModelBundle
    from lulc_core.imagery import build_imagery_store
    from lulc_core.inference.fusion import OSM_MODES

    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    bundle = ModelBundle.load(bundle_dir, device=dev)
    store = build_imagery_store(cfg.imagery, cache_dir=cache_root / "imagery")
    osm = None
    if FusionMode(cfg.mapping.fusion_mode) in OSM_MODES:
        from lulc_core.osm import build_osm_source

        osm = build_osm_source(cfg.labels, cache_dir=cache_root / "osm")
    return Predictor(bundle, store, osm, cfg.serving, progress=False, missing_imagery="empty")


def _write_block(plan: MapPlan, block: MapBlock, predictor: Predictor, out_dir: Path) -> tuple[Status, float]:
    opts = PredictOptions(
        threshold=plan.threshold,
        fusion_mode=FusionMode(plan.fusion_mode),
        probabilities=plan.probabilities,
        uncertainty=plan.uncertainty,
    )
    pred = predictor.predict_tile(block.tile(), opts, title=block.id, confidence=True)
    inside = aoi_mask(plan, block)
    classes = pred.classes.data[0]
    conf = pred.confidence.data[0] if pred.confidence is not None else np.where(classes > 0, CONFIDENCE_SCALE, 0)
    has_data = conf > 0
    n_inside = int(inside.sum())
    valid_share = float((has_data & inside).sum() / n_inside) if n_inside else 0.0
    if valid_share == 0.0:
        return "no_imagery", 0.0
    tags = {
        **pred.classes.tags,
        "LULC_BLOCK": block.id,
        "LULC_PLAN": plan.fingerprint,
        "LULC_MODEL": f"{plan.model.name}@{plan.model.version}",
        "LULC_VALID_SHARE": f"{valid_share:.6f}",
    }
    tf, crs = pred.classes.transform, pred.classes.crs
    for kind, raster in (("probabilities", pred.probabilities), ("uncertainty", pred.uncertainty)):
        if raster is not None:
            out = Raster(raster.data.astype(np.float32), tf, crs, raster.band_names, inside, dict(raster.tags))
            write_geotiff(block_path(out_dir, block, kind), out, cog=True, nodata=float("nan"), dtype="float32")
    confidence = Raster(
        conf[None].astype(np.uint8), tf, crs, ["confidence"], inside, {"SCALE": f"1/{CONFIDENCE_SCALE}"}
    )
    write_geotiff(block_path(out_dir, block, "confidence"), confidence, cog=True, nodata=NODATA, dtype="uint8")
    # the class COG last: its presence (with the plan fingerprint) marks the block complete
    write_geotiff(
        block_path(out_dir, block),
        Raster(classes[None], tf, crs, ["class"], inside, tags),
        cog=True,
        nodata=NODATA,
        colormap=predictor.label_set.colormap(),
        dtype="uint8",
    )
    return "done", valid_share


def predict_block(plan: MapPlan, block: MapBlock, predictor: Predictor, out_dir: Path) -> BlockStatus:
    """Predict and write one block (or skip it when a valid COG is there); never raises for the block's own failure."""
    started = time.perf_counter()
    if is_valid_block(block_path(out_dir, block), block, plan.fingerprint):
        return BlockStatus(id=block.id, zone=block.zone, status="skipped", valid_share=_recorded_share(out_dir, block))
    try:
        status, share = _write_block(plan, block, predictor, out_dir)
        message = None if status == "done" else "the imagery store has nothing for this block in its time frame"
    except NotCoveredError as exc:
        status, share, message = "no_imagery", 0.0, str(exc)
    except LulcError as exc:
        status, share, message = "failed", 0.0, str(exc)
    except Exception as exc:  # a block's unexpected failure must not stop the others; it is reported
        log.exception("block %s failed", block.id)
        status, share, message = "failed", 0.0, f"{type(exc).__name__}: {exc}"
    seconds = round(time.perf_counter() - started, 2)
    return BlockStatus(id=block.id, zone=block.zone, status=status, valid_share=share, seconds=seconds, message=message)


def _recorded_share(out_dir: Path, block: MapBlock) -> float:
    with rasterio.open(block_path(out_dir, block)) as src:
        return float(src.tags().get("LULC_VALID_SHARE", 1.0))


def predict_blocks(plan: MapPlan, blocks: Sequence[MapBlock], predictor: Predictor, out_dir: Path) -> list[BlockStatus]:
    """Predict `blocks` one after the other; each status also goes to `<out>/status/<id>.json`."""
    statuses = []
    for block in tqdm(blocks, desc="blocks", unit="block", leave=False):
        status = predict_block(plan, block, predictor, out_dir)
        with atomic_path(Path(out_dir) / STATUS_DIR / f"{block.id}.json") as tmp:
            tmp.write_text(status.model_dump_json())
        log.info("block %s: %s (%.1f s)", block.id, status.status, status.seconds)
        statuses.append(status)
    return statuses
