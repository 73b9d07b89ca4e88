"""A public STAC API as an imagery store (`imagery.store: stac`): no account, no processing units.

Sentinel-2 L2A, Sentinel-1 and the Copernicus DEM are published as cloud-optimised GeoTIFFs behind STAC APIs:
Element 84's Earth Search (plain HTTPS) and Microsoft's Planetary Computer (asset URLs signed with a SAS token from
its token endpoint). For a tile the store

1. searches each needed collection with pystac-client (collections, the tile's bbox, its time frame, and for
   Sentinel-2 `eo:cloud_cover <= imagery.stac.max_cloud_cover`, the `max_items` least cloudy scenes kept);
2. reads only the window of each COG asset that covers the tile, with GDAL's HTTP range requests, and warps it onto
   the tile grid (`warp_onto_tile`, the same code as the local store);
3. removes the +1000 reflectance offset of processing baseline 04.00 (`s2:processing_baseline` >= 04.00, unless
   `earthsearch:boa_offset_applied` says Earth Search already did), masks clouds with the scene classification
   (`SCL`) and composites the observations (`lulc_core.imagery.clouds`); Sentinel-1 RTC (linear gamma0) becomes
   dB and is median-composited; DEM items are mosaicked.

Every request goes through the one HTTP policy (`lulc_core.http`): searches, token requests and asset reads are
retried on 5xx/429/timeouts/truncated bodies with the same backoff, GDAL's own retries are off
(`GDAL_HTTP_MAX_RETRY=0`) and its block cache is not kept between attempts, so a retry really reads again. Search
results and warped asset windows are cached on disk by request hash.

Bad input is one line naming the field and the fix (`InputError`): a collection the catalogue does not have, a
band without an asset, a signing failure; no scene under the cloud limit is a `NotCoveredError` naming
`imagery.stac.max_cloud_cover`. `fetch_tiles` reports such a tile and finishes the others.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import requests
from affine import Affine
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from lulc_core.config import ImageryConfig, StacConfig
from lulc_core.errors import InputError, NotCoveredError, UpstreamError
from lulc_core.geo import Tile
from lulc_core.http import (
    CorruptResponseError,
    HttpPolicy,
    HttpStatusError,
    RateLimiter,
    ResponseCache,
    RetryPolicy,
    TransportError,
    check_response,
    request_key,
)
from lulc_core.imagery.clouds import cloud_invalid, composite, mask_observation
from lulc_core.imagery.local import warp_onto_tile
from lulc_core.raster import Raster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalogue:
    """A STAC API and the collections lulc reads from it."""

    name: str
    url: str
    sign_url: str | None
    s2: str
    s1: str | None
    dem: str


PRESETS = {
    "earth_search": Catalogue(
        "earth_search", "https://earth-search.aws.element84.com/v1", None, "sentinel-2-l2a", None, "cop-dem-glo-30"
    ),
    "planetary_computer": Catalogue(
        "planetary_computer",
        "https://planetarycomputer.microsoft.com/api/stac/v1",
        "https://planetarycomputer.microsoft.com/api/sas/v1/token",
        "sentinel-2-l2a",
        "sentinel-1-rtc",
        "cop-dem-glo-30",
    ),
}

# band -> asset keys, Earth Search names first, Planetary Computer names second
S2_ASSETS = {
    "B01": ("coastal", "B01"),
    "B02": ("blue", "B02"),
    "B03": ("green", "B03"),
    "B04": ("red", "B04"),
    "B05": ("rededge1", "B05"),
    "B06": ("rededge2", "B06"),
    "B07": ("rededge3", "B07"),
    "B08": ("nir", "B08"),
    "B8A": ("nir08", "B8A"),
    "B09": ("nir09", "B09"),
    "B11": ("swir16", "B11"),
    "B12": ("swir22", "B12"),
    "SCL": ("scl", "SCL"),
}
S1_ASSETS = {"VV": ("vv",), "VH": ("vh",)}
DEM_ASSETS = {"DEM": ("data",)}
BOA_OFFSET = 1000.0
_HTTP_CODE = re.compile(r"HTTP response code:\s*(\d{3})")


def resolve_catalogue(cfg: StacConfig) -> Catalogue:
    """The preset of `cfg.catalog` with every explicitly set URL or collection applied."""
    p = PRESETS[cfg.catalog]
    return Catalogue(
        p.name,
        (cfg.url or p.url).rstrip("/"),
        cfg.sign_url if "sign_url" in cfg.model_fields_set else p.sign_url,
        cfg.s2_collection or p.s2,
        cfg.s1_collection or p.s1,
        cfg.dem_collection or p.dem,
    )


def needs_offset_removal(properties: dict[str, Any]) -> bool:
    """Whether a Sentinel-2 L2A item's reflectances carry the +1000 offset of processing baseline 04.00."""
    if properties.get("earthsearch:boa_offset_applied") is True:
        return False
    baseline = str(properties.get("s2:processing_baseline") or "0")
    try:
        return float(baseline) >= 4.0
    except ValueError:
        return False


