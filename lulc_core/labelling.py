"""Labels: OSM polygons of each class of a label set burnt onto a tile's pixel grid.

One query per tile fetches the polygons of every class: the label set's filters joined with `or`, whole polygons
(not clipped), each classified locally by the filter engine (`lulc_core.osm.filter`: the same evaluation as the
source's, geometric selectors such as `area:` on the whole polygon) and then clipped to the tile's bbox. A polygon
matching several classes is burnt once per class, in class order, exactly as one query per class would. For the
ohsome API that is one request per tile instead of one per class. Polygons of all classes are burnt largest first, so smaller polygons lie on top (a park inside a residential
area stays a park); pixels are burnt only when their centre is inside a polygon (all_touched off); pixels without
a polygon are 0 (`unknown`). `label_tiles` writes one uint8 GeoTIFF per tile with the label set's colour map and
reuses earlier results keyed by tile grid, date, label-set fingerprint and source.

A label source is either an `OsmSource` (polygons per class filter, burnt here) or a `RasterLabelSource` that
gives the class raster itself (CORINE through Sentinel Hub, `lulc_core.imagery.corine`); `build_label_source`
picks it from `labels.source`, and `tile_labels` is the one call every step and the predictor use.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import from_origin
from shapely.geometry import box
from tqdm import tqdm

from lulc_core.errors import InputError, LulcError
from lulc_core.geo import BBox, Tile
from lulc_core.labels import LabelSet
from lulc_core.osm import OsmSource, build_osm_source
from lulc_core.osm._frames import polygonal
from lulc_core.osm.filter import FeatureTable, parse_filter
from lulc_core.raster import Raster, atomic_path, write_geotiff

if TYPE_CHECKING:
    from lulc_core.config import RunConfig

log = logging.getLogger(__name__)

KEY_TAG = "LULC_LABEL_KEY"


@runtime_checkable
class RasterLabelSource(Protocol):
    """A label source that gives a tile's class raster directly, for the label set it was built with."""

    label_set: LabelSet

    def rasterize(self, tile: Tile, when: date | None = None) -> Raster:
        """One uint8 band "class" on the tile grid, 0 = unknown."""
        ...


LabelSource: TypeAlias = OsmSource | RasterLabelSource


def build_label_source(cfg: RunConfig, label_set: LabelSet, cache_dir: Path | None = None) -> LabelSource:
    """The label source of `cfg.labels.source`: a local OSM extract, the ohsome API, or CORINE (Sentinel Hub BYOC
    collection `imagery.sentinelhub.byoc_corine_collection`, mapped onto `label_set` by its `corine_codes`).

    Raises:
        ConfigError: missing credentials, a label set without corine_codes, a missing OSM file.
    """
    if cfg.labels.source == "corine":
        from lulc_core.imagery.corine import CorineLabelSource

        return CorineLabelSource(cfg.imagery.sentinelhub, label_set, cache_dir)
    return build_osm_source(cfg.labels, cache_dir=cache_dir)


def tile_labels(source: LabelSource, label_set: LabelSet, tile: Tile, when: date | None = None) -> Raster:
    """The class raster of `tile` at `when` (default `tile.end`) from any label source."""
    if isinstance(source, RasterLabelSource):
        if source.label_set != label_set:
            raise InputError(
                "labels.label_set",
                f"the label source was built for label set {source.label_set.name!r}, not {label_set.name!r}",
                "build the label source with the label set being labelled",
            )
        return source.rasterize(tile, when or tile.end)
    return rasterize_labels(source, label_set, tile, when)


def rasterize_labels(source: OsmSource, label_set: LabelSet, tile: Tile, when: date | None = None) -> Raster:
    """The class raster of `tile`: one uint8 band "class" on the tile grid, 0 where no polygon.

    Args:
        source: where OSM polygons come from.
        label_set: classes 1..N and their ohsome filters.
        tile: the grid (CRS, bounds, resolution).
        when: OSM date (default: `tile.end`, the end of the imagery time frame).
    """
    when = when or tile.end
    crs = CRS.from_user_input(tile.crs)
    shapes: list[tuple[object, int, float]] = []
    for value, gdf in class_polygons(source, label_set, tile.bbox_wgs84, when):
        projected = gdf.to_crs(crs).geometry
        for geom in projected:
            if geom is not None and not geom.is_empty and geom.area > 0:
                shapes.append((geom, value, float(geom.area)))
    transform = from_origin(tile.bounds[0], tile.bounds[3], tile.resolution, tile.resolution)
    out = np.zeros((tile.height, tile.width), dtype=np.uint8)
    if shapes:
        shapes.sort(key=lambda s: -s[2])  # stable: equal areas keep class order
        rasterize(
            ((g, v) for g, v, _ in shapes),
            out=out,
            transform=transform,
            all_touched=False,
            dtype="uint8",
        )
    tags = {"LABEL_SET": label_set.name, "LABEL_SET_FINGERPRINT": label_set.fingerprint(), "OSM_DATE": str(when)}
    return Raster(out[None], transform, crs, ["class"], None, tags)


def combined_filter(label_set: LabelSet) -> str:
    """Every class's filter, each in parentheses, joined with `or`: one query for the whole label set."""
    return " or ".join(f"({c.osm_filter})" for c in label_set.classes)


