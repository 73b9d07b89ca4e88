"""An ohsome API stand-in: `POST /v1/elements/geometry` and `GET /v1/metadata`, on 127.0.0.1.

Bodies follow the recorded exchanges in ../shared/data/ohsome (vcrpy cassettes of ohsome-py against API 1.10.1):
a GeoJSON FeatureCollection with `attribution` and `apiVersion`, features carrying `@osmId`,
`@snapshotTimestamp` and — with `properties=tags` — the OSM tags; errors as `{"timestamp", "status", "message",
"requestUrl"}` (400 bad parameter, 404 time outside the data, 413 "query too large").

Features come from real extracts: the project's sample (`data/sample/osm/sample_osm.geojson`, tags as columns,
lined up with the sample imagery) and `../shared/data/osm/kouvola.osm.pbf` (areas assembled with pyosmium). The
filter is evaluated per feature with the project's own filter engine (`lulc_core.osm.filter.parse_filter`), and
geometries are clipped to the bbox when `clipGeometry` is true (the default), keeping polygonal parts.

Besides the shared fault plan (plus `Fault("stream_timeout")`: a 200 body cut mid-stream with the 413 error
object appended, as the real API does when its timeout strikes while streaming), `max_features` makes a query matching more features than that answer 413, as the
real API does when a query exceeds its timeout — which drives the client's bbox splitting.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box, mapping

from lulc_core.osm.filter import FilterSyntaxError, geometry_type_of, parse_filter
from standins import Fault, Recorded, Reply, StandIn

REPO = Path(__file__).resolve().parents[2]
SAMPLE_OSM = REPO / "data" / "sample" / "osm" / "sample_osm.geojson"
KOUVOLA_PBF_PARTS = ("data", "osm", "kouvola.osm.pbf")
KOUVOLA_PBF = REPO.parent / "shared" / Path(*KOUVOLA_PBF_PARTS)
"""Real OSM extract of Kouvola beside the repository (../shared); served too when present."""
DEFAULT_EXTRACTS = (SAMPLE_OSM, KOUVOLA_PBF) if KOUVOLA_PBF.is_file() else (SAMPLE_OSM,)
API_VERSION = "1.10.1"
ATTRIBUTION = {"url": "https://ohsome.org/copyrights", "text": "© OpenStreetMap contributors"}
DATA_START = "2007-10-08T00:00:00Z"
TOO_LARGE = (
    "The given query is too large in respect to the given timeout. Please use a smaller region and/or coarser "
    "time period."
)
META = frozenset({"osm_id", "osm_type", "@osmId", "@osmType", "geometry", "tags"})


@functools.lru_cache(maxsize=8)
def load_extract(path: Path) -> tuple[tuple[str, str, dict[str, str], Any], ...]:
    """(osm id, osm type, tags, geometry) of every polygonal feature of a GeoJSON/GeoPackage or .osm.pbf extract."""
    if path.name.endswith(".pbf"):
        return _load_pbf(path)
    frame = gpd.read_file(path).to_crs("EPSG:4326")
    out = []
    for i, row in enumerate(frame.itertuples(index=False)):
        record = row._asdict()
        tags = {k: str(v) for k, v in record.items() if k not in META and v is not None and v == v}
        osm_id = str(record.get("osm_id") or f"way/{i}")
        osm_type = osm_id.split("/", 1)[0] if osm_id.split("/", 1)[0] in ("node", "way", "relation") else "way"
        out.append((osm_id, osm_type, tags, row.geometry))
    return tuple(out)


def _load_pbf(path: Path) -> tuple[tuple[str, str, dict[str, str], Any], ...]:
    import osmium

    factory = osmium.geom.WKBFactory()
    out = []
    processor = osmium.FileProcessor(str(path)).with_areas().with_filter(osmium.filter.EntityFilter(osmium.osm.AREA))
    for obj in processor:
        if not obj.is_area() or len(obj.tags) == 0:
            continue
        try:
            geom = shapely.from_wkb(factory.create_multipolygon(obj))
        except RuntimeError:
            continue
        kind = "way" if obj.from_way() else "relation"
        out.append((f"{kind}/{obj.orig_id()}", kind, {t.k: t.v for t in obj.tags}, shapely.make_valid(geom)))
    return tuple(out)


def _polygonal(geom: Any) -> Any:
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0]
    return shapely.union_all(parts) if parts else None


class BadParameterError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OhsomeStandIn(StandIn):
    """elements/geometry + metadata over real OSM extracts; see the module docstring.

    Args:
        extracts: GeoJSON/GeoPackage/.osm.pbf files served as one database.
        latency_s: extra time per request.
        max_features: answer 413 when a query matches more features than this (None: never).
        data_end: end of the data's temporal extent (default: now).
    """

    name = "ohsome-standin"

    def __init__(
        self,
        extracts: Sequence[Path] = DEFAULT_EXTRACTS,
        latency_s: float = 0.0,
        max_features: int | None = None,
        data_end: datetime | None = None,
    ) -> None:
        super().__init__(latency_s=latency_s)
        self.extracts = [Path(p) for p in extracts]
        self.max_features = max_features
        self.data_end = data_end
        self.forms: list[dict[str, str]] = []
        self._index: tuple[list[tuple[str, str, dict[str, str], Any]], Any] | None = None

    @property
    def api_url(self) -> str:
        return self.url + "/v1"

    def _features(self) -> tuple[list[tuple[str, str, dict[str, str], Any]], Any]:
        with self._lock:
            if self._index is None:
                rows = [f for path in self.extracts for f in load_extract(path)]
                self._index = (rows, shapely.STRtree([r[3] for r in rows]))
            return self._index

    def _end(self) -> datetime:
        return self.data_end or datetime.now(UTC).replace(microsecond=0)

    # --- routing --------------------------------------------------------------------------------------------------

    def route(self, req: Recorded, fault: Fault | None) -> Reply:
        if req.method == "GET" and req.path == "/v1/metadata":
            return self._json(200, self._metadata())
        if req.method == "POST" and req.path == "/v1/elements/geometry":
            try:
                return self._geometry(req, fault)
            except BadParameterError as exc:
                return self.error_reply(exc.status, str(exc), req.path)
        return self.error_reply(404, f"Not Found: {req.method} {req.path}", req.path)

    def error_reply(self, status: int, message: str, path: str) -> Reply:
        if status == 413 and message == "Payload Too Large":
            message = TOO_LARGE
        body = {
            "timestamp": datetime.now(UTC).isoformat(),
            "status": status,
            "message": message,
            "requestUrl": f"https://api.ohsome.org{path}",
        }
        return Reply(status, json.dumps(body, indent=2).encode(), "application/json")

    def _json(self, status: int, body: dict[str, Any], content_type: str = "application/json") -> Reply:
        return Reply(status, json.dumps(body, indent=2, ensure_ascii=False).encode(), content_type)

    def _metadata(self) -> dict[str, Any]:
        return {
            "attribution": ATTRIBUTION,
            "apiVersion": API_VERSION,
            "timeout": 600.0,
            "extractRegion": {
                "spatialExtent": mapping(box(-180, -90, 180, 90)),
                "temporalExtent": {
                    "fromTimestamp": DATA_START,
                    "toTimestamp": self._end().strftime("%Y-%m-%dT%H:%MZ"),
                },
                "replicationSequenceNumber": 98190,
            },
        }

    # --- elements/geometry ----------------------------------------------------------------------------------------

    def _geometry(self, req: Recorded, fault: Fault | None) -> Reply:
        form = {k: v[0] for k, v in parse_qs(req.body.decode(), keep_blank_values=True).items()}
        with self._lock:
            self.forms.append(form)
        bbox = self._bbox(form.get("bboxes", ""))
        when = self._time(form.get("time", ""))
        try:
            expr = parse_filter(form.get("filter") or "")
        except FilterSyntaxError as exc:
            raise BadParameterError(400, f"Encountered the following exception: {exc}") from exc
        properties = {p.strip() for p in form.get("properties", "").split(",") if p.strip()}
        clip = form.get("clipGeometry", "true").lower() not in ("false", "no")
        features: list[dict[str, Any]] = []
        if fault is None or fault.kind != "empty":
            rows, tree = self._features()
            window = box(*bbox)
            candidates = [rows[i] for i in np.sort(tree.query(window, predicate="intersects"))]
            hits = expr.mask(  # the whole (unclipped) geometries, as the API evaluates area:/length: selectors
                pd.DataFrame.from_records([tags for _, _, tags, _ in candidates], index=range(len(candidates))),
                [geometry_type_of(geom.geom_type) for *_, geom in candidates],
                [osm_type for _, osm_type, _, _ in candidates],
                osm_ids=[osm_id for osm_id, *_ in candidates],
                geometries=[geom for *_, geom in candidates],
            )
            matched = [row for row, hit in zip(candidates, hits, strict=True) if hit]
            if self.max_features is not None and len(matched) > self.max_features:
                raise BadParameterError(413, TOO_LARGE)
            for osm_id, osm_type, tags, geom in matched:
                shown = _polygonal(shapely.intersection(geom, window)) if clip else geom
                if shown is None:
                    continue
                props: dict[str, Any] = {"@osmId": osm_id, "@snapshotTimestamp": when}
                if "metadata" in properties:
                    props.update({"@osmType": osm_type.upper(), "@version": 1})
                if "tags" in properties:
                    props.update(tags)
                features.append({"type": "Feature", "geometry": mapping(shown), "properties": props})
        body = {
            "attribution": ATTRIBUTION,
            "apiVersion": API_VERSION,
            "type": "FeatureCollection",
            "features": features,
        }
        reply = self._json(200, body, "application/geo+json;charset=utf-8")
        if fault is not None and fault.kind == "stream_timeout":
            # the real API streams features and, when its timeout strikes, appends an error object to the 200 body
            error = {"timestamp": datetime.now(UTC).isoformat(), "status": 413, "message": TOO_LARGE}
            tail = json.dumps(error, indent=2).replace('": ', '" : ').encode()
            reply = Reply(200, reply.body[: len(reply.body) // 2] + b"\n" + tail, reply.content_type)
        return reply

    @staticmethod
    def _bbox(text: str) -> tuple[float, float, float, float]:
        if not text or "|" in text:
            raise BadParameterError(400, "The stand-in needs exactly one bbox in 'bboxes' (lon1,lat1,lon2,lat2).")
        values = text.split(":", 1)[-1].split(",")
        try:
            w, s, e, n = (float(v) for v in values)
        except ValueError as exc:
            raise BadParameterError(400, f"The provided boundary parameter {text!r} is invalid.") from exc
        if e <= w or n <= s:
            raise BadParameterError(400, "The provided boundary parameter does not fit its format.")
        return w, s, e, n

    def _time(self, text: str) -> str:
        if not text or "," in text or "/" in text:
            raise BadParameterError(400, "The stand-in supports exactly one timestamp in 'time'.")
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as exc:
            raise BadParameterError(400, f"The provided time parameter {text!r} is not ISO-8601 conform.") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        start = datetime.fromisoformat(DATA_START.replace("Z", "+00:00"))
        if not start <= moment <= self._end():
            raise BadParameterError(
                404,
                f"The given time parameter is not completely within the timeframe ({DATA_START} to "
                f"{self._end().strftime('%Y-%m-%dT%H:%MZ')}) of the database.",
            )
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    """`PYTHONPATH=tests .venv/bin/python -m standins.ohsome --port 8702` — a stand-in to point the CLI at."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8702)
    parser.add_argument("--extract", type=Path, action="append", help="Extracts to serve (default: sample + Kouvola).")
    parser.add_argument("--max-features", type=int, default=None, help="Answer 413 above this many features.")
    parser.add_argument("--latency", type=float, default=0.0, help="Extra seconds per request.")
    args = parser.parse_args()
    server = OhsomeStandIn(args.extract or DEFAULT_EXTRACTS, latency_s=args.latency, max_features=args.max_features)
    server.serve_until_interrupted(args.port, ["labels.ohsome_url: {url}/v1"])


if __name__ == "__main__":
    main()
