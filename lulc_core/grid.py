"""The area grid: an AOI (file or bbox) and time frames become tiles on the UTM grid.

Two ways to cut cells:

- `tile_size_m` (default): square cells of that edge on the UTM grid of each zone the AOI touches. The AOI is cut
  along the UTM zone borders (and the equator); in each zone the grid is anchored at the top-left corner of the
  AOI's part in that zone, snapped to the pixel size, so a multi-part AOI spanning zones or continents works and
  small AOIs are covered by whole tiles.
- `zoom`: the OSM/XYZ (web-mercator) tiles of that zoom level, each fetched on the UTM grid of its centre.

Cells whose share covered by the AOI is below `min_land_share` are dropped (the AOI stands in for the land area:
draw it along the coast to drop sea tiles); `sample_fraction` keeps a seeded random share of the cells; each kept
cell becomes one `Tile` per time frame. AOI features may carry `start`/`end` properties (ISO dates): a cell is
then paired only with the time frames overlapping the dates of the parts it covers (the bundled sample area uses
this: three patches, each with its own acquisition date).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from pyproj import Transformer
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from lulc_core.config import AreaConfig
from lulc_core.errors import InputError
from lulc_core.geo import BBox, Tile, TimeRange
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

WGS84 = "EPSG:4326"
MERCATOR_MAX_LAT = 85.0511287798066
TILE_COLUMNS = ["id", "crs", "minx", "miny", "maxx", "maxy", "resolution", "start", "end"]


@dataclass
class AoiPart:
    """One polygon of the AOI in EPSG:4326 with its optional own time frame."""

    geometry: BaseGeometry
    start: date | None = None
    end: date | None = None


@dataclass
class _Cell:
    key: tuple[str, int, int]
    crs: str
    bounds: tuple[float, float, float, float]
    share: float
    parts: set[int] = field(default_factory=set)
    label: str = ""


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "area"


def _parse_date(value: object, field_name: str) -> date | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(field_name, f"{value!r} is not an ISO date", "write it as YYYY-MM-DD") from None


def load_aoi(area: AreaConfig) -> list[AoiPart]:
    """The AOI of `area` as polygon parts in EPSG:4326 (multi-polygons exploded, invalid rings repaired).

    Raises:
        InputError: `area.aoi` missing/unreadable/without polygons, or `area.bbox` invalid.
    """
    if area.bbox is not None:
        bbox = BBox.from_sequence(area.bbox, "area.bbox")
        return [AoiPart(box(*bbox.as_tuple()))]
    assert area.aoi is not None
    path = Path(area.aoi)
    if not path.is_file():
        raise InputError("area.aoi", f"file {str(path)!r} does not exist", "give a GeoJSON or GeoPackage with polygons")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise InputError("area.aoi", f"cannot read {path}: {exc}", "give a GeoJSON or GeoPackage file") from exc
    if gdf.crs is None:
        log.warning("%s has no CRS; assuming EPSG:4326", path)
        gdf = gdf.set_crs(WGS84)
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].to_crs(WGS84)
    parts: list[AoiPart] = []
    for _, row in gdf.iterrows():
        geom = shapely.make_valid(row.geometry)
        start = _parse_date(row.get("start"), "area.aoi.start")
        end = _parse_date(row.get("end"), "area.aoi.end")
        if start and end and end < start:
            raise InputError("area.aoi", f"feature with end {end} before start {start}", "swap the dates")
        polys = [g for g in shapely.get_parts(geom) if isinstance(g, Polygon) and g.area > 0]
        for sub in polys:
            for poly in shapely.get_parts(sub):
                parts.append(AoiPart(poly, start, end))
    if not parts:
        raise InputError("area.aoi", f"{path} holds no polygon with an area", "draw the area as (multi)polygons")
    for part in parts:
        w, s, e, n = part.geometry.bounds
        if w < -180 or e > 180 or s < -90 or n > 90:
            raise InputError("area.aoi", f"coordinates {part.geometry.bounds} are outside lon/lat", "use EPSG:4326")
    return parts


def _utm_epsg(zone: int, north: bool) -> int:
    return (32600 if north else 32700) + zone


def _zone_pieces(parts: list[AoiPart]) -> dict[int, list[tuple[int, BaseGeometry]]]:
    """Cut each part along UTM zone borders and the equator: EPSG -> [(part index, piece in EPSG:4326)]."""
    out: dict[int, list[tuple[int, BaseGeometry]]] = {}
    for idx, part in enumerate(parts):
        w, s, e, n = part.geometry.bounds
        first, last = int((w + 180) // 6) + 1, int((e + 180) // 6) + 1
        for zone in range(max(first, 1), min(last, 60) + 1):
            for north in (True, False):
                lat0, lat1 = (0.0, 90.0) if north else (-90.0, 0.0)
                if n <= lat0 or s >= lat1:
                    continue
                piece = part.geometry.intersection(zone_strip(_utm_epsg(zone, north)))
                if piece.area > 0:
                    out.setdefault(_utm_epsg(zone, north), []).append((idx, piece))
    return out


def zone_strip(epsg: int) -> Polygon:
    """The lon/lat strip (EPSG:4326) of a UTM zone given by its EPSG code (326zz north, 327zz south)."""
    zone, north = epsg % 100, epsg // 100 == 326
    lat0, lat1 = (0.0, 90.0) if north else (-90.0, 0.0)
    return box(-180 + 6 * (zone - 1), lat0, -180 + 6 * zone, lat1)


def project_in_zone(geom: BaseGeometry, crs: str) -> BaseGeometry:
    """`geom` (EPSG:4326) cut to the UTM zone of `crs` ("EPSG:326zz"/"EPSG:327zz") and projected onto it.

    Zone grids reach across their zone's border (a block is a square on the grid), so what is counted or masked
    per zone must be the AOI's piece in that zone, or the strips along zone borders count twice. Any other CRS
    gets the whole geometry.
    """
    epsg = int(crs.upper().removeprefix("EPSG:")) if crs.upper().startswith("EPSG:") else 0
    if epsg // 100 in (326, 327) and 1 <= epsg % 100 <= 60:
        geom = geom.intersection(zone_strip(epsg))
    return _project(geom, crs)


def _project(geom: BaseGeometry, crs: str) -> BaseGeometry:
    dense = shapely.segmentize(geom, max_segment_length=0.005)
    transformer = Transformer.from_crs(WGS84, crs, always_xy=True)
    return shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))


def _utm_cells(parts: list[AoiPart], tile_size_m: float, resolution: float) -> list[_Cell]:
    pixels = max(1, round(tile_size_m / resolution))
    if not math.isclose(pixels * resolution, tile_size_m, rel_tol=1e-9):
        log.warning(
            "tile_size_m %s is not a multiple of the resolution %s; using %s m",
            tile_size_m,
            resolution,
            pixels * resolution,
        )
    size = pixels * resolution
    cells: list[_Cell] = []
    for epsg, pieces in sorted(_zone_pieces(parts).items()):
        crs = f"EPSG:{epsg}"
        projected = [(idx, _project(piece, crs)) for idx, piece in pieces]
        union = shapely.union_all([g for _, g in projected])
        ux0, _, _, uy1 = union.bounds
        x0 = round(ux0 / resolution) * resolution  # nearest pixel edge: no sliver column of nodata
        y1 = round(uy1 / resolution) * resolution
        found: dict[tuple[int, int], _Cell] = {}
        shapely.prepare(union)
        for idx, geom in projected:
            gx0, gy0, gx1, gy1 = geom.bounds
            cols = np.arange(int((gx0 - x0) // size), math.ceil((gx1 - x0) / size))
            rows = np.arange(int((y1 - gy1) // size), math.ceil((y1 - gy0) / size))
            cc, rr = (a.ravel() for a in np.meshgrid(cols, rows))
            boxes = shapely.box(x0 + cc * size, y1 - (rr + 1) * size, x0 + (cc + 1) * size, y1 - rr * size)
            shapely.prepare(geom)
            hit = shapely.intersects(geom, boxes)
            new = np.array([(int(c), int(r)) not in found for c, r in zip(cc, rr, strict=True)], dtype=bool) & hit
            shares = np.zeros(len(boxes))
            if new.any():
                shares[new] = shapely.area(shapely.intersection(boxes[new], union)) / (size * size)
            for k in np.flatnonzero(hit):
                key = (int(cc[k]), int(rr[k]))
                cell = found.get(key)
                if cell is None:
                    bounds = tuple(float(v) for v in shapely.bounds(boxes[k]))
                    cell = _Cell((crs, key[1], key[0]), crs, bounds, float(shares[k]))  # type: ignore[arg-type]
                    cell.label = f"{epsg}-{round(bounds[0])}-{round(bounds[1])}"
                    found[key] = cell
                cell.parts.add(idx)
        cells.extend(found[k] for k in sorted(found, key=lambda rc: (rc[1], rc[0])))
    return cells


def _xyz_bounds(x: int, y: int, z: int) -> tuple[float, float, float, float]:
    n = 2**z

    def lat(yy: int) -> float:
        return math.degrees(math.atan(math.sinh(math.pi * (1 - 2 * yy / n))))

    return (x / n * 360 - 180, lat(y + 1), (x + 1) / n * 360 - 180, lat(y))


def _xyz_index(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    lat = max(min(lat, MERCATOR_MAX_LAT), -MERCATOR_MAX_LAT)
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return min(max(x, 0), n - 1), min(max(y, 0), n - 1)


def _zoom_cells(parts: list[AoiPart], zoom: int, resolution: float) -> list[_Cell]:
    to_merc = Transformer.from_crs(WGS84, "EPSG:3857", always_xy=True)
    merc_parts = [_project(p.geometry, "EPSG:3857") for p in parts]
    union = shapely.union_all(merc_parts)
    found: dict[tuple[int, int], _Cell] = {}
    for idx, part in enumerate(parts):
        w, s, e, n = part.geometry.bounds
        x_min, y_min = _xyz_index(w, n, zoom)
        x_max, y_max = _xyz_index(e, s, zoom)
        for y in range(y_min, y_max + 1):
            for x in range(x_min, x_max + 1):
                lonlat = _xyz_bounds(x, y, zoom)
                mb = box(*to_merc.transform_bounds(*lonlat))
                if not shapely.intersects(merc_parts[idx], mb):
                    continue
                cell = found.get((x, y))
                if cell is None:
                    bbox = BBox(west=lonlat[0], south=lonlat[1], east=lonlat[2], north=lonlat[3])
                    crs = bbox.utm_crs().to_string()
                    bx0, by0, bx1, by1 = bbox.to_crs(crs)
                    snapped = (
                        math.floor(bx0 / resolution) * resolution,
                        math.floor(by0 / resolution) * resolution,
                        math.ceil(bx1 / resolution) * resolution,
                        math.ceil(by1 / resolution) * resolution,
                    )
                    share = shapely.intersection(mb, union).area / mb.area
                    cell = _Cell((f"z{zoom}", y, x), crs, snapped, share, label=f"z{zoom}-{x}-{y}")
                    found[(x, y)] = cell
                cell.parts.add(idx)
    return [found[k] for k in sorted(found, key=lambda xy: (xy[1], xy[0]))]


def _overlaps(frame: TimeRange, part: AoiPart) -> bool:
    if part.start is None and part.end is None:
        return True
    start = part.start or date.min
    end = part.end or date.max
    return frame.start <= end and start <= frame.end


def build_grid(area: AreaConfig, resolution: float) -> list[Tile]:
    """Cut the AOI of `area` into tiles: one `Tile` per kept cell per (matching) time frame.

    Args:
        area: AOI (file or bbox), tiling (`tile_size_m` or `zoom`), `min_land_share`, sampling, time frames.
        resolution: pixel size in metres; tile bounds are whole pixels.

    Returns:
        Tiles ordered by zone, row, column, then time frame. Ids are unique and file-name safe:
        `<name>-<epsg>-<minx>-<miny>-<start>-<end>` (or `<name>-z<zoom>-<x>-<y>-...`).

    Raises:
        InputError: bad bbox, missing/empty AOI file, or no tile left (field and fix named).
    """
    if resolution <= 0 or not math.isfinite(resolution):
        raise InputError("imagery.resolution", f"{resolution!r} must be a positive number of metres")
    parts = load_aoi(area)
    if area.zoom is not None:
        cells = _zoom_cells(parts, area.zoom, resolution)
    else:
        if area.tile_size_m is None:
            raise InputError("area.tile_size_m", "neither tile_size_m nor zoom is set", "set one of them")
        if area.tile_size_m < resolution:
            raise InputError("area.tile_size_m", f"{area.tile_size_m} m is below the resolution {resolution} m")
        cells = _utm_cells(parts, area.tile_size_m, resolution)
    total = len(cells)
    cells = [c for c in cells if c.share > 0 and c.share + 1e-9 >= area.min_land_share]
    if not cells:
        raise InputError(
            "area.min_land_share",
            f"no tile of the {total} cells covering the AOI has an AOI share of at least {area.min_land_share}",
            "lower min_land_share or use smaller tiles",
        )
    if area.sample_fraction < 1:
        keep = max(1, round(len(cells) * area.sample_fraction))
        rng = np.random.default_rng(area.seed)
        chosen = sorted(rng.choice(len(cells), size=keep, replace=False).tolist())
        cells = [cells[i] for i in chosen]
    frames = list(area.time_frames)
    keys = [(f.start, f.end) for f in frames]
    if len(set(keys)) != len(keys):
        raise InputError("area.time_frames", "time frames repeat", "list each date range once")
    name = _safe(area.name)
    tiles: list[Tile] = []
    for cell in cells:
        for frame in frames:
            if not any(_overlaps(frame, parts[i]) for i in cell.parts):
                continue
            tile_id = f"{name}-{cell.label}-{frame.start:%Y%m%d}-{frame.end:%Y%m%d}"
            tiles.append(
                Tile(
                    id=tile_id,
                    crs=cell.crs,
                    bounds=cell.bounds,
                    resolution=resolution,
                    start=frame.start,
                    end=frame.end,
                )
            )
    if not tiles:
        raise InputError(
            "area.time_frames",
            "no time frame overlaps the start/end dates of the AOI features",
            "align area.time_frames with the AOI's start/end properties",
        )
    log.info("grid: %d cells of %d kept, %d tiles over %d time frame(s)", len(cells), total, len(tiles), len(frames))
    return tiles


def tiles_to_geodataframe(tiles: Sequence[Tile]) -> gpd.GeoDataFrame:
    """Tiles as a GeoDataFrame in EPSG:4326 (densified footprints) with every Tile field as a column."""
    rows, geoms = [], []
    for t in tiles:
        footprint = shapely.segmentize(box(*t.bounds), max_segment_length=max(t.resolution * 16, 1.0))
        transformer = Transformer.from_crs(t.crs, WGS84, always_xy=True)
        geoms.append(
            shapely.transform(footprint, lambda xy, tr=transformer: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))
        )
        minx, miny, maxx, maxy = t.bounds
        rows.append(
            {
                "id": t.id,
                "crs": t.crs,
                "minx": minx,
                "miny": miny,
                "maxx": maxx,
                "maxy": maxy,
                "resolution": t.resolution,
                "start": t.start.isoformat(),
                "end": t.end.isoformat(),
            }
        )
    return gpd.GeoDataFrame(pd.DataFrame(rows, columns=TILE_COLUMNS), geometry=geoms, crs=WGS84)


def write_tiles(tiles: Sequence[Tile], path: str | Path) -> Path:
    """Write tiles as GeoJSON (`.geojson`/`.json`) or GeoParquet (`.parquet`), atomically."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in {".geojson", ".json", ".parquet"}:
        raise InputError("tiles", f"unsupported file type {suffix!r} for {target}", "use .geojson or .parquet")
    if not tiles:
        raise InputError("tiles", "no tiles to write", "check the area configuration")
    gdf = tiles_to_geodataframe(tiles)
    with atomic_path(target) as tmp:
        if suffix == ".parquet":
            gdf.to_parquet(tmp, index=False)
        else:
            gdf.to_file(tmp, driver="GeoJSON", layer=target.stem)
    return target


