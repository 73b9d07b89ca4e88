"""A Sentinel Hub stand-in: OAuth2 client-credentials token endpoint and the Process API, on 127.0.0.1.

Wire formats follow the real service (see ../shared/data/sentinelhub: `lulc_utility_request.json`, `img.tar`):

- `POST /auth/realms/main/protocol/openid-connect/token` (form: grant_type=client_credentials, client_id,
  client_secret; or HTTP Basic) -> `{"access_token", "expires_in", "token_type": "Bearer", ...}`; bad credentials
  -> 401 `{"error": "unauthorized_client", "error_description": ...}` as Keycloak answers.
- `POST /api/v1/process` (JSON: evalscript, input.bounds.bbox + properties.crs, input.data [type, id,
  dataFilter.timeRange/maxCloudCoverage, processing], output width/height or resx/resy, responses
  [identifier, format.type]) -> `application/x-tar` with `<identifier>.tif` per response, or `image/tiff` for a
  single response; header `x-processingunits-spent`. Errors are `{"error": {"status", "reason", "message",
  "code"}}`.

The evalscript really runs: `evalscript_runner.js` (node) calls its `setup()` and `evaluatePixel()` per pixel over
samples taken from real rasters — the bundled sample patches (data/sample/imagery, built from
../shared/data/terramind, harmonised like Sentinel Hub's default `harmonizeValues`) warped onto the requested grid
with nearest-neighbour resampling; outside the patches, or outside a source's acquisition date, `dataMask` is 0.
SCL and CLM are derived from the patches' ESRI land-cover map (water 6, vegetation 4, built/bare 5, snow 11,
cloud 9); a CORINE BYOC collection (`byoc-<id>`, band `CLC`, legend index 1..44, 48 = no data; editions 2012 and
2018, identical) is derived from it as well, by `ESRI_TO_CLC_INDEX` (docs/corine.md lists the mapping). Unlike the
real CLC (Europe only) it covers every sample patch.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import math
import re
import secrets
import shutil
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, reproject, transform_bounds

from standins import Fault, Recorded, Reply, StandIn, cloudy
from standins.cloudy import PATCH as CLOUDY_PATCH

REPO = Path(__file__).resolve().parents[2]
SAMPLE_IMAGERY = REPO / "data" / "sample" / "imagery"
SAMPLE_LULC = REPO / "data" / "sample" / "lulc"
RUNNER = Path(__file__).with_name("evalscript_runner.js")
TOKEN_PATH = "/auth/realms/main/protocol/openid-connect/token"
PROCESS_PATH = "/api/v1/process"
CORINE_COLLECTION = "cbdba844-f86d-41dc-95ad-b3f7f12535e9"
CORINE_EDITIONS = (date(2012, 1, 1), date(2018, 1, 1))  # both derived from the same ESRI map (see docstring)
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
ESRI_TO_SCL = {0: 0, 1: 6, 2: 4, 3: 4, 4: 4, 5: 5, 6: 5, 7: 11, 8: 9, 9: 4}
# ESRI LULC -> CORINE legend index (water bodies 512, mixed forest 313, inland marshes 411, non-irrigated arable
# land 211, discontinuous urban fabric 112, bare rocks 332, glaciers 335, pastures 231; 48 = no data)
ESRI_TO_CLC_INDEX = {0: 48, 1: 41, 2: 25, 3: 35, 4: 12, 5: 2, 6: 31, 7: 34, 8: 48, 9: 18}
SAMPLE_TYPES = {"UINT8": ("uint8", 255), "UINT16": ("uint16", 65535), "FLOAT32": ("float32", None)}
REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}


class BadRequestError(Exception):
    """A request the real service would answer with 400."""


@dataclass
class Patch:
    """One real co-registered patch: S2 (DN), S1 (dB), DEM (m), ESRI LULC on one UTM grid."""

    id: str
    crs: CRS
    transform: Affine
    width: int
    height: int
    s2: np.ndarray
    s1: np.ndarray
    dem: np.ndarray
    lulc: np.ndarray
    s2_date: date
    s1_date: date

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        w, s, e, n = rasterio.transform.array_bounds(self.height, self.width, self.transform)
        return (w, s, e, n)

    @property
    def cloud_percent(self) -> float:
        return float((self.lulc == 8).mean() * 100)


def _date_tag(src: Any) -> date:
    value = src.tags().get("ACQUISITION_DATE") or src.tags().get("datetime")
    return date.fromisoformat(str(value)[:10])


@functools.lru_cache(maxsize=1)
def load_patches() -> tuple[Patch, ...]:
    """The sample patches with their land-cover maps (read once)."""
    patches = []
    for s2_path in sorted(SAMPLE_IMAGERY.glob("*_s2.tif")):
        pid = s2_path.name.removesuffix("_s2.tif")
        with (
            rasterio.open(s2_path) as s2,
            rasterio.open(SAMPLE_IMAGERY / f"{pid}_s1.tif") as s1,
            rasterio.open(SAMPLE_IMAGERY / f"{pid}_dem.tif") as dem,
            rasterio.open(SAMPLE_LULC / f"{pid}.tif") as lulc,
        ):
            patches.append(
                Patch(
                    pid,
                    s2.crs,
                    s2.transform,
                    s2.width,
                    s2.height,
                    s2.read().astype(np.float64),
                    s1.read().astype(np.float64),
                    dem.read().astype(np.float64),
                    lulc.read(1),
                    _date_tag(s2),
                    _date_tag(s1),
                )
            )
    if not patches:
        raise RuntimeError(f"no sample imagery in {SAMPLE_IMAGERY}")
    return tuple(patches)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _crs_of(bounds: dict[str, Any]) -> CRS:
    text = str(bounds.get("properties", {}).get("crs", "http://www.opengis.net/def/crs/EPSG/0/4326"))
    if text.endswith("CRS84"):
        return CRS.from_epsg(4326)
    match = re.search(r"EPSG/0/(\d+)$", text)
    if not match:
        raise BadRequestError(f"Unsupported CRS {text!r}.")
    return CRS.from_epsg(int(match.group(1)))


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _in_range(day: date, data_filter: dict[str, Any]) -> bool:
    time_range = data_filter.get("timeRange")
    if not time_range:
        return True
    start, end = _parse_time(time_range["from"]), _parse_time(time_range["to"])
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return start <= moment <= end


class SentinelHubStandIn(StandIn):
    """Token endpoint + Process API over real sample rasters; see the module docstring.

    Args:
        clients: accepted OAuth clients {client_id: client_secret}.
        latency_s: extra time per request (makes concurrent requests overlap measurably).
        token_lifetime_s: `expires_in` of issued tokens.
        cloudy_observations: also serve the four cloudy Sentinel-2 observations of `standins.cloudy` (real cloud
            shapes over the Danish patch); `clear_cloudy_patch=False` leaves out that patch's clear scene.
        real_scenes: also serve the ten real Sentinel-2 scenes of eo-learn's Slovenian patch (`standins.cloudy.
            real_scenes`: real bands and clouds, real CLM, real SCL for the winter ones) on their own place and dates.
        orbit_tiles: give each orbit handed to the evalscript's `preProcessScenes` its `tiles` (one per observation,
            Sentinel-2 with `cloudCoverage`: the observation's cloud share); False gives orbits without `tiles`, as
            Sentinel Hub's Evalscript V3 page describes the `preProcessScenes` argument.

    With ORBIT or TILE mosaicking the samples (and the orbits `preProcessScenes` sees) come in date order, newest
    first, whatever the request's `mosaickingOrder`: an evalscript that wants another order sorts them itself. With
    SIMPLE mosaicking `mosaickingOrder` decides which observation is the sample (leastCC: least cloudy first).

    Processing units (`x-processingunits-spent`) follow Sentinel Hub's rules: output pixels / 512^2 (at least
    0.01) x input bands / 3 x 2 for FLOAT32 output; with ORBIT or TILE mosaicking each source's bands count once
    per data sample (observation) it delivers.
    """

    name = "sentinelhub-standin"

    def __init__(
        self,
        clients: dict[str, str] | None = None,
        latency_s: float = 0.0,
        token_lifetime_s: int = 3600,
        cloudy_observations: bool = False,
        clear_cloudy_patch: bool = True,
        real_scenes: bool = False,
        orbit_tiles: bool = True,
    ) -> None:
        super().__init__(latency_s=latency_s)
        self.real_scenes = real_scenes
        self.orbit_tiles = orbit_tiles
        self.scene_orders: list[dict[str, dict[str, list[str]]]] = []  # per request: source -> given/used dateFrom
        self.cloudy_observations = cloudy_observations
        self.clear_cloudy_patch = clear_cloudy_patch
        self.clients = clients or {"lulc-test-client": "lulc-test-secret"}
        self.token_lifetime_s = token_lifetime_s
        self.tokens: set[str] = set()
        self.payloads: list[dict[str, Any]] = []
        self._token_lock = threading.Lock()
        self.node = shutil.which("node")

    @property
    def token_url(self) -> str:
        return self.url + TOKEN_PATH

    def revoke_tokens(self) -> None:
        with self._token_lock:
            self.tokens.clear()

    # --- routing --------------------------------------------------------------------------------------------------

    def route(self, req: Recorded, fault: Fault | None) -> Reply:
        if req.method == "POST" and req.path == TOKEN_PATH:
            return self._token(req)
        if req.method == "POST" and req.path == PROCESS_PATH:
            return self._process(req)
        return self.error_reply(404, f"No route for {req.method} {req.path}", req.path)

    def error_reply(self, status: int, message: str, path: str) -> Reply:
        if path == TOKEN_PATH:
            error = "unauthorized_client" if status == 401 else "server_error" if status >= 500 else "invalid_request"
            return Reply(status, json.dumps({"error": error, "error_description": message}).encode())
        code = {400: "COMMON_BAD_PAYLOAD", 401: "COMMON_UNAUTHORIZED", 429: "RATE_LIMIT_EXCEEDED"}.get(
            status, "COMMON_EXCEPTION"
        )
        body = {"error": {"status": status, "reason": REASONS.get(status, "Error"), "message": message, "code": code}}
        return Reply(status, json.dumps(body).encode())

    def corrupt_body(self, reply: Reply) -> Reply:
        # a complete HTTP answer whose tar (or TIFF) stops half way, as a broken upstream would send it
        return Reply(reply.status, reply.body[: len(reply.body) // 2], reply.content_type, dict(reply.headers))

    # --- OAuth2 ---------------------------------------------------------------------------------------------------

    def _token(self, req: Recorded) -> Reply:
        form = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = req.headers.get("authorization", "")
        if auth.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        if form.get("grant_type") != "client_credentials":
            return Reply(400, json.dumps({"error": "unsupported_grant_type"}).encode())
        if client_id not in self.clients or self.clients[client_id] != secret:
            return self.error_reply(401, "Invalid client or Invalid client credentials", TOKEN_PATH)
        now = int(time.time())
        token = ".".join(
            [
                _b64({"alg": "none", "typ": "JWT"}),
                _b64({"azp": client_id, "sub": client_id, "iat": now, "exp": now + self.token_lifetime_s}),
                secrets.token_urlsafe(16),
            ]
        )
        with self._token_lock:
            self.tokens.add(token)
        body = {
            "access_token": token,
            "expires_in": self.token_lifetime_s,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": "email profile",
        }
        return Reply(200, json.dumps(body).encode())

    # --- Process API ----------------------------------------------------------------------------------------------

    def _process(self, req: Recorded) -> Reply:
        auth = req.headers.get("authorization", "")
        with self._token_lock:
            authorised = auth.startswith("Bearer ") and auth[7:] in self.tokens
        if not authorised:
            message = "You are not authorized! Please provide a valid access token to send along with the request."
            return self.error_reply(401, message, PROCESS_PATH)
        try:
            payload = json.loads(req.body)
            with self._lock:
                self.payloads.append(payload)
            return self._render(payload, req.headers.get("accept", ""))
        except BadRequestError as exc:
            return self.error_reply(400, str(exc), PROCESS_PATH)
        except (ValueError, KeyError, TypeError) as exc:
            return self.error_reply(400, f"Invalid request: {type(exc).__name__}: {exc}", PROCESS_PATH)

    def _grid(self, payload: dict[str, Any]) -> tuple[CRS, Affine, int, int]:
        bounds = payload["input"]["bounds"]
        if "bbox" not in bounds:
            raise BadRequestError("The stand-in supports input.bounds.bbox only.")
        minx, miny, maxx, maxy = (float(v) for v in bounds["bbox"])
        if maxx <= minx or maxy <= miny:
            raise BadRequestError("Invalid bbox: min must be smaller than max.")
        crs = _crs_of(bounds)
        output = payload.get("output", {})
        if "width" in output or "height" in output:
            width, height = int(output.get("width", 256)), int(output.get("height", 256))
        elif "resx" in output:
            width = round((maxx - minx) / float(output["resx"]))
            height = round((maxy - miny) / float(output["resy"]))
        else:
            width = height = 256
        for name, value in (("width", width), ("height", height)):
            if not 1 <= value <= 2500:
                raise BadRequestError(f"Parameter output.{name} must be between 1 and 2500 (got {value}).")
        transform = Affine((maxx - minx) / width, 0, minx, 0, -(maxy - miny) / height, maxy)
        return crs, transform, width, height

    def _render(self, payload: dict[str, Any], accept: str) -> Reply:
        crs, transform, width, height = self._grid(payload)
        data = payload["input"]["data"]
        if not data:
            raise BadRequestError("input.data must not be empty.")
        fusion = len(data) > 1
        sources: dict[str, list[dict[str, np.ndarray]]] = {}
        reflectance: dict[str, list[str]] = {}
        scenes: dict[str, dict[str, Any]] = {}
        for datum in data:
            ident = datum.get("id") or ("default" if not fusion else None)
            if ident is None:
                raise BadRequestError("With several input data sources every one needs an id.")
            sources[ident], reflectance[ident], scenes[ident] = self._source(datum, crs, transform, width, height)
        header, outputs = self._run_evalscript(
            payload["evalscript"], sources, reflectance, scenes, fusion, width * height
        )
        if header.get("scenes"):
            with self._lock:
                self.scene_orders.append(header["scenes"])
        declared = {o["id"]: o for o in header["outputs"]}
        responses = payload.get("output", {}).get("responses") or [
            {"identifier": "default", "format": {"type": "image/tiff"}}
        ]
        files: dict[str, bytes] = {}
        float32 = False
        for response in responses:
            ident = response["identifier"]
            if ident not in declared:
                raise BadRequestError(f"Output {ident} requested but missing from function setup()")
            fmt = response.get("format", {}).get("type", "image/tiff")
            if fmt != "image/tiff":
                raise BadRequestError(f"The stand-in renders image/tiff only (got {fmt}).")
            spec = declared[ident]
            float32 |= spec["sampleType"] == "FLOAT32"
            values = outputs[ident].reshape(spec["bands"], height, width)
            files[f"{ident}.tif"] = _tiff(values, spec["sampleType"], crs, transform)
        multi = header["setup"].get("mosaicking") in ("ORBIT", "TILE")
        input_bands = 0
        for spec in header["setup"]["input"]:
            ident = spec.get("datasource") if fusion else next(iter(sources))
            samples = header.get("samples", {}).get(ident or "", len(sources[ident or ""])) if multi else 1
            if multi and all(not obs["dataMask"].any() for obs in sources[ident or ""]):
                samples = 0  # nothing found: the placeholder observation is no data sample
            input_bands += samples * sum(1 for b in spec["bands"] if b != "dataMask")
        pu = max(0.01, width * height / (512 * 512)) * input_bands / 3 * (2 if float32 else 1)
        headers = {"x-processingunits-spent": repr(pu)}
        if len(files) == 1:
            return Reply(200, next(iter(files.values())), "image/tiff", headers)
        if "application/x-tar" not in accept and "application/tar" not in accept:
            raise BadRequestError(f"Several responses need Accept: application/x-tar (got {accept!r}).")
        return Reply(200, _tar(files), "application/x-tar", headers)

    def _source(
        self, datum: dict[str, Any], crs: CRS, transform: Affine, width: int, height: int
    ) -> tuple[list[dict[str, np.ndarray]], list[str], dict[str, Any]]:
        """One input's observations on the request grid (in its mosaickingOrder), band names with reflectance
        scaling, and its scenes: `from`/`to` of the time range and one orbit per observation (same order)."""
        kind = datum.get("type", "")
        data_filter = datum.get("dataFilter", {})
        patches = load_patches()
        if kind == "sentinel-2-l2a":
            max_cc = float(data_filter.get("maxCloudCoverage", 100))
            use = [p for p in patches if _in_range(p.s2_date, data_filter) and p.cloud_percent <= max_cc]
            names = [*S2_BANDS, "SCL", "CLM"]

            def stack(p: Patch) -> np.ndarray:
                scl = np.vectorize(ESRI_TO_SCL.get)(p.lulc).astype(np.float64)
                clm = (p.lulc == 8).astype(np.float64)
                return np.concatenate([p.s2, scl[None], clm[None]])

            reflect = list(S2_BANDS)
        elif kind == "sentinel-1-grd":
            use = [p for p in patches if _in_range(p.s1_date, data_filter)]
            names = ["VV", "VH"]

            def stack(p: Patch) -> np.ndarray:
                return np.power(10.0, p.s1 / 10.0)  # the service delivers linear backscatter

            reflect = []
        elif kind == "dem":
            use, names, reflect = list(patches), ["DEM"], []

            def stack(p: Patch) -> np.ndarray:
                return p.dem

        elif kind.startswith("byoc-"):
            if kind != f"byoc-{CORINE_COLLECTION}":
                raise BadRequestError(f"Collection {kind} not found.")
            use = list(patches) if any(_in_range(e, data_filter) for e in CORINE_EDITIONS) else []
            names, reflect = ["CLC"], []

            def stack(p: Patch) -> np.ndarray:
                return np.vectorize(ESRI_TO_CLC_INDEX.get)(p.lulc).astype(np.float64)[None]

        else:
            raise BadRequestError(f"Unknown collection type {kind!r}.")
        observations: list[tuple[float, date, np.ndarray, np.ndarray]] = []  # (cloud %, date, values, cover)
        for patch in use:
            if not _overlaps(patch, crs, transform, width, height):
                continue
            if kind == "sentinel-2-l2a" and patch.id == CLOUDY_PATCH and not self.clear_cloudy_patch:
                continue
            when = patch.s1_date if kind == "sentinel-1-grd" else patch.s2_date
            cc = patch.cloud_percent if kind == "sentinel-2-l2a" else 0.0
            observations.append(
                (*self._warp(stack(patch), patch.crs, patch.transform, crs, transform, width, height, cc), when)
            )
        if kind == "sentinel-2-l2a" and self.cloudy_observations:
            max_cc = float(data_filter.get("maxCloudCoverage", 100))
            for obs in cloudy.observations():
                if _in_range(obs.day, data_filter) and obs.cloud_percent <= max_cc:
                    src = np.concatenate([obs.s2, obs.scl[None], obs.clm[None]])
                    warped = self._warp(src, obs.crs, obs.transform, crs, transform, width, height, obs.cloud_percent)
                    observations.append((*warped, obs.day))
        if kind == "sentinel-2-l2a" and self.real_scenes:
            max_cc = float(data_filter.get("maxCloudCoverage", 100))
            for scene in cloudy.real_scenes():
                if _in_range(scene.day, data_filter) and scene.cloud_percent <= max_cc:
                    src = np.concatenate([scene.s2, scene.scl[None], scene.clm[None]])
                    cc, values, cover = self._warp(
                        src, scene.crs, scene.transform, crs, transform, width, height, scene.cloud_percent
                    )
                    data = self._warp(scene.data[None], scene.crs, scene.transform, crs, transform, width, height)[1]
                    observations.append((cc, values, cover * data[0], scene.day))
        order = data_filter.get("mosaickingOrder", "mostRecent")
        if order == "leastCC":
            observations.sort(key=lambda o: (o[0], o[3]))
        else:
            observations.sort(key=lambda o: o[3], reverse=order == "mostRecent")
        if not observations:
            observations = [(0.0, np.zeros((len(names), height, width)), np.zeros((height, width)), date.min)]
        out, orbits = [], []
        for n, (cc, values, cover, day) in enumerate(observations):
            arrays = {name: values[i] for i, name in enumerate(names)}
            arrays["dataMask"] = cover
            out.append(arrays)
            tile: dict[str, Any] = {"date": f"{day.isoformat()}T10:00:00Z", "shId": n + 1}
            if kind == "sentinel-2-l2a":
                tile["cloudCoverage"] = round(cc, 2)  # the observation's cloud share, as the service's tile metadata
            orbit: dict[str, Any] = {
                "dateFrom": f"{day.isoformat()}T00:00:00Z",
                "dateTo": f"{day.isoformat()}T23:59:59Z",
            }
            if self.orbit_tiles:
                orbit["tiles"] = [tile]
            orbits.append(orbit)
        time_range = data_filter.get("timeRange") or {}
        return out, reflect, {"from": time_range.get("from"), "to": time_range.get("to"), "orbits": orbits}

    @staticmethod
    def _warp(
        src: np.ndarray,
        src_crs: CRS,
        src_transform: Affine,
        crs: CRS,
        transform: Affine,
        width: int,
        height: int,
        cloud_percent: float = 0.0,
    ) -> tuple[float, np.ndarray, np.ndarray]:
        """One observation on the request grid: (cloud %, values, coverage 0/1) by nearest neighbour."""
        warped = np.zeros((src.shape[0], height, width), np.float64)
        cover = np.zeros((height, width), np.uint8)
        common = {
            "src_transform": src_transform,
            "src_crs": src_crs,
            "dst_transform": transform,
            "dst_crs": crs,
            "resampling": Resampling.nearest,
        }
        reproject(src, warped, **common)
        reproject(np.ones(src.shape[1:], np.uint8), cover, **common)
        return cloud_percent, warped, (cover > 0).astype(np.float64)

    def _run_evalscript(
        self,
        evalscript: str,
        sources: dict[str, list[dict[str, np.ndarray]]],
        reflectance: dict[str, list[str]],
        scenes: dict[str, dict[str, Any]],
        fusion: bool,
        npix: int,
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        if self.node is None:
            raise RuntimeError("the Sentinel Hub stand-in runs evalscripts with node, which is not installed")
        header = {
            "evalscript": evalscript,
            "npix": npix,
            "fusion": fusion,
            "sources": {
                k: {"bands": list(v[0]), "reflectance": reflectance[k], "observations": len(v), "scenes": scenes[k]}
                for k, v in sources.items()
            },
        }
        head = json.dumps(header).encode()
        chunks = [len(head).to_bytes(4, "little"), head]
        for observations in sources.values():
            for arrays in observations:
                chunks.extend(np.ascontiguousarray(a, dtype="<f8").tobytes() for a in arrays.values())
        proc = subprocess.run([self.node, str(RUNNER)], input=b"".join(chunks), capture_output=True, timeout=60)
        if proc.returncode != 0 or len(proc.stdout) < 4:
            raise RuntimeError(f"evalscript runner failed: {proc.stderr.decode()[-500:]}")
        out = proc.stdout
        hlen = int.from_bytes(out[:4], "little")
        result = json.loads(out[4 : 4 + hlen])
        if "error" in result:
            raise BadRequestError(f"Failed to evaluate script!\n{result['error']}")
        arrays, offset = {}, 4 + hlen
        for spec in result["outputs"]:
            n = spec["bands"] * npix
            arrays[spec["id"]] = np.frombuffer(out, "<f8", count=n, offset=offset)
            offset += n * 8
        return result, arrays


def _overlaps(patch: Patch, crs: CRS, transform: Affine, width: int, height: int) -> bool:
    w, s, e, n = rasterio.transform.array_bounds(height, width, transform)
    try:
        pw, ps, pe, pn = transform_bounds(crs, patch.crs, w, s, e, n, densify_pts=21)
    except Exception:
        return False
    bw, bs, be, bn = patch.bounds
    finite = all(math.isfinite(v) for v in (pw, ps, pe, pn))
    return finite and pw < be and pe > bw and ps < bn and pn > bs


def _tiff(values: np.ndarray, sample_type: str, crs: CRS, transform: Affine) -> bytes:
    if sample_type == "AUTO":
        dtype, top = "uint8", 255
        values = values * 255
    else:
        dtype, top = SAMPLE_TYPES[sample_type]
    if top is not None:
        values = np.clip(np.nan_to_num(np.rint(values)), 0, top)
    bands, height, width = values.shape
    profile = {
        "driver": "GTiff",
        "dtype": dtype,
        "count": bands,
        "width": width,
        "height": height,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "interleave": "pixel",
    }
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(values.astype(dtype))
        return bytes(mem.read())


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def main() -> None:
    """`PYTHONPATH=tests .venv/bin/python -m standins.sentinelhub --port 8701` — a stand-in to point the CLI at."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8701)
    parser.add_argument("--client-id", default="lulc-test-client")
    parser.add_argument("--client-secret", default="lulc-test-secret")
    parser.add_argument("--latency", type=float, default=0.0, help="Extra seconds per request.")
    parser.add_argument("--real-scenes", action="store_true", help="Also serve eo-learn's real cloudy scenes.")
    args = parser.parse_args()
    server = SentinelHubStandIn(
        {args.client_id: args.client_secret}, latency_s=args.latency, real_scenes=args.real_scenes
    )
    server.serve_until_interrupted(
        args.port,
        [
            "export OAUTHLIB_INSECURE_TRANSPORT=1  # plain http on 127.0.0.1",
            f"export SH_CLIENT_ID={args.client_id} SH_CLIENT_SECRET={args.client_secret}",
            "imagery.sentinelhub.base_url: {url}",
            "imagery.sentinelhub.token_url: {url}" + TOKEN_PATH,
        ],
    )


if __name__ == "__main__":
    main()
