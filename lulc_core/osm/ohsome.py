"""The ohsome API as an OSM label source (`elements/geometry`, time-aware), through ohsome-py's `OhsomeClient`.

One request per filter and bbox: `(<filter>) and geometry:polygon` at the label date, `properties=tags`, clipped to
the bbox (`clipGeometry=true`) or whole (`clip=False`: labelling asks once per tile for every class of a label set,
their filters joined with `or`, and classifies the whole polygons locally — `lulc_core.labelling`). Results are
cached per (API URL, bbox, date, filter, clipping) — the filter text is the label set's, so a changed label set
never reuses a stale entry.

Errors follow `lulc_core.http`, the policy every remote source shares. ohsome-py's own urllib3 retries are
switched off (`Retry(0, read=False)`, requests' default) and a client timeout is added (ohsome-py sends none);
`OhsomeException`s are mapped back to what happened (HTTP status and message, timeout, broken body) so the one
policy decides. A 413 "query too large" splits the bbox in four and retries each part (down to `max_split_depth`
levels); the parts of a polygon cut by the split are merged again by OSM id.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import shapely
from ohsome import OhsomeClient, OhsomeException
from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from shapely.geometry import shape
from urllib3 import Retry

from lulc_core.config import OHSOME_REQUESTS_PER_SECOND
from lulc_core.errors import InputError, TooLargeError
from lulc_core.geo import BBox
from lulc_core.http import (
    AttemptError,
    CorruptResponseError,
    HttpPolicy,
    HttpStatusError,
    RateLimiter,
    RequestRejectedError,
    ResponseCache,
    RetryPolicy,
    classify,
    parse_retry_after,
    request_key,
)
from lulc_core.osm._frames import WGS84, empty_frame, polygonal
from lulc_core.osm.filter import parse_filter

log = logging.getLogger(__name__)

SERVICE = "ohsome"
USER_AGENT = "lulc/0.1"


class _TimeoutAdapter(HTTPAdapter):
    """requests adapter with a default timeout and no retries of its own."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(max_retries=Retry(0, read=False))
        self.timeout_s = timeout_s

    def send(  # type: ignore[override]
        self, request: PreparedRequest, stream: bool = False, timeout: Any = None, **kwargs: Any
    ) -> Response:
        return super().send(request, stream=stream, timeout=self.timeout_s if timeout is None else timeout, **kwargs)


def attempt_error(exc: OhsomeException) -> AttemptError:
    """What an `OhsomeException` stands for: an HTTP status with the API's message, a transport or a body problem."""
    response = getattr(exc, "response", None)
    code = exc.error_code if isinstance(exc.error_code, int) and exc.error_code >= 400 else None
    if response is not None and response.status_code < 400:
        # a 2xx body that is not valid JSON: the API streams GeoJSON and, when its timeout strikes mid-stream,
        # appends an error object (ohsome-py extracts its status, e.g. 413); otherwise the body was cut short
        if code is not None and code not in (440, 500):
            return HttpStatusError(code, str(exc.message or ""))
        return CorruptResponseError(str(exc.message or "broken response body"))
    status = code if code is not None and code != 440 else None
    if status is None and response is not None and response.status_code >= 400:
        status = response.status_code
    if status is not None:
        retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
        return HttpStatusError(status, str(exc.message or ""), retry_after=retry_after)
    failure = classify(exc)
    if failure is not None:
        return failure
    return CorruptResponseError(str(exc.message or exc))


def _split(bbox: BBox) -> list[BBox]:
    mx, my = (bbox.west + bbox.east) / 2, (bbox.south + bbox.north) / 2
    return [
        BBox(west=bbox.west, south=bbox.south, east=mx, north=my),
        BBox(west=mx, south=bbox.south, east=bbox.east, north=my),
        BBox(west=bbox.west, south=my, east=mx, north=bbox.north),
        BBox(west=mx, south=my, east=bbox.east, north=bbox.north),
    ]