def class_polygons(
    source: OsmSource, label_set: LabelSet, bbox: BBox, when: date
) -> list[tuple[int, gpd.GeoDataFrame]]:
    """(class value, polygons of that class clipped to `bbox`) for every class with polygons, from one query.

    The query returns whole polygons with their OSM ids and the tags any class reads; each class's filter is
    evaluated on them (a polygon may belong to several classes), then the matches are clipped to `bbox`.
    """
    filters = [parse_filter(c.osm_filter) for c in label_set.classes]  # a syntax error names the class's own filter
    gdf: gpd.GeoDataFrame = source.features(bbox, when, combined_filter(label_set), clip=False)
    if gdf.empty:
        return []
    geoms = gdf.geometry.to_numpy()
    table = FeatureTable.build(
        gdf.drop(columns=["osm_id", "osm_type", gdf.geometry.name]),
        ["polygon"] * len(gdf),
        gdf["osm_type"],
        osm_ids=gdf["osm_id"],
        geometries=geoms,
    )
    window = box(*bbox.as_tuple())
    clipped = np.array([polygonal(g) for g in shapely.intersection(geoms, window)], dtype=object)
    out = []
    inside = np.array([g is not None for g in clipped], dtype=bool)
    for value, flt in enumerate(filters, start=1):
        hit = flt.evaluate(table) & inside
        if hit.any():
            out.append((value, gpd.GeoDataFrame(geometry=list(clipped[hit]), crs=gdf.crs)))
    return out


def source_key(source: LabelSource) -> str:
    """A stable identity of a source for cache keys (its `cache_key`, else class and path/url)."""
    key = getattr(source, "cache_key", None)
    if isinstance(key, str) and key:
        return key
    where = getattr(source, "path", None) or getattr(source, "url", None) or ""
    if isinstance(where, Path) and where.is_file():
        stat = where.stat()
        return f"{type(source).__name__}:{where.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{type(source).__name__}:{where}"


def label_key(source: LabelSource, label_set: LabelSet, tile: Tile, when: date) -> str:
    """The cache key of one tile's labels: tile grid, date, label-set fingerprint and source."""
    parts = [tile.id, tile.crs, repr(tile.bounds), repr(tile.resolution), str(when), label_set.fingerprint()]
    parts.append(source_key(source))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def _stored_key(path: Path) -> str | None:
    try:
        with rasterio.open(path) as src:
            value = src.tags().get(KEY_TAG)
            return str(value) if value is not None else None
    except rasterio.errors.RasterioIOError:
        return None


def label_tiles(
    source: LabelSource,
    label_set: LabelSet,
    tiles: Sequence[Tile],
    out_dir: Path,
    cache_dir: Path | None = None,
    concurrency: int = 1,
) -> list[Path]:
    """Write `<out_dir>/<tile.id>.tif` (uint8 classes with the label set's colour map) for every tile.

    A tile whose file already holds labels with the same key is skipped; with `cache_dir`, labels are also kept
    there (`<cache_dir>/<fingerprint>/<key>.tif`) and copied from it on a later run. With `concurrency` > 1, that
    many tiles are labelled at once in threads (a remote source such as ohsome spends most of a tile waiting).

    Raises:
        InputError: `concurrency` below 1.
        The source's error (FilterSyntaxError, UpstreamError, ...) with the tile id in its message; tiles not yet
        started are cancelled, files already written stay (a re-run resumes).
    """
    if concurrency < 1:
        raise InputError("labels.concurrency", f"{concurrency} must be at least 1", "use e.g. 8")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) / label_set.fingerprint() if cache_dir else None
    paths = [out / f"{tile.id}.tif" for tile in tiles]

    def one(tile: Tile, path: Path) -> bool:
        """Label one tile; True when an earlier result was reused."""
        when = tile.end
        key = label_key(source, label_set, tile, when)
        if path.is_file() and _stored_key(path) == key:
            return True
        cached = cache / f"{key}.tif" if cache else None
        if cached is not None and cached.is_file() and _stored_key(cached) == key:
            with atomic_path(path) as tmp:
                shutil.copyfile(cached, tmp)
            return True
        try:
            raster = tile_labels(source, label_set, tile, when)
        except LulcError as exc:
            if tile.id not in str(exc):
                exc.args = (f"tile {tile.id}: {exc}", *exc.args[1:])
            raise
        raster.tags[KEY_TAG] = key
        write_geotiff(path, raster, colormap=label_set.colormap(), dtype="uint8")
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(cached) as tmp:
                shutil.copyfile(path, tmp)
        return False

    bar = tqdm(total=len(tiles), desc="labels", unit="tile", leave=False)
    hits = 0
    try:
        if concurrency == 1:
            for tile, path in zip(tiles, paths, strict=True):
                hits += one(tile, path)
                bar.update()
        else:
            with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="labels") as pool:
                futures = [pool.submit(one, tile, path) for tile, path in zip(tiles, paths, strict=True)]
                try:
                    for fut in as_completed(futures):
                        hits += fut.result()
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    log.info("labels: %d tiles (%d reused) in %s", len(paths), hits, out)
    return paths
