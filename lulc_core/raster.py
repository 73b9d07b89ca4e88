"""The in-memory raster every step passes around, and GeoTIFF reading/writing.

Writes are atomic (a temporary file in the target directory, renamed when complete), so an interrupted run
never leaves a partial GeoTIFF behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling


@dataclass
class Raster:
    """A georeferenced stack of bands.

    Attributes:
        data: array of shape (bands, height, width).
        transform: affine pixel-to-CRS transform.
        crs: coordinate reference system.
        band_names: one name per band (e.g. "B04", "VV", "DEM", "class").
        valid: boolean mask (height, width), True where every band has data; None means all valid.
    """

    data: np.ndarray
    transform: Affine
    crs: CRS
    band_names: list[str]
    valid: np.ndarray | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"Raster.data must be (bands, height, width), got shape {self.data.shape}")
        if len(self.band_names) != self.data.shape[0]:
            raise ValueError(f"{len(self.band_names)} band names for {self.data.shape[0]} bands")

    @property
    def height(self) -> int:
        return int(self.data.shape[1])

    @property
    def width(self) -> int:
        return int(self.data.shape[2])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        w, s, e, n = rasterio.transform.array_bounds(self.height, self.width, self.transform)
        return (w, s, e, n)

    @property
    def valid_mask(self) -> np.ndarray:
        return np.ones((self.height, self.width), bool) if self.valid is None else self.valid

    def select(self, names: Sequence[str]) -> Raster:
        """A raster with only `names`, in that order."""
        missing = [n for n in names if n not in self.band_names]
        if missing:
            raise KeyError(f"bands {missing} not in raster bands {self.band_names}")
        idx = [self.band_names.index(n) for n in names]
        return Raster(self.data[idx], self.transform, self.crs, list(names), self.valid, dict(self.tags))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask is process-wide and not thread-safe to probe
FILE_MODE = 0o666 & ~_UMASK  # what open() gives a new file under the process umask
DIR_MODE = 0o777 & ~_UMASK


def publish_tree(root: str | os.PathLike[str]) -> None:
    """Give every file and directory under `root` the umask's usual mode.

    Libraries that write through temporary files (transformers' `save_pretrained`, `tempfile.mkstemp`) leave
    0600 files, which another user — a predictor container with a different UID reading a mounted volume —
    cannot read.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        Path(dirpath).chmod(DIR_MODE)
        for name in filenames:
            Path(dirpath, name).chmod(FILE_MODE)
        for name in dirnames:
            Path(dirpath, name).chmod(DIR_MODE)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds. A `/vsis3/` target
    (`lulc_core.objectstore`) is staged in a local temporary file and uploaded whole when the block succeeds."""
    target = Path(path)
    if str(target).startswith("/vsis3/"):
        from lulc_core.objectstore import upload

        fd, staged = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
        try:
            yield Path(staged)
            upload(Path(staged), target)
        finally:
            Path(staged).unlink(missing_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(FILE_MODE)  # mkstemp creates 0600; published files get the usual permissions
        tmp_path.replace(target)
    finally:
        tmp_path.unlink(missing_ok=True)


def hex_to_rgba(color: str) -> tuple[int, int, int, int]:
    """'#RRGGBB' or '#RRGGBBAA' to an RGBA tuple."""
    c = color.lstrip("#")
    if len(c) not in (6, 8):
        raise ValueError(f"colour {color!r} is not #RRGGBB")
    rgba = tuple(int(c[i : i + 2], 16) for i in range(0, len(c), 2))
    return rgba if len(rgba) == 4 else (*rgba, 255)  # type: ignore[return-value]


def write_geotiff(
    path: str | os.PathLike[str],
    raster: Raster,
    *,
    nodata: float | None = None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
    cog: bool = False,
    dtype: str | None = None,
) -> Path:
    """Write `raster` as a (tiled, deflate-compressed) GeoTIFF, atomically.

    `cog=True` writes a Cloud-Optimised GeoTIFF with overviews (GDAL's COG driver). `colormap` (value ->
    RGBA) is attached to a single-band uint8 raster. Band names go into band descriptions.
    """
    out_dtype = dtype or str(raster.data.dtype)
    data = raster.data.astype(out_dtype, copy=False)
    if raster.valid is not None and nodata is not None:
        data = np.where(raster.valid[None], data, np.asarray(nodata, dtype=out_dtype))
    grid = (raster.crs, raster.transform, raster.width, raster.height)
    return _write_tiff(path, raster, grid, lambda dst: dst.write(data), nodata, colormap, cog, out_dtype)


def write_warped_geotiff(
    path: str | os.PathLike[str],
    raster: Raster,
    bounds: tuple[float, float, float, float],
    crs: str = "EPSG:4326",
    *,
    colormap: Mapping[int, tuple[int, int, int, int]] | None = None,
) -> Path:
    """The Cloud-Optimised GeoTIFF `write_geotiff(path, warp_to_bounds(raster, bounds, crs), cog=True, ...)`
    writes, byte for byte, without the warped array: GDAL's warper writes into the file chunk by chunk.

    For integer rasters (classes) without nodata (the validity mask is not written, as by `write_geotiff`
    without `nodata`). The file the COG is copied from has strips of one row, as an in-memory array has: GDAL
    splits its warp into the same chunks, so nearest-neighbour picks the very pixels `warp_to_bounds` picks.
    """
    from rasterio.warp import reproject

    if not np.issubdtype(raster.data.dtype, np.integer):
        raise ValueError(f"write_warped_geotiff writes integer rasters, not {raster.data.dtype}")
    dst_crs, transform, width, height = _grid_on_bounds(raster, bounds, crs)

    def fill(dst: rasterio.io.DatasetWriter) -> None:
        common = {"src_transform": raster.transform, "src_crs": raster.crs, "dst_transform": transform}
        bands = rasterio.band(dst, list(range(1, raster.data.shape[0] + 1)))
        reproject(raster.data, bands, resampling=Resampling.nearest, dst_crs=dst_crs, **common)

    grid = (dst_crs, transform, width, height)
    strips = {"tiled": False, "blockysize": 1}
    return _write_tiff(path, raster, grid, fill, None, colormap, True, str(raster.data.dtype), strips)


def _write_tiff(
    path: str | os.PathLike[str],
    raster: Raster,
    grid: tuple[CRS, Affine, int, int],
    fill: Callable[[rasterio.io.DatasetWriter], object],
    nodata: float | None,
    colormap: Mapping[int, tuple[int, int, int, int]] | None,
    cog: bool,
    out_dtype: str,
    layout: Mapping[str, object] | None = None,
) -> Path:
    """The GeoTIFF of `raster`'s bands, names and tags on `grid` (crs, transform, width, height), its pixels
    written by `fill(dataset)`; `layout` overrides the tiling (of the file the COG is copied from)."""
    crs, transform, width, height = grid
    count = raster.data.shape[0]
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": out_dtype,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "tiled": width >= 256 and height >= 256,
        "nodata": nodata,
    }
    if profile["tiled"]:
        profile.update(blockxsize=256, blockysize=256)
    profile.update(layout or {})
    if out_dtype.startswith("float"):
        profile["predictor"] = 3
    target = Path(path)
    with atomic_path(target) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            if colormap is not None and count == 1 and out_dtype == "uint8":
                dst.write_colormap(1, dict(colormap))
            fill(dst)
            for i, name in enumerate(raster.band_names, start=1):
                dst.set_band_description(i, name)
            if raster.tags:
                dst.update_tags(**raster.tags)
            if cog:
                factors = [f for f in (2, 4, 8, 16) if min(height, width) // f >= 64]
                if factors:
                    resampling = Resampling.nearest if out_dtype == "uint8" else Resampling.average
                    dst.build_overviews(factors, resampling)
        if cog:
            _to_cog(tmp)
    return target


def _to_cog(path: Path) -> None:
    """Rewrite a GeoTIFF in place with GDAL's COG layout (overviews, tiles, header first)."""
    from rasterio.shutil import copy as rio_copy

    cog_tmp = path.with_suffix(".cog.part")
    try:
        rio_copy(path, cog_tmp, driver="COG", compress="DEFLATE", overviews="AUTO")
        cog_tmp.replace(path)
    finally:
        cog_tmp.unlink(missing_ok=True)


def read_geotiff(path: str | os.PathLike[str]) -> Raster:
    """Read a whole GeoTIFF with band names (descriptions, else `band_<i>`) and its nodata mask."""
    with rasterio.open(path) as src:
        data = src.read()
        names = [d or f"band_{i}" for i, d in enumerate(src.descriptions, start=1)]
        valid = src.dataset_mask() > 0 if src.nodata is not None else None
        return Raster(data, src.transform, src.crs, names, valid, dict(src.tags()))


def warp_to_bounds(
    raster: Raster,
    bounds: tuple[float, float, float, float],
    crs: str = "EPSG:4326",
    *,
    resampling: Resampling = Resampling.nearest,
) -> Raster:
    """`raster` reprojected with GDAL's warper onto `crs`, its grid spanning exactly `bounds` (W, S, E, N in `crs`).

    The grid has as many pixels across `bounds` as the source grid has across the same area (as the original
    utility sized its EPSG:4326 answers), so pixels keep about the source's ground size. Pixels without a source
    value are 0 (integers) or NaN (floats), and invalid when the source has a validity mask.
    """
    from rasterio.warp import reproject

    dst_crs, transform, width, height = _grid_on_bounds(raster, bounds, crs)
    fill = np.nan if np.issubdtype(raster.data.dtype, np.floating) else 0
    data = np.full((raster.data.shape[0], height, width), fill, raster.data.dtype)
    common = {"src_transform": raster.transform, "src_crs": raster.crs, "dst_transform": transform, "dst_crs": dst_crs}
    reproject(raster.data, data, resampling=resampling, **common)
    valid = None
    if raster.valid is not None:  # (no mask: the source's grid covers `bounds`, as a request's grid does)
        mask = np.zeros((height, width), np.uint8)
        reproject(raster.valid.astype(np.uint8), mask, resampling=Resampling.nearest, dst_nodata=0, **common)
        valid = mask.astype(bool)
    return Raster(data, transform, dst_crs, list(raster.band_names), valid, dict(raster.tags))


def _grid_on_bounds(
    raster: Raster, bounds: tuple[float, float, float, float], crs: str
) -> tuple[CRS, Affine, int, int]:
    """The grid on `crs` spanning exactly `bounds` with about `raster`'s pixel size: (crs, transform, w, h)."""
    from rasterio.transform import from_bounds
    from rasterio.warp import transform_bounds

    dst_crs = CRS.from_user_input(crs)
    west, south, east, north = bounds
    x0, y0, x1, y1 = transform_bounds(dst_crs, raster.crs, west, south, east, north)
    width = max(1, round((x1 - x0) / abs(raster.transform.a)))
    height = max(1, round((y1 - y0) / abs(raster.transform.e)))
    return dst_crs, from_bounds(west, south, east, north, width, height), width, height