class OhsomeSource:
    """OSM polygons from the ohsome API, valid at a date (the `OsmSource` interface).

    Args:
        url: API base URL, e.g. "https://api.ohsome.org/v1".
        timeout_s: client timeout per request (also sent as ohsome's server-side `timeout`).
        max_retries: retries for 429/5xx/timeouts/broken bodies.
        cache_dir: response cache directory (None: no cache).
        backoff_s: first retry wait (doubles per retry).
        max_split_depth: how often a 413 "too large" bbox may be split in four.
        max_retry_after_s: cap on a Retry-After wait.
        max_requests_per_second: requests started per second across all threads (politeness to the API).
    """

    def __init__(
        self,
        url: str = "https://api.ohsome.org/v1",
        timeout_s: float = 60.0,
        max_retries: int = 5,
        cache_dir: Path | None = None,
        *,
        backoff_s: float = 1.0,
        max_split_depth: int = 3,
        max_retry_after_s: float = 120.0,
        max_requests_per_second: float = OHSOME_REQUESTS_PER_SECOND,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError("labels.ohsome_url", f"{url!r} is not an http(s) URL", "e.g. https://api.ohsome.org/v1")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_split_depth = max_split_depth
        self.http = HttpPolicy(
            SERVICE,
            RetryPolicy(max_retries=max_retries, backoff_s=backoff_s, max_retry_after_s=max_retry_after_s),
            RateLimiter(per_second=max_requests_per_second),
        )
        self.cache = ResponseCache(Path(cache_dir) / "ohsome") if cache_dir is not None else None
        self._local = threading.local()
        self._metadata: dict[str, Any] | None = None
        self._meta_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"OhsomeSource({self.url!r})"

    def _client(self) -> OhsomeClient:
        """One ohsome-py client per thread (a client keeps per-request state), with timeout and no retries."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = OhsomeClient(base_api_url=self.url, log=False, user_agent=USER_AGENT, retry=Retry(0, read=False))
            session = client._session()  # ohsome-py sets no timeout: mount an adapter that does
            adapter = _TimeoutAdapter(self.timeout_s)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.client = client
        return client

    def _call(self, fn: Any, what: str) -> Any:
        def attempt() -> Any:
            try:
                return fn()
            except OhsomeException as exc:
                raise attempt_error(exc) from exc

        return self.http.call(attempt, what=what)

    # --- metadata -----------------------------------------------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The API's `/metadata` (temporal extent, version), fetched once."""
        with self._meta_lock:
            if self._metadata is None:
                client = self._client()

                def fetch() -> dict[str, Any]:
                    client.__dict__.pop("metadata", None)  # ohsome-py caches it with functools.cached_property
                    return dict(client.metadata)

                self._metadata = self._call(fetch, "GET /metadata")
            return self._metadata

    def label_date(self, when: date) -> date:
        """`when` limited to the API's data extent (later dates use the newest data, with a warning).

        Raises:
            InputError: `when` is before the start of the API's data.
        """
        extent = self.metadata().get("extractRegion", {}).get("temporalExtent", {})
        first = _day(extent.get("fromTimestamp"))
        last = _day(extent.get("toTimestamp"))
        if first is not None and when < first:
            raise InputError("when", f"{when} is before the ohsome data start {first}", "use a later label date")
        if last is not None and when > last:
            log.warning("ohsome data ends %s; labels for %s use that date", last, when)
            return last
        return when

    # --- the OsmSource interface ----------------------------------------------------------------------------------

    def features(self, bbox: BBox, when: date, osm_filter: str, *, clip: bool = True) -> gpd.GeoDataFrame:
        """Polygons matching `osm_filter` at `when` that intersect `bbox` (clipped to it with `clip`), EPSG:4326.

        Columns: `osm_id`, `osm_type`, the tag keys the filter reads, `geometry` (empty frame when none match).

        Raises:
            FilterSyntaxError: the filter does not parse.
            TooLargeError: still "too large" (413) after splitting the bbox `max_split_depth` times.
            RequestRejectedError / UpstreamError: the API refused the request, or kept failing.
        """
        keys = sorted(parse_filter(osm_filter).keys())
        query = f"({osm_filter}) and geometry:polygon"
        try:
            features, split = self._query(bbox, when, query, clip, 0)
        except RequestRejectedError as exc:
            # 404: the date is outside the API's data; use the newest data for a later date (warned)
            if exc.upstream_status != 404 or (day := self.label_date(when)) == when:
                raise
            features, split = self._query(bbox, day, query, clip, 0)
        return self._frame(features, keys, merge=split, clip=clip)

    def _query(self, bbox: BBox, day: date, query: str, clip: bool, depth: int) -> tuple[list[dict[str, Any]], bool]:
        try:
            return self._request(bbox, day, query, clip), False
        except RequestRejectedError as exc:
            if exc.upstream_status != 413:
                raise
            if depth >= self.max_split_depth:
                raise TooLargeError(
                    "bbox",
                    f"ohsome still answers 413 (too large) for {bbox.as_tuple()} after {depth} splits: "
                    f"{exc.server_message}",
                    "use smaller tiles or a simpler filter",
                ) from exc
            log.info("ohsome: query too large for %s; splitting in 4 (depth %d)", bbox.as_tuple(), depth + 1)
            parts: list[dict[str, Any]] = []
            for sub in _split(bbox):
                parts.extend(self._query(sub, day, query, clip, depth + 1)[0])
            return parts, True

    def _request(self, bbox: BBox, day: date, query: str, clip: bool = True) -> list[dict[str, Any]]:
        bounds = ",".join(f"{v:.7f}" for v in bbox.as_tuple())
        parts = (self.url, bounds, day.isoformat(), query) + (() if clip else ("whole",))
        key = request_key("ohsome-elements-geometry", *parts)

        def download() -> bytes:
            client = self._client()
            try:
                response = client.post(
                    endpoint="elements/geometry",
                    bboxes=bounds,
                    time=day.isoformat(),
                    filter=query,
                    properties="tags",
                    clipGeometry="true" if clip else "false",
                    timeout=max(1, int(self.timeout_s)),
                )
            except OhsomeException as exc:
                raise attempt_error(exc) from exc
            return json.dumps(response.data).encode()

        def decode(body: bytes) -> list[dict[str, Any]]:
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise CorruptResponseError(f"not JSON: {exc}") from exc
            if not isinstance(data, dict) or not isinstance(data.get("features"), list):
                raise CorruptResponseError("not a GeoJSON FeatureCollection")
            return list(data["features"])

        what = f"elements/geometry bbox {bounds} at {day}"
        return self.http.fetch_cached(
            self.cache,
            key,
            download,
            decode,
            what=what,
            info={"bbox": bounds, "time": day, "filter": query, "clip": clip},
        )

    @staticmethod
    def _frame(features: Iterable[dict[str, Any]], keys: list[str], merge: bool, clip: bool = True) -> gpd.GeoDataFrame:
        rows: list[dict[str, Any]] = []
        geoms: list[Any] = []
        for feature in features:
            geom = polygonal(shape(feature["geometry"])) if feature.get("geometry") else None
            if geom is None:
                continue
            props = feature.get("properties") or {}
            osm_id = str(props.get("@osmId", f"feature/{len(rows)}"))
            prefix = osm_id.split("/", 1)[0] if "/" in osm_id else ""
            osm_type = str(
                props.get("@osmType") or (prefix if prefix in ("node", "way", "relation") else "way")
            ).lower()
            rows.append({"osm_id": osm_id, "osm_type": osm_type, **{k: props.get(k) for k in keys}})
            geoms.append(geom)
        columns = ["osm_id", "osm_type", *keys]
        if not rows:
            return empty_frame(columns)
        frame = gpd.GeoDataFrame(pd.DataFrame(rows, columns=columns), geometry=geoms, crs=WGS84)
        if merge and not clip:  # a whole polygon answered by several parts of a 413 split: once
            frame = frame.drop_duplicates("osm_id")
        elif merge and frame["osm_id"].duplicated().any():  # polygons cut by a 413 split: one row per OSM element
            merged = frame.groupby("osm_id", sort=False, as_index=False).agg(
                {**{c: "first" for c in columns if c != "osm_id"}, "geometry": lambda g: shapely.union_all(list(g))}
            )
            frame = gpd.GeoDataFrame(merged, geometry="geometry", crs=WGS84)
        return frame.reset_index(drop=True)


def _day(value: Any) -> date | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).date()
    except ValueError:
        return None
