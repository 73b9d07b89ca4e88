"""A directory of GeoTIFFs as an imagery store.

Files may be in any CRS and resolution; band names come from the band descriptions (`B04`, `VV`, `DEM`, ...), so
one place can be served by several files (an S2 file, an S1 file and a DEM file). Files are indexed by footprint
and by the `ACQUISITION_DATE` tag (ISO date; `DATETIME`/`datetime` are read too): for a tile, files whose date lies
in [tile.start, tile.end] come first, undated files (a DEM) count as in range, then the others by distance in days.
`fetch` reads only the window of each file that covers the tile, warps it onto the tile grid and mosaics files in
that order (a later file fills only pixels still empty).

Files that carry `SCL` and/or `CLM` bands are Sentinel-2 observations: with cloud masking on, their flagged pixels
are invalid and the observations of the nearest dates (those inside the time frame when there are any) become one
image by `lulc_core.imagery.clouds.composite` (median or least cloudy) instead of the first-file mosaic.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from shapely.geometry import box

from lulc_core.errors import InputError, NotCoveredError
from lulc_core.geo import Tile
from lulc_core.imagery.clouds import cloud_invalid, composite, mask_observation
from lulc_core.raster import Raster

log = logging.getLogger(__name__)
# rasterio warns about its own in-memory datasets when reprojecting numpy arrays; the transforms are given.
warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=r"rasterio\.warp")

DATE_TAGS = ("ACQUISITION_DATE", "DATETIME", "datetime")
CLOUD_BANDS = ("SCL", "CLM")
SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class IndexedFile:
    """One GeoTIFF of the store: where it is, what it holds and when it was acquired."""

    path: Path
    crs: CRS
    bounds: tuple[float, float, float, float]
    footprint_wgs84: tuple[float, float, float, float]
    band_names: tuple[str, ...]
    acquired: date | None


def _parse_date(tags: dict[str, str]) -> date | None:
    for key in DATE_TAGS:
        value = tags.get(key)
        if value:
            try:
                return date.fromisoformat(value.strip()[:10])
            except ValueError:
                log.warning("ignoring unparsable %s=%r", key, value)
    return None


def _days_outside(when: date | None, start: date, end: date) -> int:
    if when is None or start <= when <= end:
        return 0
    return (start - when).days if when < start else (when - end).days


class LocalGeoTiffStore:
    """Imagery from a local directory of GeoTIFFs (searched recursively).

    Args:
        directory: the directory.
        resampling: rasterio resampling name used when warping ("nearest" keeps values exact).
        cloud_mask: mask SCL/CLM-flagged pixels of files that carry those bands and composite their observations.
        composite: "median" or "least_cloudy" (see `lulc_core.imagery.clouds`).

    Raises:
        InputError: the directory does not exist or holds no GeoTIFF (field `imagery.local_dir`).
    """

    def __init__(
        self, directory: str | Path, resampling: str = "nearest", *, cloud_mask: bool = True, composite: str = "median"
    ) -> None:
        self.directory = Path(directory)
        self.cloud_mask = cloud_mask
        self.composite = composite
        if not self.directory.is_dir():
            raise InputError(
                "imagery.local_dir", f"directory {str(self.directory)!r} does not exist", "give a folder of GeoTIFFs"
            )
        try:
            self.resampling = Resampling[resampling]
        except KeyError:
            raise InputError("resampling", f"unknown resampling {resampling!r}", "use nearest or bilinear") from None
        self._lock = threading.Lock()
        self._index: list[IndexedFile] | None = None
        self._tree: shapely.STRtree | None = None

    def __repr__(self) -> str:
        return f"LocalGeoTiffStore({str(self.directory)!r})"

    @property
    def index(self) -> list[IndexedFile]:
        """The indexed files (built on first use)."""
        with self._lock:
            if self._index is None:
                self._index = self._build_index()
                self._tree = shapely.STRtree([box(*f.footprint_wgs84) for f in self._index])
            return self._index

    def _build_index(self) -> list[IndexedFile]:
        files = sorted(
            p for p in self.directory.rglob("*") if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
        )
        index: list[IndexedFile] = []
        for path in files:
            try:
                with rasterio.open(path) as src:
                    if src.crs is None:
                        log.warning("skipping %s: no CRS", path)
                        continue
                    names = tuple(d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1))
                    index.append(
                        IndexedFile(
                            path=path,
                            crs=src.crs,
                            bounds=tuple(src.bounds),  # type: ignore[arg-type]
                            footprint_wgs84=transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21),
                            band_names=names,
                            acquired=_parse_date(src.tags()),
                        )
                    )
            except rasterio.errors.RasterioIOError as exc:
                log.warning("skipping unreadable %s: %s", path, exc)
        if not index:
            raise InputError(
                "imagery.local_dir", f"no readable GeoTIFF in {self.directory}", "put *.tif files with a CRS there"
            )
        log.info("%s: %d GeoTIFFs indexed", self.directory, len(index))
        return index

    def candidates(self, tile: Tile, bands: Sequence[str]) -> list[IndexedFile]:
        """Files that overlap `tile` and hold at least one of `bands`, in mosaic order (best date first)."""
        index = self.index
        assert self._tree is not None
        wanted = set(bands)
        found = []
        for i in sorted(self._tree.query(box(*tile.bbox_wgs84.as_tuple()), predicate="intersects")):
            f = index[int(i)]
            if not wanted.intersection(f.band_names):
                continue
            # exact test in the file's CRS
            if box(*transform_bounds(tile.crs, f.crs, *tile.bounds, densify_pts=21)).intersection(box(*f.bounds)).area:
                found.append(f)
        return sorted(found, key=lambda f: (_days_outside(f.acquired, tile.start, tile.end), str(f.path)))

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        """The requested bands on the tile grid (float32; NaN and `valid=False` where no file has data).

        Raises:
            InputError: `bands` empty or repeated.
            NotCoveredError: no file covers the tile for some band (names the tile and the bands).
        """
        names = list(bands)
        if not names or len(set(names)) != len(names):
            raise InputError("bands", f"{names} must be a non-empty list without repeats")
        height, width = tile.height, tile.width
        dst_transform = from_origin(tile.bounds[0], tile.bounds[3], tile.resolution, tile.resolution)
        dst_crs = CRS.from_user_input(tile.crs)
        candidates = self.candidates(tile, names)
        observations = [f for f in candidates if self.cloud_mask and set(CLOUD_BANDS) & set(f.band_names)]
        out: np.ndarray | None = None  # allocated when a second file or a composite must be merged in
        if observations:
            out = np.full((len(names), height, width), np.nan, dtype=np.float32)
            self._composite_into(observations, tile, names, out, dst_transform, dst_crs)
        for f in candidates:
            if f in observations:
                continue
            todo = [b for b in names if b in f.band_names and (out is None or np.isnan(out[names.index(b)]).any())]
            if not todo:
                continue
            fresh = self._warp(f, tile, todo, (height, width), dst_transform, dst_crs)
            log.debug("tile %s: %s from %s", tile.id, todo, f.path.name)
            if out is None and todo == names:  # the first file holds every band: its array is the tile
                out = fresh
                continue
            if out is None:
                out = np.full((len(names), height, width), np.nan, dtype=np.float32)
            for k, band in enumerate(todo):
                target = out[names.index(band)]
                np.copyto(target, fresh[k], where=np.isnan(target))
        if out is None:
            out = np.full((len(names), height, width), np.nan, dtype=np.float32)
        valid = np.isfinite(out)
        missing = [b for i, b in enumerate(names) if not valid[i].any()]
        if missing:
            raise NotCoveredError(
                f"tile {tile.id}: no GeoTIFF in {self.directory} covers bands {missing} "
                f"(tile bounds {tile.bounds} in {tile.crs}, {tile.start}..{tile.end})"
            )
        return Raster(out, dst_transform, dst_crs, names, np.asarray(valid.all(axis=0)))

    def _composite_into(
        self,
        files: list[IndexedFile],
        tile: Tile,
        names: list[str],
        out: np.ndarray,
        dst_transform: rasterio.Affine,
        dst_crs: CRS,
    ) -> None:
        """Cloud-masked observations of the nearest dates composited into the bands of `out` they hold."""
        nearest = min(_days_outside(f.acquired, tile.start, tile.end) for f in files)
        files = [f for f in files if _days_outside(f.acquired, tile.start, tile.end) == nearest]
        shape = out.shape[1:]
        stack = np.full((len(files), len(names), *shape), np.nan, dtype=np.float32)
        cloudiness = []
        for i, f in enumerate(files):
            bands = [b for b in names if b in f.band_names]
            flags = [b for b in CLOUD_BANDS if b in f.band_names]
            if not bands:
                continue
            warped = self._warp(f, tile, bands + flags, shape, dst_transform, dst_crs)
            by_name = dict(zip(bands + flags, warped, strict=True))
            invalid = cloud_invalid(by_name.get("SCL"), by_name.get("CLM"))
            invalid &= ~np.isnan(warped[0])
            masked = mask_observation(warped[: len(bands)], invalid)
            for k, band in enumerate(bands):
                if band in CLOUD_BANDS:  # flags themselves are delivered unmasked
                    masked[k] = warped[k]
                stack[i, names.index(band)] = masked[k]
            cloudiness.append((float(invalid.mean()), i))
        order = [i for _, i in sorted(cloudiness)]
        fresh = composite(stack, self.composite, order)
        gap = np.isnan(out)
        out[gap] = fresh[gap]
        log.debug("tile %s: %s composite of %d observations", tile.id, self.composite, len(files))

    def _warp(
        self,
        f: IndexedFile,
        tile: Tile,
        bands: list[str],
        shape: tuple[int, int],
        dst_transform: rasterio.Affine,
        dst_crs: CRS,
    ) -> np.ndarray:
        """`bands` of file `f` warped onto the tile grid (NaN outside the file or where it has no data).

        Uncompressed files are read without GDAL's block cache (`GTIFF_DIRECT_IO`; compressed ones as usual): the
        file is opened per fetch, so cached blocks would be dropped anyway, and a 15-band pixel-interleaved block
        is read in a third of the CPU time."""
        with rasterio.Env(GTIFF_DIRECT_IO=True), rasterio.open(f.path) as src:
            indexes = [f.band_names.index(b) + 1 for b in bands]
            return warp_onto_tile(src, indexes, tile, shape, dst_transform, dst_crs, self.resampling)


def warp_onto_tile(
    src: rasterio.io.DatasetReader,
    indexes: list[int],
    tile: Tile,
    shape: tuple[int, int],
    dst_transform: rasterio.Affine,
    dst_crs: CRS,
    resampling: Resampling = Resampling.nearest,
) -> np.ndarray:
    """Bands `indexes` of an open dataset (local file or a COG over HTTP) read in the window covering the tile and
    warped onto its grid: float32 (len(indexes), *shape), NaN outside the dataset or where it has no data."""
    offset = _grid_offset(src, dst_transform, dst_crs)
    if offset is not None:  # the tile grid is the file's grid shifted by whole pixels: read, no warp
        return _read_on_grid(src, indexes, offset, shape)
    fresh = np.full((len(indexes), *shape), np.nan, dtype=np.float32)
    window = _source_window(src, tile)
    if window is None:
        return fresh
    data = src.read(indexes, window=window, out_dtype="float32")
    masks = src.read_masks(indexes, window=window)
    data[masks == 0] = np.nan
    reproject(
        source=data,
        destination=fresh,
        src_transform=src.window_transform(window),
        src_crs=src.crs,
        src_nodata=np.nan,
        dst_transform=dst_transform,
        dst_crs=dst_crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return fresh


def _read_on_grid(
    src: rasterio.io.DatasetReader, indexes: list[int], offset: tuple[int, int], shape: tuple[int, int]
) -> np.ndarray:
    """Bands `indexes` of the tile whose first pixel is (row, col) = `offset` of `src`'s own grid (NaN outside)."""
    row, col = offset
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + shape[0], src.height), min(col + shape[1], src.width)
    inside = (r0, c0, r1, c1) == (row, col, row + shape[0], col + shape[1])
    size = (len(indexes), *shape)
    out = np.empty(size, np.float32) if inside else np.full(size, np.nan, np.float32)
    if r1 > r0 and c1 > c0:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        part = out[:, r0 - row : r1 - row, c0 - col : c1 - col]
        if inside:  # straight into the tile's array
            src.read(indexes, window=window, out=out)
        else:
            part[...] = src.read(indexes, window=window, out_dtype="float32")
        flags = src.mask_flag_enums
        if not all(MaskFlags.all_valid in flags[i - 1] for i in indexes):
            part[src.read_masks(indexes, window=window) == 0] = np.nan
    return out