def gdal_options(timeout_s: float) -> dict[str, Any]:
    """GDAL settings for COG range reads under the lulc retry policy (GDAL itself does not retry or keep blocks)."""
    return {
        "GDAL_HTTP_MAX_RETRY": 0,
        "GDAL_HTTP_TIMEOUT": max(1, round(timeout_s)),
        "GDAL_HTTP_CONNECTTIMEOUT": max(1, round(min(timeout_s, 10))),
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "CPL_VSIL_CURL_NON_CACHED": "/vsicurl/",
        "VSI_CACHE": False,
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }


def _classify_gdal(exc: RasterioError, href: str) -> Exception:
    text = str(exc)
    match = _HTTP_CODE.search(text)
    if match:
        return HttpStatusError(int(match.group(1)), f"{_short(href)}: {text.splitlines()[0][:200]}")
    if "timed out" in text.lower() or "timeout" in text.lower():
        return TransportError(f"{_short(href)}: {text[:200]}", timeout=True)
    return CorruptResponseError(f"{_short(href)} could not be read: {text.splitlines()[0][:200]}")


def _short(href: str) -> str:
    return href.split("?", 1)[0]


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _from_npy(body: bytes) -> np.ndarray:
    try:
        return np.asarray(np.load(io.BytesIO(body), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptResponseError(f"cached window unreadable: {exc}") from exc


class StacStore:
    """Imagery from a STAC API of COGs; see the module docstring. Thread-safe.

    Args:
        cfg: the imagery settings (`stac`, `cloud_mask`, `composite`).
        cache_dir: search/asset-window cache directory (None: no cache).
    """

    def __init__(self, cfg: ImageryConfig, cache_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.stac = cfg.stac
        self.catalogue = resolve_catalogue(cfg.stac)
        retry = RetryPolicy(max_retries=cfg.stac.max_retries, backoff_s=cfg.stac.backoff_s, max_backoff_s=30.0)
        # the API (searches, tokens) is rate limited; COG range reads go to object storage, which is not
        self.http = HttpPolicy(
            f"STAC {self.catalogue.name}", retry, RateLimiter(per_second=cfg.stac.max_requests_per_second)
        )
        self.asset_http = HttpPolicy(f"STAC {self.catalogue.name} assets", retry, RateLimiter())
        self.cache = ResponseCache(Path(cache_dir) / "stac") if cache_dir is not None else None
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._collections: set[str] | None = None
        self._tokens: dict[str, tuple[str, float]] = {}

    def __repr__(self) -> str:
        return f"StacStore({self.catalogue.url!r}, {self.catalogue.name})"

    # --- catalogue --------------------------------------------------------------------------------------------

    def _api_call(self, fn: Callable[[], Any], what: str) -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except APIError as exc:
                if exc.status_code is None:
                    raise  # a transport failure: the policy finds the requests exception in the chain
                raise HttpStatusError(exc.status_code, _api_message(exc)) from exc

        return self.http.call(attempt, what=what)

    def client(self) -> Client:
        """The pystac-client `Client` (landing page read once; pystac-client's own retries off)."""
        with self._lock:
            if self._client is None:
                io_ = StacApiIO(timeout=self.stac.timeout_s, max_retries=None)
                url = self.catalogue.url
                self._client = self._api_call(lambda: Client.open(url, stac_io=io_), f"landing page {url}")
            return self._client

    def check_collection(self, collection: str | None, field: str, bands: Sequence[str]) -> str:
        """`collection` if the catalogue has it, else InputError naming `field`."""
        if collection is None:
            raise InputError(
                "imagery.bands",
                f"catalogue {self.catalogue.name} has no public collection for bands {list(bands)}",
                f"drop {list(bands)} from imagery.bands, set {field}, or use imagery.stac.catalog planetary_computer",
            )
        client = self.client()
        with self._lock:
            if self._collections is None:
                found = self._api_call(lambda: [c.id for c in client.get_collections()], "collection list")
                self._collections = set(found)
            known = self._collections
        if collection not in known:
            raise InputError(
                field,
                f"catalogue {self.catalogue.url} has no collection {collection!r}",
                f"use one of {sorted(known)[:12]}",
            )
        return collection

    def search(self, tile: Tile, collection: str, *, cloud_limit: bool, timeless: bool = False) -> list[dict[str, Any]]:
        """Item dicts of `collection` over the tile (and its time frame), least cloudy first; cached."""
        bbox = list(tile.bbox_wgs84.as_tuple())
        params: dict[str, Any] = {"collections": [collection], "bbox": bbox, "max_items": 200}
        if not timeless:
            params["datetime"] = f"{tile.start.isoformat()}T00:00:00Z/{tile.end.isoformat()}T23:59:59Z"
        if cloud_limit:
            params["query"] = {"eo:cloud_cover": {"lte": self.stac.max_cloud_cover}}
        client = self.client()
        key = request_key("stac-search", self.catalogue.url, params)

        def download() -> bytes:
            try:
                items = list(client.search(**params).items_as_dicts())
            except APIError as exc:
                if exc.status_code is None:
                    raise
                raise HttpStatusError(exc.status_code, _api_message(exc)) from exc
            return json.dumps(items).encode()

        def decode(body: bytes) -> list[dict[str, Any]]:
            try:
                return list(json.loads(body))
            except ValueError as exc:
                raise CorruptResponseError(f"search result is not JSON: {exc}") from exc

        items = self.http.fetch_cached(
            self.cache, key, download, decode, what=f"search {collection} for tile {tile.id}", info={"tile": tile.id}
        )
        return sorted(items, key=lambda it: (it.get("properties", {}).get("eo:cloud_cover", 0.0), it.get("id", "")))

    # --- signing ----------------------------------------------------------------------------------------------

    def sign(self, href: str, collection: str) -> str:
        """`href` with the Planetary Computer SAS token of `collection` (unchanged without a sign URL)."""
        if not self.catalogue.sign_url or not href.startswith("http"):
            return href
        with self._lock:
            cached = self._tokens.get(collection)
        if cached is None or cached[1] < time.time() + 60:
            url = f"{self.catalogue.sign_url.rstrip('/')}/{collection}"

            def attempt() -> dict[str, Any]:
                response = requests.get(url, timeout=self.stac.timeout_s)
                check_response(response)
                try:
                    body: dict[str, Any] = response.json()
                    token = str(body["token"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise CorruptResponseError(f"token answer is not {{token, msft:expiry}}: {exc}") from exc
                return {"token": token, "expiry": body.get("msft:expiry")}

            failure = None
            try:
                answer = self.http.call(attempt, what=f"SAS token for {collection}")
            except UpstreamError as exc:
                failure = str(exc).splitlines()[0].split(" — ")[0]
            if failure is not None:  # raised outside the handler: no HTTP cause for the asset read's policy to find
                raise InputError(
                    "imagery.stac.sign_url",
                    f"signing the asset URLs of {collection} failed: {failure}",
                    "check imagery.stac.sign_url (Planetary Computer: https://planetarycomputer.microsoft.com/api/"
                    "sas/v1/token) or use imagery.stac.catalog earth_search, which needs no signing",
                )
            cached = (answer["token"], _expiry(answer["expiry"]))
            with self._lock:
                self._tokens[collection] = cached
        return f"{href}{'&' if '?' in href else '?'}{cached[0].lstrip('?')}"

    # --- reading ----------------------------------------------------------------------------------------------

    def read_asset(
        self, item: dict[str, Any], band: str, keys: Sequence[str], collection: str, tile: Tile
    ) -> np.ndarray:
        """One asset of `item` warped onto the tile grid (float32 H x W, NaN where no data); cached."""
        assets = item.get("assets", {})
        key = next((k for k in keys if k in assets), None)
        if key is None:
            raise InputError(
                "imagery.bands",
                f"item {item.get('id')} of {collection} has no asset for band {band} (looked for {list(keys)}; "
                f"it has {sorted(assets)})",
                f"drop {band} from imagery.bands or choose a catalogue/collection that has it",
            )
        href = str(assets[key]["href"])
        shape = (tile.height, tile.width)
        transform = Affine(tile.resolution, 0, tile.bounds[0], 0, -tile.resolution, tile.bounds[3])
        crs = CRS.from_user_input(tile.crs)
        cache_key = request_key("stac-asset", _short(href), tile.crs, tile.bounds, tile.resolution)

        def download() -> bytes:
            url = self.sign(href, collection)
            path = f"/vsicurl/{url}" if url.startswith("http") else url
            try:
                with rasterio.Env(**gdal_options(self.stac.timeout_s)), rasterio.open(path) as src:
                    return _npy(warp_onto_tile(src, [1], tile, shape, transform, crs)[0])
            except RasterioError as exc:
                raise _classify_gdal(exc, href) from exc

        return self.asset_http.fetch_cached(
            self.cache, cache_key, download, _from_npy, what=f"{band} of {item.get('id')} for tile {tile.id}"
        )

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        """`bands` on the tile grid as float32 (NaN = nodata: clouds, no scene), `valid` where every band has data.

        Raises:
            InputError: a band no collection has, an unknown collection, a missing asset, a signing failure.
            NotCoveredError: no Sentinel-2 scene under the cloud limit (or no S1/DEM item) for the tile.
            UpstreamError: the catalogue or the asset host still fails after the retries.
        """
        names = list(bands)
        if not names or len(set(names)) != len(names):
            raise InputError("imagery.bands", f"{names} must be a non-empty list without repeats")
        unknown = [b for b in names if b not in S2_ASSETS and b not in S1_ASSETS and b not in DEM_ASSETS]
        if unknown:
            raise InputError(
                "imagery.bands",
                f"bands {unknown} are not published in STAC catalogues (CLM is a Sentinel Hub product)",
                f"drop them or use imagery.store sentinelhub; STAC has {sorted({*S2_ASSETS, *S1_ASSETS, *DEM_ASSETS})}",
            )
        out = np.full((len(names), tile.height, tile.width), np.nan, np.float32)
        used: list[str] = []
        s2 = [b for b in names if b in S2_ASSETS]
        s1 = [b for b in names if b in S1_ASSETS]
        dem = [b for b in names if b in DEM_ASSETS]
        if s2:
            used += self._sentinel2(tile, s2, names, out)
        if s1:
            used += self._sentinel1(tile, s1, names, out)
        if dem:
            used += self._dem(tile, dem, names, out)
        valid = np.asarray(np.isfinite(out).all(axis=0))
        transform = Affine(tile.resolution, 0, tile.bounds[0], 0, -tile.resolution, tile.bounds[3])
        tags = {
            "source": f"stac:{self.catalogue.name}",
            "composite": self.cfg.composite if self.cfg.cloud_mask else "unmasked",
            "items": ",".join(used)[:4000],
        }
        return Raster(out, transform, CRS.from_user_input(tile.crs), names, valid, tags)

    def _sentinel2(self, tile: Tile, bands: list[str], names: list[str], out: np.ndarray) -> list[str]:
        collection = self.check_collection(self.catalogue.s2, "imagery.stac.s2_collection", bands)
        items = self.search(tile, collection, cloud_limit=True)[: self.stac.max_items]
        if not items:
            raise NotCoveredError(
                f"tile {tile.id}: no {collection} scene with eo:cloud_cover <= {self.stac.max_cloud_cover:g} % "
                f"between {tile.start} and {tile.end} in {self.catalogue.name} (imagery.stac.max_cloud_cover) — "
                "raise imagery.stac.max_cloud_cover or widen area.time_frames"
            )
        reflect = [b for b in bands if b != "SCL"]
        read = list(dict.fromkeys([*bands, *(["SCL"] if self.cfg.cloud_mask else [])]))
        stack = np.full((len(items), len(bands), tile.height, tile.width), np.nan, np.float32)
        for i, item in enumerate(items):
            arrays = {b: self.read_asset(item, b, S2_ASSETS[b], collection, tile) for b in read}
            if needs_offset_removal(item.get("properties", {})):
                for b in reflect:
                    arrays[b] = np.maximum(arrays[b] - BOA_OFFSET, 0.0)  # NaN stays NaN
            obs = np.stack([arrays[b] for b in bands])
            if self.cfg.cloud_mask:
                invalid = cloud_invalid(arrays["SCL"]) | (np.nan_to_num(arrays["SCL"], nan=0) == 0)
                obs = mask_observation(obs, invalid)
                if "SCL" in bands:
                    obs[bands.index("SCL")] = arrays["SCL"]
            stack[i] = obs
        fresh = composite(stack, self.cfg.composite if self.cfg.cloud_mask else "least_cloudy")
        for k, band in enumerate(bands):
            out[names.index(band)] = fresh[k]
        log.debug("tile %s: %s composite of %d %s scenes", tile.id, self.cfg.composite, len(items), collection)
        return [str(it.get("id")) for it in items]

    def _sentinel1(self, tile: Tile, bands: list[str], names: list[str], out: np.ndarray) -> list[str]:
        collection = self.check_collection(self.catalogue.s1, "imagery.stac.s1_collection", bands)
        items = self.search(tile, collection, cloud_limit=False)[: self.stac.max_items]
        if not items:
            raise NotCoveredError(
                f"tile {tile.id}: no {collection} item between {tile.start} and {tile.end} in {self.catalogue.name} "
                "— widen area.time_frames"
            )
        stack = np.full((len(items), len(bands), tile.height, tile.width), np.nan, np.float32)
        for i, item in enumerate(items):
            for k, band in enumerate(bands):
                linear = self.read_asset(item, band, S1_ASSETS[band], collection, tile)
                with np.errstate(divide="ignore", invalid="ignore"):
                    stack[i, k] = np.where(linear > 0, 10.0 * np.log10(linear), np.nan)  # RTC gamma0 -> dB
        fresh = composite(stack, "median")
        for k, band in enumerate(bands):
            out[names.index(band)] = fresh[k]
        return [str(it.get("id")) for it in items]

    def _dem(self, tile: Tile, bands: list[str], names: list[str], out: np.ndarray) -> list[str]:
        collection = self.check_collection(self.catalogue.dem, "imagery.stac.dem_collection", bands)
        items = self.search(tile, collection, cloud_limit=False, timeless=True)
        if not items:
            raise NotCoveredError(f"tile {tile.id}: no {collection} item in {self.catalogue.name}")
        target = out[names.index("DEM")]
        for item in items:
            gap = np.isnan(target)
            if not gap.any():
                break
            target[gap] = self.read_asset(item, "DEM", DEM_ASSETS["DEM"], collection, tile)[gap]
        return [str(it.get("id")) for it in items]


def _api_message(exc: APIError) -> str:
    text = str(exc)
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict):
        return str(body.get("description") or body.get("detail") or body.get("message") or body)[:300]
    return text[:300]


def _expiry(value: Any) -> float:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return time.time() + 600


def build_store(cfg: ImageryConfig, cache_dir: Path | None = None) -> StacStore:
    """The STAC store of an imagery configuration (`imagery.store: stac`)."""
    return StacStore(cfg, cache_dir)