def read_tiles(path: str | Path) -> list[Tile]:
    """Read tiles written by `write_tiles` (GeoJSON or GeoParquet)."""
    p = Path(path)
    if not p.is_file():
        raise InputError("tiles", f"file {str(p)!r} does not exist", "run `lulc data grid` first")
    try:
        gdf = gpd.read_parquet(p) if p.suffix.lower() == ".parquet" else gpd.read_file(p)
    except Exception as exc:
        raise InputError("tiles", f"cannot read {p}: {exc}", "give a file written by `lulc data grid`") from exc
    missing = [c for c in TILE_COLUMNS if c not in gdf.columns]
    if missing:
        raise InputError("tiles", f"{p} lacks columns {missing}", "give a file written by `lulc data grid`")
    tiles = []
    for row in gdf.itertuples(index=False):
        tiles.append(
            Tile(
                id=str(row.id),
                crs=str(row.crs),
                bounds=(float(row.minx), float(row.miny), float(row.maxx), float(row.maxy)),
                resolution=float(row.resolution),
                start=_parse_date(row.start, "tiles.start") or date.min,
                end=_parse_date(row.end, "tiles.end") or date.max,
            )
        )
    return tiles


def plot_tiles(tiles: Sequence[Tile], path: str | Path, aoi: AreaConfig | list[AoiPart] | None = None) -> Path:
    """A PNG preview: one panel per CRS with the tile outlines (and the AOI) in metres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = load_aoi(aoi) if isinstance(aoi, AreaConfig) else (aoi or [])
    by_crs: dict[str, dict[tuple[float, ...], int]] = {}
    for t in tiles:
        frames = by_crs.setdefault(t.crs, {})
        frames[t.bounds] = frames.get(t.bounds, 0) + 1
    n = max(len(by_crs), 1)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 4.5 * nrows), squeeze=False)
    for ax, (crs, cells) in zip(axes.flat, sorted(by_crs.items()), strict=False):
        xs_all = [b[0] for b in cells] + [b[2] for b in cells]
        ys_all = [b[1] for b in cells] + [b[3] for b in cells]
        view = box(min(xs_all), min(ys_all), max(xs_all), max(ys_all)).buffer(max(xs_all) - min(xs_all))
        for part in parts:
            geom = _project(part.geometry, crs).intersection(view)
            for poly in shapely.get_parts(geom):
                if isinstance(poly, Polygon):
                    xs, ys = poly.exterior.xy
                    ax.fill(xs, ys, color="#9ecae1", alpha=0.5, lw=0)
                    xs_all += [poly.bounds[0], poly.bounds[2]]
                    ys_all += [poly.bounds[1], poly.bounds[3]]
        for bounds, count in cells.items():
            x0, y0, x1, y1 = bounds
            ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="#d94801", lw=0.8)
            if count > 1:
                ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(count), ha="center", va="center", fontsize=6)
        pad = 0.05 * max(max(xs_all) - min(xs_all), max(ys_all) - min(ys_all))
        ax.set_xlim(min(xs_all) - pad, max(xs_all) + pad)
        ax.set_ylim(min(ys_all) - pad, max(ys_all) + pad)
        ax.set_aspect("equal")
        ax.set_title(f"{crs}: {len(cells)} cells", fontsize=9)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(by_crs) :]:
        ax.axis("off")
    fig.suptitle(f"{len(tiles)} tiles, {sum(len(c) for c in by_crs.values())} cells (AOI in blue)", fontsize=10)
    fig.tight_layout()
    target = Path(path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return target