def _grid_offset(
    src: rasterio.io.DatasetReader, dst_transform: rasterio.Affine, dst_crs: CRS
) -> tuple[int, int] | None:
    """(row, col) of the tile grid's first pixel in `src` when both grids are the same up to a whole-pixel shift
    (same CRS, pixel size and orientation), else None. Any resampling of such a grid returns the source pixels."""
    s, d = src.transform, dst_transform
    if s.b or s.d or d.b or d.d or not math.isclose(s.a, d.a, rel_tol=1e-9) or not math.isclose(s.e, d.e, rel_tol=1e-9):
        return None
    col, row = (d.c - s.c) / s.a, (d.f - s.f) / s.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6 or src.crs != dst_crs:
        return None
    return round(row), round(col)


def _source_window(src: rasterio.io.DatasetReader, tile: Tile, pad: int = 2) -> Window | None:
    """The window of `src` covering the tile (plus `pad` pixels for resampling), or None when outside."""
    bounds = transform_bounds(tile.crs, src.crs, *tile.bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=src.transform)
    col0 = max(math.floor(win.col_off) - pad, 0)
    row0 = max(math.floor(win.row_off) - pad, 0)
    col1 = min(math.ceil(win.col_off + win.width) + pad, src.width)
    row1 = min(math.ceil(win.row_off + win.height) + pad, src.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)
