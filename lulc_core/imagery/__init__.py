"""Imagery stores: multi-band rasters on a tile's grid, and fetching a whole tile list to GeoTIFFs.

`build_imagery_store` picks the backend: a local GeoTIFF directory (`LocalGeoTiffStore`) or Sentinel Hub
(`lulc_core.imagery.sentinelhub.SentinelHubStore`, imported only when chosen). Tile rasters are written as float32
GeoTIFFs named `<tile.id>.tif` with the band names as band descriptions and NaN as nodata.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import rasterio
from tqdm import tqdm

from lulc_core.config import ImageryConfig
from lulc_core.errors import InputError, LulcError
from lulc_core.geo import Tile
from lulc_core.raster import Raster, write_geotiff

log = logging.getLogger(__name__)

NODATA = float("nan")


@runtime_checkable
class ImageryStore(Protocol):
    """Where imagery comes from."""

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        """`bands` on exactly the tile grid (CRS, bounds, resolution) as float32, with a `valid` mask.

        Raises NotCoveredError when the store has nothing for the tile.
        """
        ...


def build_imagery_store(cfg: ImageryConfig, cache_dir: Path | None = None) -> ImageryStore:
    """The imagery store configured in `cfg` ("local" or "sentinelhub").

    Raises:
        InputError: missing local directory (`imagery.local_dir`) or unavailable backend (`imagery.store`).
    """
    if cfg.store == "local":
        from lulc_core.imagery.local import LocalGeoTiffStore

        if cfg.local_dir is None:
            raise InputError("imagery.local_dir", "store 'local' needs local_dir", "give a directory of GeoTIFFs")
        return LocalGeoTiffStore(cfg.local_dir)
    if cfg.store == "sentinelhub":
        name = "lulc_core.imagery.sentinelhub"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            raise InputError("imagery.store", f"the Sentinel Hub backend is not installed ({name})") from exc
        store: ImageryStore = module.SentinelHubStore(cfg.sentinelhub, cfg.resolution, cache_dir)
        return store
    raise InputError("imagery.store", f"unknown store {cfg.store!r}", "use 'local' or 'sentinelhub'")


def tile_path(out_dir: Path, tile: Tile) -> Path:
    """Where the raster of `tile` goes."""
    return Path(out_dir) / f"{tile.id}.tif"


def is_complete(path: Path, tile: Tile, bands: Sequence[str]) -> bool:
    """Whether `path` already holds the tile's raster with exactly `bands` (a resumable run skips it)."""
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as src:
            return (
                src.count == len(bands)
                and list(src.descriptions) == list(bands)
                and (src.width, src.height) == (tile.width, tile.height)
                and np.allclose(tuple(src.bounds), tile.bounds, atol=tile.resolution * 1e-3)
            )
    except rasterio.errors.RasterioIOError:
        return False


def _with_tile(exc: Exception, tile: Tile) -> Exception:
    if isinstance(exc, LulcError):
        if tile.id not in str(exc):
            exc.args = (f"tile {tile.id}: {exc}", *exc.args[1:])
        return exc
    err = LulcError(f"tile {tile.id}: fetching imagery failed: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _fetch_one(store: ImageryStore, tile: Tile, bands: Sequence[str], path: Path) -> Path:
    raster = store.fetch(tile, bands)
    if (raster.width, raster.height) != (tile.width, tile.height):
        raise LulcError(
            f"tile {tile.id}: store returned {raster.width}x{raster.height} px, expected {tile.width}x{tile.height}"
        )
    return write_geotiff(path, raster.select(list(bands)), nodata=NODATA, dtype="float32")


def fetch_tiles(
    store: ImageryStore, tiles: Sequence[Tile], bands: Sequence[str], out_dir: Path, concurrency: int = 1
) -> list[Path]:
    """Fetch every tile into `<out_dir>/<tile.id>.tif`, `concurrency` at a time; complete files are skipped.

    Returns:
        The paths in the order of `tiles`.

    Raises:
        The first tile's error (NotCoveredError, UpstreamError, ...) with the tile id in its message; files of
        tiles finished before stay (a re-run resumes), no partial file is left.
    """
    if concurrency < 1:
        raise InputError("concurrency", f"{concurrency} must be at least 1")
    if not bands:
        raise InputError("imagery.bands", "no bands requested")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [tile_path(out, t) for t in tiles]
    todo = [(t, p) for t, p in zip(tiles, paths, strict=True) if not is_complete(p, t, bands)]
    if len(todo) < len(tiles):
        log.info("imagery: %d of %d tiles already complete in %s", len(tiles) - len(todo), len(tiles), out)
    if not todo:
        return paths
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="imagery") as pool:
        futures: dict[Future[Path], Tile] = {pool.submit(_fetch_one, store, t, bands, p): t for t, p in todo}
        try:
            for fut in tqdm(as_completed(futures), total=len(futures), desc="imagery", unit="tile", leave=False):
                try:
                    fut.result()
                except Exception as exc:
                    err = _with_tile(exc, futures[fut])
                    raise err from (exc.__cause__ if err is exc else exc)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return paths
