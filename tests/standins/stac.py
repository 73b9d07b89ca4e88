"""A STAC API stand-in (Earth Search / Planetary Computer shape) with COG assets, on 127.0.0.1.

- `GET /` landing page (conformance: core, item-search, collections, query), `GET /collections`,
  `GET /collections/{id}`;
- `POST /search` and `GET /search` (collections, bbox, datetime interval, `query` `eo:cloud_cover` lte/lt/gte,
  limit) -> an ItemCollection of items shaped like Earth Search v1 `sentinel-2-l2a` (asset keys coastal, blue, ...,
  scl; properties datetime, eo:cloud_cover, s2:processing_baseline, earthsearch:boa_offset_applied, proj:epsg),
  Planetary Computer `sentinel-1-rtc` (vv, vh linear gamma0) and `cop-dem-glo-30` (data);
- `GET|HEAD /assets/{item}/{key}.tif`: single-band cloud-optimised GeoTIFFs (128 px blocks) answered with HTTP
  range requests (206 + Content-Range), as S3/Azure blob storage does;
- `GET /sas/token/{collection}` -> `{"msft:expiry", "token"}` as the Planetary Computer SAS endpoint; with
  `signed=True` asset requests without `sig=` in the query are refused with 403 (as Azure does).

Items come from the bundled sample (data/sample/imagery: one S2, S1 and DEM item per patch) and the four cloudy
observations of `standins.cloudy`. The Chilean patch is served as processing baseline 04.00 with the +1000 offset
put back (its sample values are harmonised), the Tanzanian one as 05.09 with `earthsearch:boa_offset_applied`.
The sample patches' SCL is derived from their ESRI land-cover maps as the Sentinel Hub stand-in does (water 6,
vegetation 4, built/bare 5, snow 11, cloud 9 — they have no cloud pixel).

Faults: the common ones per route (5xx, 429 + Retry-After, truncated bodies — a truncated asset is a range answer
cut short), plus `drop_assets` (items without some asset keys: a missing band) and a token route fault (signing).
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from standins import Fault, Recorded, Reply, StandIn, cloudy
from standins.cloudy import PATCH as CLOUDY_PATCH
from standins.cloudy import observations
from standins.sentinelhub import ESRI_TO_SCL, SAMPLE_LULC

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample" / "imagery"
S2_KEYS = [
    "coastal",
    "blue",
    "green",
    "red",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir",
    "nir08",
    "nir09",
    "swir16",
    "swir22",
]
S2_NAMES = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
BASELINES = {"433D_629L_3_1": ("04.00", False), "38D_378R_2_3": ("05.09", True)}
CONFORMS = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/item-search#query",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass
class _Item:
    id: str
    collection: str
    when: datetime
    bbox: list[float]
    properties: dict[str, Any]
    assets: dict[str, bytes] = field(default_factory=dict)  # key -> COG bytes


def _cog(array: np.ndarray, crs: CRS, transform: Affine, dtype: str, nodata: float | None) -> bytes:
    profile = {
        "driver": "COG",
        "dtype": dtype,
        "count": 1,
        "width": array.shape[1],
        "height": array.shape[0],
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "blocksize": 128,
        "compress": "deflate",
        "overviews": "none",
    }
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(array.astype(dtype), 1)
        return bytes(mem.read())


def _wgs84(crs: CRS, transform: Affine, h: int, w: int) -> list[float]:
    left, bottom, right, top = rasterio.transform.array_bounds(h, w, transform)
    return list(transform_bounds(crs, "EPSG:4326", left, bottom, right, top, densify_pts=21))


def _tag_date(path: Path) -> date:
    with rasterio.open(path) as src:
        return date.fromisoformat(str(src.tags()["ACQUISITION_DATE"])[:10])


def _s2_item(pid: str, day: date, s2: np.ndarray, scl: np.ndarray, crs: CRS, transform: Affine, cc: float) -> _Item:
    baseline, applied = BASELINES.get(pid, ("02.08", False))
    data = s2.copy()
    if baseline >= "04.00" and not applied:
        data = np.where(data > 0, data + 1000, 0)  # what the archive holds before harmonisation
    epsg = crs.to_epsg()
    item_id = f"S2B_{pid}_{day:%Y%m%d}_0_L2A"
    props = {
        "datetime": f"{day.isoformat()}T10:30:00Z",
        "platform": "sentinel-2b",
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": round(cc, 3),
        "s2:processing_baseline": baseline,
        "earthsearch:boa_offset_applied": applied,
        "proj:epsg": epsg,
    }
    item = _Item(item_id, "sentinel-2-l2a", datetime(day.year, day.month, day.day, 10, 30, tzinfo=UTC), [], props)
    item.bbox = _wgs84(crs, transform, *scl.shape)
    for k, key in enumerate(S2_KEYS):
        item.assets[key] = _cog(np.clip(data[k], 0, 65535), crs, transform, "uint16", 0)
    item.assets["scl"] = _cog(np.where(s2[0] > 0, scl, 0), crs, transform, "uint8", 0)
    return item


@functools.lru_cache(maxsize=4)
def build_items(clear_cloudy_patch: bool = True, real_scenes: bool = False) -> tuple[_Item, ...]:
    """Items of the sample patches and the cloudy observations (COGs built once per process); with
    `real_scenes`, also the five real winter scenes of eo-learn's Slovenian patch (real bands, real SCL; pixels
    without bands are 0 = nodata). The summer scenes are left out: they have no SCL, the only mask STAC offers."""
    items: list[_Item] = []
    for s2_path in sorted(SAMPLE.glob("*_s2.tif")):
        pid = s2_path.name.removesuffix("_s2.tif")
        with rasterio.open(s2_path) as src:
            s2, crs, transform = src.read().astype(np.float64), src.crs, src.transform
        if pid != CLOUDY_PATCH or clear_cloudy_patch:
            with rasterio.open(SAMPLE_LULC / f"{pid}.tif") as src:
                scl = np.vectorize(ESRI_TO_SCL.get)(src.read(1)).astype(np.float64)
            items.append(_s2_item(pid, _tag_date(s2_path), s2, scl, crs, transform, 0.0))
        s1_path = SAMPLE / f"{pid}_s1.tif"
        with rasterio.open(s1_path) as src:
            s1 = src.read().astype(np.float64)
        day = _tag_date(s1_path)
        s1_item = _Item(
            f"S1A_IW_GRDH_1SDV_{day:%Y%m%d}_{pid}_rtc",
            "sentinel-1-rtc",
            datetime(day.year, day.month, day.day, 17, 0, tzinfo=UTC),
            _wgs84(crs, transform, *s1.shape[1:]),
            {"datetime": f"{day.isoformat()}T17:00:00Z", "platform": "SENTINEL-1A", "sar:polarizations": ["VV", "VH"]},
        )
        for k, key in enumerate(("vv", "vh")):
            s1_item.assets[key] = _cog(np.power(10.0, s1[k] / 10.0), crs, transform, "float32", -32768.0)
        items.append(s1_item)
        with rasterio.open(SAMPLE / f"{pid}_dem.tif") as src:
            dem = src.read(1).astype(np.float64)
        dem_item = _Item(
            f"Copernicus_DSM_COG_10_{pid}_DEM",
            "cop-dem-glo-30",
            datetime(2021, 4, 22, tzinfo=UTC),
            _wgs84(crs, transform, *dem.shape),
            {"datetime": "2021-04-22T00:00:00Z", "platform": "TanDEM-X", "gsd": 30},
        )
        dem_item.assets["data"] = _cog(dem, crs, transform, "float32", -32767.0)
        items.append(dem_item)
    for obs in observations():
        items.append(_s2_item(CLOUDY_PATCH, obs.day, obs.s2, obs.scl, obs.crs, obs.transform, obs.cloud_percent))
    for scene in cloudy.scenes_in(cloudy.WINTER) if real_scenes else []:
        bands = np.where(scene.data > 0, scene.s2, 0)
        items.append(_s2_item("33TVL_SI", scene.day, bands, scene.scl, scene.crs, scene.transform, scene.cloud_percent))
    return tuple(items)


def _parse_interval(text: str) -> tuple[datetime, datetime]:
    def one(v: str, end: bool) -> datetime:
        if v in ("..", ""):
            return datetime.max.replace(tzinfo=UTC) if end else datetime.min.replace(tzinfo=UTC)
        moment = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    if "/" in text:
        a, b = text.split("/", 1)
        return one(a, False), one(b, True)
    moment = one(text, False)
    return moment, moment


class StacStandIn(StandIn):
    """STAC API + COG host + SAS token endpoint; see the module docstring.

    Args:
        signed: asset requests need a `sig=` query parameter from the token endpoint (Planetary Computer mode).
        clear_cloudy_patch: also serve the clear scene of the patch that has cloudy observations.
        drop_assets: asset keys left out of every item (a catalogue that lacks a band).
        real_scenes: also serve the five real winter scenes of `standins.cloudy` (real SCL).
    """

    name = "stac-standin"

    def __init__(
        self,
        signed: bool = False,
        clear_cloudy_patch: bool = True,
        drop_assets: set[str] | None = None,
        real_scenes: bool = False,
    ):
        super().__init__()
        self.signed = signed
        self.items = build_items(clear_cloudy_patch, real_scenes)
        self.drop_assets = set(drop_assets or ())
        self.tokens: set[str] = set()
        self.searches: list[dict[str, Any]] = []

    # --- routing --------------------------------------------------------------------------------------------------

    def route(self, req: Recorded, fault: Fault | None) -> Reply:
        path = req.path.rstrip("/") or "/"
        if req.method == "GET" and path == "/":
            return self._json(self._landing())
        if req.method == "GET" and path == "/collections":
            return self._json({"collections": [self._collection(c) for c in self._collection_ids()], "links": []})
        if req.method == "GET" and path.startswith("/collections/"):
            cid = path.split("/")[2]
            if cid not in self._collection_ids():
                return self.error_reply(404, f"Collection {cid} does not exist", req.path)
            return self._json(self._collection(cid))
        if path == "/search" and req.method in ("GET", "POST"):
            params = json.loads(req.body or b"{}") if req.method == "POST" else self._query_params(req.query)
            return self._search(params, fault)
        match = re.fullmatch(r"/assets/([^/]+)/([^/]+)\.tif", path)
        if match and req.method in ("GET", "HEAD"):
            return self._asset(req, match.group(1), match.group(2))
        match = re.fullmatch(r"/sas/token/([^/]+)", path)
        if match and req.method == "GET":
            return self._token(match.group(1))
        return self.error_reply(404, f"No route for {req.method} {req.path}", req.path)

    def error_reply(self, status: int, message: str, path: str) -> Reply:
        if path.startswith("/assets/"):  # blob storage answers XML
            body = f"<?xml version='1.0'?><Error><Code>{status}</Code><Message>{message}</Message></Error>"
            return Reply(status, body.encode(), "application/xml")
        code = {400: "BadRequest", 404: "NotFoundError", 429: "TooManyRequests"}.get(status, "ServerError")
        return Reply(status, json.dumps({"code": code, "description": message}).encode())

    # --- API ------------------------------------------------------------------------------------------------------

    def _json(self, body: Any, status: int = 200, content_type: str = "application/json") -> Reply:
        return Reply(status, json.dumps(body).encode(), content_type)

    def _collection_ids(self) -> list[str]:
        return sorted({it.collection for it in self.items})

    def _landing(self) -> dict[str, Any]:
        root = self.url
        return {
            "type": "Catalog",
            "id": "earth-search-standin",
            "title": "Earth Search stand-in",
            "description": "STAC API stand-in over the lulc sample rasters",
            "stac_version": "1.0.0",
            "conformsTo": CONFORMS,
            "links": [
                {"rel": "self", "type": "application/json", "href": root},
                {"rel": "root", "type": "application/json", "href": root},
                {"rel": "data", "type": "application/json", "href": f"{root}/collections"},
                {"rel": "search", "type": "application/geo+json", "href": f"{root}/search", "method": "GET"},
                {"rel": "search", "type": "application/geo+json", "href": f"{root}/search", "method": "POST"},
            ],
        }

    def _collection(self, cid: str) -> dict[str, Any]:
        return {
            "type": "Collection",
            "id": cid,
            "stac_version": "1.0.0",
            "description": f"{cid} (stand-in)",
            "license": "proprietary",
            "extent": {
                "spatial": {"bbox": [[-180, -90, 180, 90]]},
                "temporal": {"interval": [["2015-06-27T10:25:31Z", None]]},
            },
            "links": [{"rel": "self", "href": f"{self.url}/collections/{cid}"}],
        }

    @staticmethod
    def _query_params(query: str) -> dict[str, Any]:
        raw = {k: v[0] for k, v in parse_qs(query).items()}
        params: dict[str, Any] = {}
        if "collections" in raw:
            params["collections"] = raw["collections"].split(",")
        if "bbox" in raw:
            params["bbox"] = [float(v) for v in raw["bbox"].split(",")]
        for key in ("datetime", "limit"):
            if key in raw:
                params[key] = raw[key]
        if "query" in raw:
            params["query"] = json.loads(raw["query"])
        return params

    def _item_json(self, item: _Item) -> dict[str, Any]:
        w, s, e, n = item.bbox
        assets = {}
        for key in item.assets:
            if key in self.drop_assets:
                continue
            asset: dict[str, Any] = {
                "href": f"{self.url}/assets/{item.id}/{key}.tif",
                "type": COG_TYPE,
                "roles": ["data"],
            }
            if key in S2_KEYS:
                asset["eo:bands"] = [{"name": S2_NAMES[S2_KEYS.index(key)]}]
                asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": 0}]
            assets[key] = asset
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [],
            "id": item.id,
            "collection": item.collection,
            "bbox": item.bbox,
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "properties": item.properties,
            "assets": assets,
            "links": [
                {"rel": "self", "href": f"{self.url}/collections/{item.collection}/items/{item.id}"},
                {"rel": "collection", "href": f"{self.url}/collections/{item.collection}"},
            ],
        }

    def _search(self, params: dict[str, Any], fault: Fault | None) -> Reply:
        with self._lock:
            self.searches.append(params)
        collections = params.get("collections") or self._collection_ids()
        unknown = [c for c in collections if c not in self._collection_ids()]
        if unknown:
            return self.error_reply(404, f"Collections {unknown} do not exist", "/search")
        found = []
        for item in self.items:
            if item.collection not in collections:
                continue
            if "bbox" in params:
                w, s, e, n = (float(v) for v in params["bbox"])
                iw, is_, ie, in_ = item.bbox
                if not (w < ie and e > iw and s < in_ and n > is_):
                    continue
            if "datetime" in params:
                start, end = _parse_interval(str(params["datetime"]))
                if not start <= item.when <= end:
                    continue
            if not self._matches(item.properties, params.get("query") or {}):
                continue
            found.append(self._item_json(item))
        if fault is not None and fault.kind == "empty":
            found = []
        limit = int(params.get("limit") or 100)
        body = {
            "type": "FeatureCollection",
            "features": found[:limit],
            "links": [],
            "numberMatched": len(found),
            "numberReturned": len(found[:limit]),
            "context": {"limit": limit, "matched": len(found), "returned": len(found[:limit])},
        }
        return self._json(body, content_type="application/geo+json")

    @staticmethod
    def _matches(props: dict[str, Any], query: dict[str, Any]) -> bool:
        ops = {
            "lte": lambda a, b: a <= b,
            "lt": lambda a, b: a < b,
            "gte": lambda a, b: a >= b,
            "eq": lambda a, b: a == b,
        }
        for name, cond in query.items():
            value = props.get(name)
            for op, ref in cond.items():
                if value is None or op not in ops or not ops[op](value, ref):
                    return False
        return True

    def _token(self, collection: str) -> Reply:
        expiry = datetime.now(UTC) + timedelta(hours=1)
        sig = secrets.token_urlsafe(12)
        with self._lock:
            self.tokens.add(sig)
        token = f"st={datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}&se={expiry:%Y-%m-%dT%H:%M:%SZ}&sp=rl&sr=c&sig={sig}"
        return self._json({"msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"), "token": token})

    def _asset(self, req: Recorded, item_id: str, key: str) -> Reply:
        if self.signed:
            sig = parse_qs(req.query).get("sig", [""])[0]
            with self._lock:
                ok = sig in self.tokens
            if not ok:
                return self.error_reply(
                    403, "Server failed to authenticate the request (no valid SAS token).", req.path
                )
        item = next((it for it in self.items if it.id == item_id), None)
        if item is None or key not in item.assets or key in self.drop_assets:
            return self.error_reply(404, "The specified blob does not exist.", req.path)
        data = item.assets[key]
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{hash(data) & 0xFFFFFFFF:x}"'}
        rng = req.headers.get("range", "")
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
        if req.method == "GET" and match:
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return Reply(416, b"", "application/octet-stream", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return Reply(206, data[start : end + 1], "image/tiff", headers)
        return Reply(200, data, "image/tiff", headers)


def main() -> None:
    """`PYTHONPATH=tests .venv/bin/python -m standins.stac --port 8703` — a STAC API to point `imagery.stac.url` at."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8703)
    parser.add_argument("--signed", action="store_true", help="Planetary Computer mode: assets need a SAS token.")
    parser.add_argument("--real-scenes", action="store_true", help="Also serve eo-learn's real winter scenes.")
    args = parser.parse_args()
    server = StacStandIn(signed=args.signed, real_scenes=args.real_scenes)
    server.serve_until_interrupted(
        args.port,
        ["imagery.store: stac", "imagery.stac.url: {url}", "imagery.stac.sign_url: {url}/sas/token  # with --signed"],
    )


if __name__ == "__main__":
    main()
