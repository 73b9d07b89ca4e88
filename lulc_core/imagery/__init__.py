"""Imagery stores: multi-band rasters on a tile's grid, and fetching a whole tile list to GeoTIFFs.

`build_imagery_store` picks the backend: a local GeoTIFF directory (`LocalGeoTiffStore`), Sentinel Hub
(`lulc_core.imagery.sentinelhub.SentinelHubStore`) or a public STAC API (`lulc_core.imagery.stac.StacStore`), the
remote ones imported only when chosen. Every store masks clouds and composites the time frame the same way
(`lulc_core.imagery.clouds`). Tile rasters are written as float32 GeoTIFFs named `<tile.id>.tif` with the band
names as band descriptions, NaN as nodata and the tag `VALID_SHARE`; `fetch_tiles` skips (and counts) tiles whose
valid share is below `imagery.min_valid_share` and reports tiles a store cannot serve, after the others finished.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import rasterio
from pydantic import BaseModel, Field
from tqdm import tqdm

from lulc_core.config import ImageryConfig
from lulc_core.errors import InputError, LulcError, NotCoveredError
from lulc_core.geo import Tile
from lulc_core.imagery.clouds import valid_share
from lulc_core.raster import Raster, write_geotiff

log = logging.getLogger(__name__)

NODATA = float("nan")
REPORT_FILE = "imagery_report.json"
"""Name of the report `lulc run` writes beside the imagery directory (the directory holds only tile rasters)."""
PER_TILE_ERRORS = (InputError, NotCoveredError)
"""Errors that concern one tile (no scene, a band the catalogue lacks): reported, the other tiles finish."""


@runtime_checkable
class ImageryStore(Protocol):
    """Where imagery comes from."""

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        """`bands` on exactly the tile grid (CRS, bounds, resolution) as float32, with a `valid` mask.

        Raises NotCoveredError when the store has nothing for the tile.
        """
        ...


def build_imagery_store(cfg: ImageryConfig, cache_dir: Path | None = None) -> ImageryStore:
    """The imagery store configured in `cfg` ("local", "sentinelhub" or "stac"), with its cloud settings.

    Raises:
        InputError: missing local directory (`imagery.local_dir`) or unavailable backend (`imagery.store`).
    """
    store: ImageryStore
    if cfg.store == "local":
        from lulc_core.imagery.local import LocalGeoTiffStore

        if cfg.local_dir is None:
            raise InputError("imagery.local_dir", "store 'local' needs local_dir", "give a directory of GeoTIFFs")
        store = LocalGeoTiffStore(cfg.local_dir, cloud_mask=cfg.cloud_mask, composite=cfg.composite)
    elif cfg.store in ("sentinelhub", "stac"):
        name = f"lulc_core.imagery.{cfg.store}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            raise InputError("imagery.store", f"the {cfg.store} backend is not installed ({name})") from exc
        store = module.build_store(cfg, cache_dir)
    else:
        raise InputError("imagery.store", f"unknown store {cfg.store!r}", "use 'local', 'sentinelhub' or 'stac'")
    if cfg.sensor_normalisation == "per_sensor":
        store = PerSensorNormalised(store)
    return store


def sensor_normalisation_of(run_config: dict[str, object] | None) -> str:
    """`imagery.sensor_normalisation` of a saved run configuration (a bundle's `run_config`), "none" if absent."""
    imagery = (run_config or {}).get("imagery")
    value = imagery.get("sensor_normalisation") if isinstance(imagery, dict) else None
    return str(value or "none")


def with_sensor_normalisation(store: ImageryStore, mode: str) -> ImageryStore:
    """`store` wrapped (or unwrapped) so that it applies `mode` ("none" or "per_sensor") — a model's inputs must be
    normalised the way its training tiles were, whatever the serving configuration says."""
    inner = store.inner if isinstance(store, PerSensorNormalised) else store
    return PerSensorNormalised(inner) if mode == "per_sensor" else inner


class PerSensorNormalised:
    """A store whose DEM band is standardised per tile (mean 0, std 1 over its valid pixels), as the original
    utility normalised elevation; Sentinel-1 is already in dB from every store."""

    def __init__(self, inner: ImageryStore) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"PerSensorNormalised({self.inner!r})"

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        raster = self.inner.fetch(tile, bands)
        if "DEM" in raster.band_names:
            dem = raster.data[list(raster.band_names).index("DEM")]
            ok = np.isfinite(dem)
            if ok.any():
                std = float(dem[ok].std())
                dem[ok] = (dem[ok] - float(dem[ok].mean())) / (std if std > 0 else 1.0)
        return raster


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


class FetchReport(BaseModel):
    """What `fetch_tiles` did: logged, put into a pipeline step's metadata, written as JSON when asked."""

    tiles: int = Field(description="Tiles asked for.")
    written: list[str] = Field(default_factory=list, description="Tile ids with a raster in the directory.")
    skipped_low_valid: dict[str, float] = Field(
        default_factory=dict, description="Tile id -> valid share, for tiles below min_valid_share (no raster)."
    )
    failed: dict[str, str] = Field(default_factory=dict, description="Tile id -> one-line reason (no raster).")
    valid_share: dict[str, float] = Field(default_factory=dict, description="Valid-pixel share of written tiles.")
    min_valid_share: float = Field(description="The threshold used.")

    def summary(self) -> str:
        return (
            f"{len(self.written)} of {self.tiles} tiles with imagery, {len(self.skipped_low_valid)} skipped below "
            f"valid share {self.min_valid_share:g}, {len(self.failed)} failed"
        )

    def metadata(self) -> dict[str, object]:
        """Counts for a pipeline step's metadata."""
        return {
            "tiles_written": len(self.written),
            "tiles_skipped_low_valid": len(self.skipped_low_valid),
            "tiles_failed": len(self.failed),
            "min_valid_share": self.min_valid_share,
        }


def _fetch_one(store: ImageryStore, tile: Tile, bands: Sequence[str], path: Path, min_valid: float) -> float:
    """Fetch and write one tile; returns its valid share (the file is not written when below `min_valid`)."""
    raster = store.fetch(tile, bands)
    if (raster.width, raster.height) != (tile.width, tile.height):
        raise LulcError(
            f"tile {tile.id}: store returned {raster.width}x{raster.height} px, expected {tile.width}x{tile.height}"
        )
    raster = raster.select(list(bands))
    share = valid_share(raster.data)
    if share < min_valid:
        return share
    raster.tags = {**(raster.tags or {}), "VALID_SHARE": f"{share:.4f}"}
    write_geotiff(path, raster, nodata=NODATA, dtype="float32")
    return share


def fetch_tiles(
    store: ImageryStore,
    tiles: Sequence[Tile],
    bands: Sequence[str],
    out_dir: Path,
    concurrency: int = 1,
    min_valid_share: float = 0.0,
    report_path: Path | None = None,
) -> list[Path]:
    """Fetch every tile into `<out_dir>/<tile.id>.tif`; see `fetch_tiles_report` (this raises on failed tiles).

    Returns:
        The paths of the tiles with imagery, in the order of `tiles`.
    """
    report = fetch_tiles_report(
        store, tiles, bands, out_dir, concurrency, min_valid_share, raise_failed=True, report_path=report_path
    )
    written = set(report.written)
    return [tile_path(Path(out_dir), t) for t in tiles if t.id in written]


def fetch_tiles_report(
    store: ImageryStore,
    tiles: Sequence[Tile],
    bands: Sequence[str],
    out_dir: Path,
    concurrency: int = 1,
    min_valid_share: float = 0.0,
    *,
    raise_failed: bool = False,
    report_path: Path | None = None,
) -> FetchReport:
    """Fetch every tile into `<out_dir>/<tile.id>.tif`, `concurrency` at a time; complete files are skipped.

    Tiles whose share of valid pixels (every band finite) is below `min_valid_share` get no file and are counted;
    a tile the store cannot serve (NotCoveredError, InputError: no scene, a band the catalogue lacks) is logged in
    one line and listed in `failed` while the others finish. With `report_path` the report is also written there.

    Raises:
        Any other error (UpstreamError after the retries, ...) at once, with the tile id in its message; with
        `raise_failed`, the first per-tile error after the others finished. Files of finished tiles stay (a re-run
        resumes), no partial file is left.
    """
    if concurrency < 1:
        raise InputError("concurrency", f"{concurrency} must be at least 1")
    if not bands:
        raise InputError("imagery.bands", "no bands requested")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = FetchReport(tiles=len(tiles), min_valid_share=min_valid_share)
    paths = {t.id: tile_path(out, t) for t in tiles}
    todo = [t for t in tiles if not is_complete(paths[t.id], t, bands)]
    done = {t.id for t in tiles} - {t.id for t in todo}
    if done:
        log.info("imagery: %d of %d tiles already complete in %s", len(done), len(tiles), out)
        for tid in done:
            report.valid_share[tid] = _recorded_share(paths[tid])
    first: Exception | None = None
    if todo:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="imagery") as pool:
            futures: dict[Future[float], Tile] = {
                pool.submit(_fetch_one, store, t, bands, paths[t.id], min_valid_share): t for t in todo
            }
            try:
                for fut in tqdm(as_completed(futures), total=len(futures), desc="imagery", unit="tile", leave=False):
                    tile = futures[fut]
                    try:
                        share = fut.result()
                    except PER_TILE_ERRORS as exc:
                        err = _with_tile(exc, tile)
                        log.error("imagery: %s", str(err).splitlines()[0])
                        report.failed[tile.id] = str(err).splitlines()[0]
                        first = first or err
                        continue
                    except Exception as exc:
                        err = _with_tile(exc, tile)
                        raise err from (exc.__cause__ if err is exc else exc)
                    if share < min_valid_share:
                        log.warning("imagery: tile %s skipped: valid share %.3f < %g", tile.id, share, min_valid_share)
                        report.skipped_low_valid[tile.id] = round(share, 4)
                    else:
                        report.valid_share[tile.id] = round(share, 4)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    report.written = [t.id for t in tiles if t.id in report.valid_share]
    if report_path is not None:
        Path(report_path).write_text(report.model_dump_json(indent=2))
    log.info("imagery: %s", report.summary())
    if raise_failed and first is not None:
        if len(report.failed) > 1:
            first.args = (f"{first} (and {len(report.failed) - 1} more tiles failed)",)
        raise first
    return report


def _recorded_share(path: Path) -> float:
    with rasterio.open(path) as src:
        tag = src.tags().get("VALID_SHARE")
        return float(tag) if tag else valid_share(src.read())


def tiles_with_imagery(tiles: Sequence[Tile], imagery_dir: Path) -> list[Tile]:
    """The tiles that have a raster in `imagery_dir` (skipped and failed tiles have none)."""
    return [t for t in tiles if tile_path(Path(imagery_dir), t).is_file()]


def read_report(path: Path) -> FetchReport | None:
    """A report written by `fetch_tiles_report(report_path=...)`, if the file exists."""
    path = Path(path)
    return FetchReport.model_validate(json.loads(path.read_text())) if path.is_file() else None
