"""Assembling the blocks: one COG per UTM zone (and time frame), and a STAC collection with provenance.

A zone mosaic is a GDAL VRT over the zone's block COGs (written here as VRT XML: the blocks do not overlap and
share the zone grid, so each is one SimpleSource) turned into a COG by GDAL's COG driver (`rasterio.shutil.copy`),
which streams through GDAL's block cache: memory is bounded by GDAL_CACHEMAX, never by the map. Overviews are
nearest-neighbour (classes), the colour table and nodata (255) come from the VRT.

A zone whose blocks are not all complete (no imagery, failed, missing) is still written — the finished blocks are
useful — but tagged `LULC_COMPLETE=false` with the missing block ids, and its STAC Item says `lulc:complete: false`.

STAC (pystac, STAC 1.0.0): a Collection `<area>-map` with one Item per block (with its status; assets when
written) and one per zone mosaic, each carrying the provenance (model name/version/URI, test metrics, label set,
classes and colours, imagery source and dates, fusion mode, threshold, code version).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio
import shapely
from pydantic import BaseModel, ConfigDict
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import box, mapping

from lulc_core.mapping.blocks import NODATA, BlockStatus, block_path, is_valid_block
from lulc_core.mapping.plan import MapBlock, MapPlan
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

ZONE_DIR = "zones"
STAC_DIR = "stac"
STAC_VERSION = "1.0.0"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GDAL_CACHE_MB = 256
MIN_OVERVIEW_PX = 64
"""Overview levels are made down to this edge (GDAL's AUTO would stop at the block size, 256 px)."""


class ZoneMosaic(BaseModel):
    """One assembled zone."""

    model_config = ConfigDict(extra="forbid")

    zone: str
    crs: str
    path: Path
    confidence_path: Path
    bounds: tuple[float, float, float, float]
    blocks: list[str]
    missing: list[str]

    @property
    def complete(self) -> bool:
        return not self.missing


def zone_path(out_dir: Path, zone: str, kind: str = "") -> Path:
    return Path(out_dir) / ZONE_DIR / (f"{zone}.{kind}.tif" if kind else f"{zone}.tif")


def _vrt_xml(
    sources: Sequence[tuple[Path, MapBlock]], crs: str, bounds: tuple[float, float, float, float], res: float,
    colours: dict[int, tuple[int, int, int, int]] | None, tags: dict[str, str],
) -> str:  # fmt: skip
    x0, y0, x1, y1 = bounds
    width, height = round((x1 - x0) / res), round((y1 - y0) / res)
    table = ""
    if colours is not None:
        entries = "".join(
            '<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*colours.get(i, (0, 0, 0, 0))) for i in range(256)
        )
        table = f"<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>"
    parts = []
    for path, b in sources:
        xoff, yoff = round((b.bounds[0] - x0) / res), round((y1 - b.bounds[3]) / res)
        parts.append(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{html.escape(str(path))}</SourceFilename>'
            f"<SourceBand>1</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{b.width}" ySize="{b.height}"/>'
            f'<DstRect xOff="{xoff}" yOff="{yoff}" xSize="{b.width}" ySize="{b.height}"/></SimpleSource>'
        )
    wkt = html.escape(CRS.from_user_input(crs).to_wkt())
    meta = "".join(f'<MDI key="{html.escape(k)}">{html.escape(v)}</MDI>' for k, v in tags.items())
    return (
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>{wkt}</SRS><Metadata>{meta}</Metadata>'
        f"<GeoTransform>{x0}, {res}, 0, {y1}, 0, {-res}</GeoTransform>"
        f'<VRTRasterBand dataType="Byte" band="1"><NoDataValue>{NODATA}</NoDataValue>{table}'
        + "".join(parts)
        + "</VRTRasterBand></VRTDataset>"
    )


def _mosaic(vrt: str, target: Path) -> Path:
    """VRT XML -> COG at `target` (atomically), through GDAL's COG driver in bounded memory."""
    from rasterio.shutil import copy as rio_copy

    with atomic_path(target) as tmp:
        staged_vrt = tmp.with_suffix(".vrt")
        staged_vrt.write_text(vrt)
        cog = tmp.with_suffix(".cog.tif")
        try:
            with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
                with rasterio.open(staged_vrt) as src:
                    levels = sum(1 for k in range(1, 16) if min(src.width, src.height) >> k >= MIN_OVERVIEW_PX)
                options = {"COMPRESS": "DEFLATE", "BLOCKSIZE": 256, "OVERVIEW_RESAMPLING": "NEAREST"}
                rio_copy(staged_vrt, cog, driver="COG", OVERVIEW_COUNT=levels, **options)
            cog.replace(tmp)
        finally:
            staged_vrt.unlink(missing_ok=True)
            cog.unlink(missing_ok=True)
    return target


def assemble_zones(plan: MapPlan, statuses: Sequence[BlockStatus], out_dir: Path) -> list[ZoneMosaic]:
    """One class COG and one confidence COG per zone from the blocks that are complete and valid."""
    by_id = {s.id: s for s in statuses}
    colours = plan.label_set().colormap()
    zones = []
    for zone, blocks in plan.zones().items():
        good = [
            b
            for b in blocks
            if by_id.get(b.id) is not None
            and by_id[b.id].complete
            and is_valid_block(block_path(out_dir, b), b, plan.fingerprint)
        ]
        missing = [b.id for b in blocks if b not in good]
        bounds = shapely.union_all([box(*b.bounds) for b in blocks]).bounds
        res = blocks[0].resolution
        tags = {"LULC_ZONE": zone, "LULC_COMPLETE": str(not missing).lower(), "LULC_MISSING_BLOCKS": ",".join(missing)}
        path = zone_path(out_dir, zone)
        conf = zone_path(out_dir, zone, "confidence")
        for target, kind, table in ((path, "", colours), (conf, "confidence", None)):
            sources = [(block_path(out_dir, b, kind), b) for b in good]
            _mosaic(_vrt_xml(sources, blocks[0].crs, bounds, res, table, tags), target)
        if missing:
            log.warning("zone %s is INCOMPLETE: %d of %d blocks missing", zone, len(missing), len(blocks))
        zones.append(
            ZoneMosaic(
                zone=zone,
                crs=blocks[0].crs,
                path=path,
                confidence_path=conf,
                bounds=bounds,
                blocks=[b.id for b in good],
                missing=missing,
            )
        )
    return zones


# --- STAC ------------------------------------------------------------------------------------------------------


def _footprint(bounds: tuple[float, float, float, float], crs: str) -> tuple[dict[str, Any], list[float]]:
    transformer = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    dense = shapely.segmentize(box(*bounds), max_segment_length=(bounds[2] - bounds[0]) / 8 or 1.0)
    geom = shapely.transform(dense, lambda xy: shapely.get_coordinates(
        shapely.points(*transformer.transform(xy[:, 0], xy[:, 1]))))  # fmt: skip
    return mapping(geom), list(geom.bounds)


def provenance(plan: MapPlan) -> dict[str, Any]:
    """The provenance every Item carries (lulc: properties)."""
    m = plan.model
    return {
        "lulc:model": m.name,
        "lulc:model_version": m.version,
        "lulc:model_uri": m.uri,
        "lulc:test_metrics": m.metrics,
        "lulc:label_set": m.label_set,
        "lulc:classes": m.class_names,
        "lulc:imagery_source": plan.imagery_source,
        "lulc:fusion_mode": plan.fusion_mode,
        "lulc:threshold": plan.threshold,
        "lulc:code_version": plan.code_version,
    }


def _item(item_id: str, bounds: tuple[float, float, float, float], crs: str, start: Any, end: Any, props: dict[str, Any]) -> Any:  # fmt: skip
    import pystac

    geometry, bbox = _footprint(bounds, crs)
    return pystac.Item(
        id=item_id,
        geometry=geometry,
        bbox=bbox,
        datetime=None,
        start_datetime=_day(start),
        end_datetime=_day(end, last=True),
        properties={"proj:epsg": int(crs.split(":")[1]), **props},
    )


def _day(d: Any, last: bool = False) -> datetime:
    return datetime.combine(d, datetime.max.time() if last else datetime.min.time(), UTC)


def _asset(path: Path, title: str, roles: list[str]) -> Any:
    import pystac

    return pystac.Asset(href=str(path.resolve()), media_type=COG_TYPE, title=title, roles=roles)


def _atomic_stac_io() -> Any:
    import pystac

    class AtomicStacIO(pystac.StacIO):  # type: ignore[misc]
        """pystac's default reader; every document written through `atomic_path` (a local file or an S3 object)."""

        def read_text(self, source: Any, *args: Any, **kwargs: Any) -> str:
            return str(pystac.StacIO.default().read_text(source, *args, **kwargs))

        def write_text(self, dest: Any, txt: str, *args: Any, **kwargs: Any) -> None:
            with atomic_path(str(dest)) as tmp:
                tmp.write_text(txt)

    return AtomicStacIO()


def write_stac(plan: MapPlan, statuses: Sequence[BlockStatus], zones: Sequence[ZoneMosaic], out_dir: Path) -> Path:
    """A self-contained STAC Collection under `<out>/stac/` (relative hrefs); returns collection.json's path."""
    import pystac

    prov = provenance(plan)
    by_id = {s.id: s for s in statuses}
    starts, ends = [b.start for b in plan.blocks], [b.end for b in plan.blocks]
    aoi = plan.aoi_frame()
    collection = pystac.Collection(
        id=f"{plan.name}-map",
        description=f"Land-use/land-cover map of {plan.name} by {plan.model.name}@{plan.model.version}: "
        f"{len(plan.blocks)} blocks in {len(zones)} UTM zone mosaics.",
        extent=pystac.Extent(
            pystac.SpatialExtent([[float(v) for v in aoi.total_bounds]]),
            pystac.TemporalExtent([[_day(min(starts)), _day(max(ends), last=True)]]),
        ),
        license="proprietary",
        title=f"{plan.name} land cover",
        extra_fields={"lulc:complete": all(z.complete for z in zones), **prov},
    )
    for b in plan.blocks:
        status = by_id.get(b.id)
        props = {
            **prov,
            "lulc:kind": "block",
            "lulc:zone": b.zone,
            "lulc:status": status.status if status else "missing",
            "lulc:valid_share": status.valid_share if status else 0.0,
        }
        item = _item(b.id, b.bounds, b.crs, b.start, b.end, props)
        if status is not None and status.complete:
            item.add_asset("classes", _asset(block_path(out_dir, b), "classes", ["data"]))
            item.add_asset("confidence", _asset(block_path(out_dir, b, "confidence"), "confidence x 250", ["data"]))
        collection.add_item(item)
    for z in zones:
        first = next(b for b in plan.blocks if b.zone == z.zone)
        props = {**prov, "lulc:kind": "zone mosaic", "lulc:complete": z.complete, "lulc:missing_blocks": z.missing}
        item = _item(z.zone, z.bounds, z.crs, first.start, first.end, props)
        item.add_asset("classes", _asset(z.path, "classes (zone mosaic)", ["data"]))
        item.add_asset("confidence", _asset(z.confidence_path, "confidence x 250 (zone mosaic)", ["data"]))
        collection.add_item(item)
    root = Path(out_dir) / STAC_DIR
    collection.normalize_hrefs(str(root))
    collection.make_all_asset_hrefs_relative()
    pystac.set_stac_version(STAC_VERSION)  # the objects here are plain STAC 1.0.0 (no 1.1 fields)
    try:
        collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED, stac_io=_atomic_stac_io())
    finally:
        pystac.set_stac_version(None)
    return root / "collection.json"
