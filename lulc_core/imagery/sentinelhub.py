"""Sentinel Hub imagery store: one Process API request per tile (split when too large), several outputs as a tar.

Built on sentinelhub-py: `SHConfig` (endpoints, credentials, timeout), `DataCollection.define_from(...,
service_url=...)` (commercial Sentinel Hub or Copernicus Data Space Ecosystem), `SentinelHubRequest` (the request
body: evalscript, bounds, data fusion inputs, responses) and `SentinelHubDownloadClient` with its OAuth2 session.

Retries follow `lulc_core.http` only: sentinelhub-py's own retry loop is switched off
(`SHConfig.max_download_attempts = 1`, and the client's decorated `_execute_download` is not used), so 429
Retry-After, 5xx, timeouts and truncated bodies are handled by the one policy every lulc source shares. Responses
are cached by request hash (bbox, CRS, time range, evalscript, size, outputs) with corruption checks.

Credentials come from the environment only: `SH_CLIENT_ID` / `SH_CLIENT_SECRET`, or `SH_CREDENTIALS_DIR`, a
mounted secret directory with files `client_id` and `client_secret` (a Kubernetes secret volume).

Processing units (PU) per request follow Sentinel Hub's definition: max(0.01, width*height/512²) x (input bands
without dataMask)/3 x 2 if a FLOAT32 output is requested (x number of samples, 1 here); the estimate and the
`x-processingunits-spent` the service reports are logged per tile.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import tarfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import sentinelhub as sh
from affine import Affine
from oauthlib.oauth2.rfc6749.errors import OAuth2Error
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from sentinelhub.download.models import DownloadResponse

from lulc_core.config import ImageryConfig, SentinelHubConfig
from lulc_core.errors import ConfigError, InputError, NotCoveredError, TooLargeError
from lulc_core.geo import Tile
from lulc_core.http import (
    CorruptResponseError,
    HttpPolicy,
    HttpStatusError,
    RateLimiter,
    ResponseCache,
    RetryPolicy,
    check_response,
    request_key,
)
from lulc_core.raster import Raster

log = logging.getLogger(__name__)

SERVICE = "Sentinel Hub"
EVALSCRIPT_DIR = Path(__file__).resolve().parents[1] / "evalscripts"
MAX_SIDE_PX = 2500  # Process API limit on output width and height
MAX_SUBREQUESTS = 64  # a tile needing more requests than this is a configuration mistake
PU_PIXELS = 512 * 512
REVISIT_DAYS = {"s2": 5.0, "s1": 6.0}
"""Days between acquisitions of a place, per evalscript datasource (Sentinel-2 A+B at the equator: 5; Sentinel-1
A+C: 6; a source not listed, e.g. the DEM, has one sample). With ORBIT/TILE mosaicking Sentinel Hub bills every
data sample, so a time frame of d days costs about ceil(d / revisit) samples; overlapping orbits at high latitudes
give more, a cloud-cover filter fewer."""


@dataclass(frozen=True)
class Endpoint:
    """A Sentinel Hub deployment."""

    name: str
    base_url: str
    token_url: str


ENDPOINTS = {
    "sentinelhub": Endpoint(
        "sentinelhub",
        "https://services.sentinel-hub.com",
        "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token",
    ),
    "cdse": Endpoint(
        "cdse",
        "https://sh.dataspace.copernicus.eu",
        "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token",
    ),
}


def resolve_endpoint(cfg: SentinelHubConfig) -> Endpoint:
    """The endpoint preset of `cfg.endpoint`, with `base_url`/`token_url` overridden where given.

    A URL equal to the default (the commercial endpoint's) counts as not given: a configuration that went through
    JSON (a pipeline step's, a bundle's) carries every default explicitly, and must still reach CDSE.
    """
    preset, default = ENDPOINTS[cfg.endpoint], ENDPOINTS["sentinelhub"]
    base = cfg.base_url if cfg.base_url.rstrip("/") != default.base_url else preset.base_url
    token = cfg.token_url if cfg.token_url != default.token_url else preset.token_url
    return Endpoint(preset.name, base.rstrip("/"), token)


# --- credentials ----------------------------------------------------------------------------------------------


def credentials_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(client id, client secret) from `SH_CREDENTIALS_DIR` files or `SH_CLIENT_ID`/`SH_CLIENT_SECRET`.

    Raises:
        ConfigError: neither is set, or the secret directory lacks the files.
    """
    env = os.environ if environ is None else environ
    secret_dir = env.get("SH_CREDENTIALS_DIR")
    if secret_dir:
        directory = Path(secret_dir)
        values = []
        for names in (("client_id", "sh_client_id", "SH_CLIENT_ID"), ("client_secret", "sh_client_secret")):
            found = next((directory / n for n in (*names, names[0].upper()) if (directory / n).is_file()), None)
            if found is None:
                raise ConfigError(
                    "SH_CREDENTIALS_DIR",
                    f"{directory} has no file {names[0]!r}",
                    "mount a secret with keys client_id and client_secret",
                )
            values.append(found.read_text().strip())
        return values[0], values[1]
    client_id, secret = env.get("SH_CLIENT_ID", ""), env.get("SH_CLIENT_SECRET", "")
    if not client_id or not secret:
        raise ConfigError(
            "SH_CLIENT_ID",
            "Sentinel Hub OAuth credentials are not set",
            "export SH_CLIENT_ID and SH_CLIENT_SECRET (an OAuth client of your Sentinel Hub or Copernicus Data Space "
            "account), or set SH_CREDENTIALS_DIR to a mounted secret with files client_id and client_secret",
        )
    return client_id, secret


# --- evalscripts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputSpec:
    """One output of an evalscript: its band names (the last is the source's dataMask) and sample type."""

    id: str
    bands: tuple[str, ...]
    sample_type: str


@dataclass(frozen=True)
class Evalscript:
    """A versioned evalscript file and the `LULC_SPEC` it declares."""

    name: str
    text: str
    inputs: dict[str, tuple[str, ...]]
    outputs: dict[str, OutputSpec]

    @property
    def input_band_count(self) -> int:
        """Input bands counted for processing units (dataMask is free)."""
        return sum(1 for bands in self.inputs.values() for b in bands if b != "dataMask")

    @property
    def multi_temporal(self) -> bool:
        """True when setup() asks for ORBIT or TILE mosaicking (every observation is a sample and is billed)."""
        return re.search(r"mosaicking\s*:\s*(Mosaicking\.|[\"'])(ORBIT|TILE)\b", self.text) is not None

    def billed_bands(self, start: date, end: date) -> float:
        """Input bands x data samples for a time frame: Sentinel Hub's band and sample factors of the PU formula.

        SIMPLE mosaicking: one sample per source. ORBIT/TILE: each source's bands once per expected acquisition
        in `start`..`end` (`REVISIT_DAYS`; at least one).
        """
        days = (end - start).days + 1
        total = 0.0
        for source, bands in self.inputs.items():
            count = sum(1 for b in bands if b != "dataMask")
            revisit = REVISIT_DAYS.get(source)
            samples = max(1, math.ceil(days / revisit)) if self.multi_temporal and revisit else 1
            total += count * samples
        return total

    @property
    def bands(self) -> list[str]:
        """Every band the evalscript can deliver (dataMask excluded)."""
        return [b for o in self.outputs.values() for b in o.bands if b != "dataMask"]

    def output_of(self, band: str) -> str:
        for spec in self.outputs.values():
            if band in spec.bands and band != "dataMask":
                return spec.id
        raise InputError(
            "imagery.bands",
            f"band {band!r} is not delivered by evalscript {self.name!r}",
            f"choose from {self.bands} or another imagery.sentinelhub.evalscript",
        )


_SPEC = re.compile(r"const\s+LULC_SPEC\s*=\s*(\{.*?\});\s*$", re.DOTALL | re.MULTILINE)


def load_evalscript(name_or_path: str) -> Evalscript:
    """An evalscript by name (`lulc_v2` in lulc_core/evalscripts/) or path, with its `LULC_SPEC` parsed.

    Raises:
        ConfigError: no such file, or no valid `const LULC_SPEC = {...};` JSON block in it.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = EVALSCRIPT_DIR / f"{name_or_path}.js"
    if not path.is_file():
        available = sorted(p.stem for p in EVALSCRIPT_DIR.glob("*.js"))
        raise ConfigError(
            "imagery.sentinelhub.evalscript", f"{name_or_path!r} not found", f"use one of {available} or a .js path"
        )
    text = path.read_text()
    match = _SPEC.search(text)
    try:
        spec = json.loads(match.group(1)) if match else None
        inputs = {k: tuple(v) for k, v in spec["inputs"].items()} if spec else None
        outputs = (
            {k: OutputSpec(k, tuple(v["bands"]), v["sampleType"]) for k, v in spec["outputs"].items()} if spec else None
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError("imagery.sentinelhub.evalscript", f"{path}: LULC_SPEC is not valid: {exc}") from exc
    if not inputs or not outputs:
        raise ConfigError(
            "imagery.sentinelhub.evalscript",
            f"{path} declares no `const LULC_SPEC = {{...}};` block",
            "declare inputs and outputs as strict JSON (see lulc_v2.js)",
        )
    for spec_out in outputs.values():
        if spec_out.bands[-1] != "dataMask":
            raise ConfigError("imagery.sentinelhub.evalscript", f"output {spec_out.id!r} must end with dataMask")
    return Evalscript(path.stem, text, inputs, outputs)


def with_cloud_settings(script: Evalscript, composite: str, cloud_mask: bool) -> Evalscript:
    """`script` with `composite` and `cloud_mask` written into its LULC_SPEC (scripts without them: unchanged).

    The settings travel inside the evalscript text, so the request hash (and the response cache) follows them.
    """
    match = _SPEC.search(script.text)
    if match is None:
        return script
    spec = json.loads(match.group(1))
    if "composite" not in spec:
        return script
    spec.update({"composite": composite, "cloud_mask": cloud_mask})
    block = "const LULC_SPEC = " + json.dumps(spec, indent=2) + ";"
    text = script.text[: match.start()] + block + script.text[match.end() :]
    return Evalscript(script.name, text, script.inputs, script.outputs)


# --- sizes and costs ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A pixel window of a tile."""

    col: int
    row: int
    width: int
    height: int


def plan_windows(width: int, height: int, max_pixels: int, tile_id: str = "tile") -> list[Window]:
    """Split a width x height grid into the fewest near-equal windows within the Process API limits.

    Each window is at most 2500 px per side and `max_pixels` in area.

    Raises:
        TooLargeError: the tile would need more than 64 requests.
    """
    nx, ny = math.ceil(width / MAX_SIDE_PX), math.ceil(height / MAX_SIDE_PX)
    while math.ceil(width / nx) * math.ceil(height / ny) > max_pixels:
        if math.ceil(width / nx) >= math.ceil(height / ny) and nx < width:
            nx += 1
        elif ny < height:
            ny += 1
        else:
            break
        if nx * ny > MAX_SUBREQUESTS:
            break
    if nx * ny > MAX_SUBREQUESTS:
        raise TooLargeError(
            "tile",
            f"{tile_id} is {width} x {height} px and would need {nx * ny} Process API requests "
            f"(limit {MAX_SUBREQUESTS}; each at most {MAX_SIDE_PX} px per side and {max_pixels} px)",
            "use smaller tiles (area.tile_size_m), a coarser resolution or a larger max_pixels_per_request",
        )
    cols = [round(i * width / nx) for i in range(nx + 1)]
    rows = [round(j * height / ny) for j in range(ny + 1)]
    return [
        Window(cols[i], rows[j], cols[i + 1] - cols[i], rows[j + 1] - rows[j]) for j in range(ny) for i in range(nx)
    ]


def estimate_processing_units(width: int, height: int, input_bands: float, float32: bool, samples: int = 1) -> float:
    """Processing units of one Process API request (Sentinel Hub's published multiplication factors): output
    pixels / 512^2 (at least 0.01) x input bands / 3 x 2 for FLOAT32 output x data samples (ORBIT/TILE
    mosaicking; `input_bands` may already count bands x samples, see `Evalscript.billed_bands`)."""
    area = max(0.01, width * height / PU_PIXELS)
    return area * (input_bands / 3) * (2.0 if float32 else 1.0) * samples


def tile_processing_units(evalscript: Evalscript, tile: Tile, bands: Sequence[str], max_pixels: int) -> float:
    """Processing units to fetch `bands` of `tile` with `evalscript` (every sub-request of the tile)."""
    if not bands:
        raise InputError("imagery.bands", "no bands requested", "request at least one band")
    outputs = {evalscript.output_of(b) for b in bands}
    float32 = any(evalscript.outputs[o].sample_type == "FLOAT32" for o in outputs)
    windows = plan_windows(tile.width, tile.height, max_pixels, tile.id)
    billed = evalscript.billed_bands(tile.start, tile.end)
    return sum(estimate_processing_units(w.width, w.height, billed, float32) for w in windows)


# --- the download client --------------------------------------------------------------------------------------


_CREDENTIAL_ERRORS = frozenset({"invalid_client", "unauthorized_client", "access_denied", "invalid_grant"})


class TokenRejectedError(HttpStatusError):
    """The OAuth2 token endpoint refused the client credentials (no point in asking again)."""


class _Client(sh.SentinelHubDownloadClient):  # type: ignore[misc]
    """sentinelhub-py's download client with the OAuth session supplied (and locked) by `_DownloadClient`."""

    def __init__(self, owner: _DownloadClient, config: sh.SHConfig) -> None:
        super().__init__(config=config)
        self._owner = owner

    def get_session(self) -> sh.SentinelHubSession:
        return self._owner.session()

    def _get_session_headers(self) -> dict[str, str]:
        return self._owner.session_headers()


class _TimedSession(sh.SentinelHubSession):  # type: ignore[misc]
    """sentinelhub-py's OAuth2 session whose token request has the store's timeout (sentinelhub-py sends none, so a
    token endpoint that stops answering would hold the thread forever); failures go to the lulc policy as they are."""

    def _fetch_token(self, request: sh.DownloadRequest) -> dict[str, Any]:
        from oauthlib.oauth2 import BackendApplicationClient
        from requests_oauthlib import OAuth2Session

        with OAuth2Session(client=BackendApplicationClient(client_id=self.config.sh_client_id)) as oauth:
            oauth.register_compliance_hook("access_token_response", self._compliance_hook)
            token: dict[str, Any] = oauth.fetch_token(
                token_url=request.url,
                client_id=self.config.sh_client_id,
                client_secret=self.config.sh_client_secret,
                headers={**self.DEFAULT_HEADERS, **sh.constants.SHConstants.HEADERS},
                include_client_id=True,
                timeout=self.config.download_timeout_seconds,
            )
            return token


class _DownloadClient:
    """One HTTP exchange at a time through sentinelhub-py's `SentinelHubDownloadClient` — no retries of its own.

    The OAuth2 session (`SentinelHubSession`) is shared by all threads of a store and created/refreshed under a
    lock; `reset_session` drops it (a 401 from the Process API means the token is no longer accepted).
    """

    def __init__(self, config: sh.SHConfig) -> None:
        self.config = config
        self._client = _Client(self, config)
        self._lock = threading.Lock()
        self._session: sh.SentinelHubSession | None = None

    def _session_locked(self) -> sh.SentinelHubSession:
        if self._session is None:
            self._session = _TimedSession(config=self.config)
        return self._session

    def session(self) -> sh.SentinelHubSession:
        with self._lock:
            return self._session_locked()

    def session_headers(self) -> dict[str, str]:
        with self._lock:  # the token may be refreshed here: one thread at a time
            return dict(self._session_locked().session_headers)

    def reset_session(self) -> None:
        with self._lock:
            self._session = None

    def execute(self, request: sh.DownloadRequest) -> DownloadResponse:
        """One HTTP exchange; raises `requests`/`HttpStatusError` exceptions for the policy to classify."""
        try:
            response = self._client._do_download(request)
        except OAuth2Error as exc:  # the token endpoint refused the client credentials
            if exc.error == "insecure_transport":
                raise ConfigError(
                    "imagery.sentinelhub.token_url",
                    f"{self.config.sh_token_url} is not https; OAuth2 (oauthlib) refuses plain http",
                    "use an https token URL, or for a local stand-in export OAUTHLIB_INSECURE_TRANSPORT=1",
                ) from exc
            raise TokenRejectedError(
                401 if exc.error in _CREDENTIAL_ERRORS else exc.status_code or 400,
                f"token endpoint: {exc.error}: {exc.description or 'no description'}",
            ) from exc
        check_response(response, retry_after_unit_s=0.001)
        return DownloadResponse.from_response(response, request)


_COLLECTION_LOCK = threading.Lock()


def define_collections(base_url: str) -> dict[str, Any]:
    """Sentinel-2 L2A, Sentinel-1 IW GRD and Copernicus DEM 30 served from `base_url` (idempotent)."""
    tag = hashlib.sha1(base_url.encode()).hexdigest()[:8].upper()
    with _COLLECTION_LOCK:
        return {
            "s2": sh.DataCollection.SENTINEL2_L2A.define_from(f"LULC_S2L2A_{tag}", service_url=base_url),
            "s1": sh.DataCollection.SENTINEL1_IW.define_from(f"LULC_S1IW_{tag}", service_url=base_url),
            "dem": sh.DataCollection.DEM_COPERNICUS_30.define_from(f"LULC_DEM30_{tag}", service_url=base_url),
        }


def build_sh_config(cfg: SentinelHubConfig, endpoint: Endpoint, credentials: tuple[str, str]) -> sh.SHConfig:
    """An `SHConfig` that reads no config file and does not retry by itself."""
    return sh.SHConfig(
        use_defaults=True,  # never read ~/.config/sentinelhub: credentials come from the environment only
        sh_client_id=credentials[0],
        sh_client_secret=credentials[1],
        sh_base_url=endpoint.base_url,
        sh_token_url=endpoint.token_url,
        download_timeout_seconds=cfg.timeout_s,
        max_download_attempts=1,  # lulc_core.http retries; sentinelhub-py must not retry on its own
        download_sleep_time=0,
    )


def decode_outputs(
    body: bytes, identifiers: Sequence[str], expected: Mapping[str, tuple[int, int, int]]
) -> dict[str, tuple[np.ndarray, Affine, CRS]]:
    """TIFFs of a Process API response (a tar of `<id>.tif`, or one TIFF) by output id.

    Raises:
        CorruptResponseError: a truncated tar, a missing output, an unreadable TIFF or one of the wrong shape.
    """
    files: dict[str, bytes] = {}
    if len(identifiers) == 1 and body[:2] in (b"II", b"MM"):
        files[f"{identifiers[0]}.tif"] = body
    else:
        try:
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for member in tar.getmembers():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        files[member.name] = handle.read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise CorruptResponseError(f"unreadable tar ({len(body)} bytes): {exc}") from exc
    out = {}
    for ident in identifiers:
        data = files.get(f"{ident}.tif")
        if data is None:
            raise CorruptResponseError(f"output {ident!r} missing from the response ({sorted(files)})")
        try:
            with rasterio.MemoryFile(data) as mem, mem.open() as src:
                array, transform, crs = src.read(), src.transform, src.crs
        except (RasterioError, ValueError) as exc:
            raise CorruptResponseError(f"output {ident!r} is not a readable TIFF: {exc}") from exc
        if array.shape != expected[ident]:
            raise CorruptResponseError(f"output {ident!r} has shape {array.shape}, expected {expected[ident]}")
        out[ident] = (array, transform, crs)
    return out


# --- the store ------------------------------------------------------------------------------------------------


class SentinelHubStore:
    """Imagery from the Sentinel Hub Process API (commercial or Copernicus Data Space).

    Thread-safe: `fetch` may run in N threads at once; a per-store rate limiter bounds the requests they start.

    Args:
        cfg: Sentinel Hub settings (endpoint, evalscript, limits, retries).
        resolution: the configured pixel size; tiles are fetched on their own grid (`tile.resolution`).
        cache_dir: response cache directory (None: no cache).
        credentials: (client id, secret); default from the environment (`credentials_from_env`).
        evalscript: evalscript name or path overriding `cfg.evalscript`.
        composite: "median" or "least_cloudy", written into evalscripts that declare it (lulc_v2).
        cloud_mask: mask SCL/CLM-flagged Sentinel-2 pixels (evalscripts that declare it).

    Raises:
        ConfigError: missing credentials or an unknown evalscript.
    """

    def __init__(
        self,
        cfg: SentinelHubConfig,
        resolution: float,
        cache_dir: Path | None = None,
        *,
        credentials: tuple[str, str] | None = None,
        evalscript: str | None = None,
        composite: str = "median",
        cloud_mask: bool = True,
    ) -> None:
        self.cfg = cfg
        self.resolution = resolution
        self.endpoint = resolve_endpoint(cfg)
        self.evalscript = with_cloud_settings(load_evalscript(evalscript or cfg.evalscript), composite, cloud_mask)
        self._sh_config = build_sh_config(cfg, self.endpoint, credentials or credentials_from_env())
        self._collections = define_collections(self.endpoint.base_url)
        self._client = _DownloadClient(self._sh_config)
        self.http = HttpPolicy(
            SERVICE,
            RetryPolicy(
                max_retries=cfg.max_retries,
                backoff_s=cfg.backoff_s,
                max_backoff_s=cfg.max_backoff_s,
                max_retry_after_s=cfg.max_retry_after_s,
                retry_after_unit_s=0.001,  # Sentinel Hub's Retry-After is in milliseconds
            ),
            RateLimiter(per_second=cfg.max_requests_per_second),
        )
        self.cache = ResponseCache(Path(cache_dir) / "sentinelhub") if cache_dir is not None else None
        self._lock = threading.Lock()
        self.pu_estimated = 0.0
        self.pu_spent = 0.0

    def __repr__(self) -> str:
        return f"SentinelHubStore({self.endpoint.base_url!r}, evalscript={self.evalscript.name!r})"

    # --- planning -------------------------------------------------------------------------------------------------

    def outputs_for(self, bands: Sequence[str]) -> list[str]:
        """The evalscript outputs holding `bands`, in evalscript order."""
        if not bands:
            raise InputError("imagery.bands", "no bands requested", "request at least one band")
        needed = {self.evalscript.output_of(b) for b in bands}
        return [o for o in self.evalscript.outputs if o in needed]

    def processing_units(self, tile: Tile, bands: Sequence[str]) -> float:
        """Estimated processing units to fetch `bands` of `tile` (all its sub-requests)."""
        return tile_processing_units(self.evalscript, tile, bands, self.cfg.max_pixels_per_request)

    def _input_data(self, tile: Tile) -> dict[str, Any]:
        """The request's input data by evalscript datasource id: S2 L2A, S1 IW GRD (orthorectified), DEM."""
        interval = (tile.start, tile.end)
        cfg = self.cfg
        return {
            "s2": sh.SentinelHubRequest.input_data(
                self._collections["s2"],
                identifier="s2",
                time_interval=interval,
                maxcc=cfg.max_cloud_coverage / 100,
                mosaicking_order=sh.MosaickingOrder(cfg.mosaicking_order),
            ),
            "s1": sh.SentinelHubRequest.input_data(
                self._collections["s1"],
                identifier="s1",
                time_interval=interval,
                mosaicking_order=sh.MosaickingOrder.MOST_RECENT,
                other_args={
                    "processing": {
                        "orthorectify": True,
                        "demInstance": "COPERNICUS_30",
                        "backCoeff": cfg.s1_backscatter,
                    }
                },
            ),
            "dem": sh.SentinelHubRequest.input_data(self._collections["dem"], identifier="dem"),
        }

    def _request(self, tile: Tile, window: Window, outputs: Sequence[str]) -> Any:
        minx, _, _, maxy = tile.bounds
        res = tile.resolution
        bounds = (
            minx + window.col * res,
            maxy - (window.row + window.height) * res,
            minx + (window.col + window.width) * res,
            maxy - window.row * res,
        )
        inputs = self._input_data(tile)
        missing = [i for i in self.evalscript.inputs if i not in inputs]
        if missing:
            raise ConfigError(
                "imagery.sentinelhub.evalscript", f"unknown data sources {missing}", f"use {sorted(inputs)}"
            )
        return sh.SentinelHubRequest(
            evalscript=self.evalscript.text,
            input_data=[inputs[i] for i in self.evalscript.inputs],
            responses=[sh.SentinelHubRequest.output_response(o, sh.MimeType.TIFF) for o in outputs],
            bbox=sh.BBox(bounds, crs=sh.CRS(CRS.from_user_input(tile.crs).to_epsg())),
            size=(window.width, window.height),
            config=self._sh_config,
        )

    # --- fetching -------------------------------------------------------------------------------------------------

    def fetch(self, tile: Tile, bands: Sequence[str]) -> Raster:
        """`bands` of `tile` as float32 on the tile grid, with the sources' data masks as `valid`.

        Raises:
            InputError: a band the evalscript does not deliver.
            TooLargeError: the tile needs more than 64 requests.
            NotCoveredError: the service has no data for the tile in its time range.
            UpstreamError: the service still fails after the retries (names the tile).
        """
        bands = list(bands)
        outputs = self.outputs_for(bands)
        if not math.isclose(tile.resolution, self.resolution):
            log.debug(
                "tile %s has resolution %s (store: %s); using the tile grid", tile.id, tile.resolution, self.resolution
            )
        windows = plan_windows(tile.width, tile.height, self.cfg.max_pixels_per_request, tile.id)
        specs = {o: self.evalscript.outputs[o] for o in outputs}
        full = {o: np.zeros((len(specs[o].bands), tile.height, tile.width), np.float32) for o in outputs}
        float32 = any(s.sample_type == "FLOAT32" for s in specs.values())
        estimated = spent = 0.0
        for n, window in enumerate(windows, start=1):
            what = f"tile {tile.id}" + (f" part {n}/{len(windows)}" if len(windows) > 1 else "")
            arrays, pu = self._fetch_window(tile, window, outputs, what)
            for o in outputs:
                full[o][:, window.row : window.row + window.height, window.col : window.col + window.width] = arrays[o]
            estimated += estimate_processing_units(
                window.width, window.height, self.evalscript.billed_bands(tile.start, tile.end), float32
            )
            spent += pu
        with self._lock:
            self.pu_estimated += estimated
            self.pu_spent += spent
        log.info(
            "Sentinel Hub tile %s: %d request(s), %.3f PU estimated, %.3f PU spent (0 = cached)",
            tile.id,
            len(windows),
            estimated,
            spent,
        )
        has_data = {o: full[o][-1] > 0 for o in outputs}
        valid = np.logical_and.reduce([has_data[o] for o in outputs])
        if not valid.any():
            raise NotCoveredError(
                f"Sentinel Hub has no {'/'.join(outputs)} data for tile {tile.id} between {tile.start} and {tile.end}"
            )
        data = np.empty((len(bands), tile.height, tile.width), np.float32)
        for i, band in enumerate(bands):
            out = self.evalscript.output_of(band)
            data[i] = np.where(has_data[out], full[out][specs[out].bands.index(band)], np.nan)  # NaN = no data
        transform = Affine(tile.resolution, 0, tile.bounds[0], 0, -tile.resolution, tile.bounds[3])
        tags = {"source": f"sentinelhub:{self.endpoint.name}", "evalscript": self.evalscript.name}
        return Raster(data, transform, CRS.from_user_input(tile.crs), bands, valid, tags)

    def _fetch_window(
        self, tile: Tile, window: Window, outputs: Sequence[str], what: str
    ) -> tuple[dict[str, np.ndarray], float]:
        request = self._request(tile, window, outputs).download_list[0]
        key = request_key("sentinelhub-process", request.url, request.post_values)
        expected = {o: (len(self.evalscript.outputs[o].bands), window.height, window.width) for o in outputs}
        pu_spent: list[float] = []

        def download() -> bytes:
            try:
                response = self._client.execute(request)
            except HttpStatusError as exc:
                if exc.status != 401 or isinstance(exc, TokenRejectedError):
                    raise
                log.info("Sentinel Hub answered 401 for %s; fetching a new token once", what)
                self._client.reset_session()
                response = self._client.execute(request)
            pu_spent.append(float(response.headers.get("x-processingunits-spent") or 0.0))
            return bytes(response.content)

        def decode(body: bytes) -> dict[str, np.ndarray]:
            decoded = decode_outputs(body, outputs, expected)
            return {o: arr.astype(np.float32, copy=False) for o, (arr, _, _) in decoded.items()}

        arrays = self.http.fetch_cached(
            self.cache,
            key,
            download,
            decode,
            what=what,
            info={"tile": tile.id, "crs": tile.crs, "start": tile.start, "end": tile.end, "outputs": list(outputs)},
        )
        return arrays, sum(pu_spent)


def build_store(cfg: ImageryConfig, cache_dir: Path | None = None) -> SentinelHubStore:
    """The Sentinel Hub store of an imagery configuration (`imagery.store: sentinelhub`)."""
    return SentinelHubStore(
        cfg.sentinelhub, cfg.resolution, cache_dir, composite=cfg.composite, cloud_mask=cfg.cloud_mask
    )
