"""A local OSM extract as a label source: GeoJSON/GeoPackage/GeoParquet with tags, or `.osm.pbf` via pyosmium.

Vector files carry OSM tags as columns (null = tag absent), or a `tags` column of dicts/JSON objects (as ohsome
writes with `properties=tags`). The OSM type comes from an `osm_type`/`@osmType` column or an `@osmId`/`osm_id`
like `way/123` (default `way`). When the file has ohsome's `@validFrom`/`@validTo` columns, only versions valid at
the requested date are used; otherwise the file is one snapshot and the date is not used.

`.osm.pbf` files are read once with pyosmium's area assembler: closed ways and multipolygon relations become
(multi)polygons (OSM type `way` or `relation`).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import date
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from shapely.geometry import box

from lulc_core.errors import InputError
from lulc_core.geo import BBox
from lulc_core.osm._frames import WGS84, empty_frame, polygonal
from lulc_core.osm.filter import geometry_type_of, parse_filter

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".parquet", ".shp", ".fgb")
META_COLUMNS = frozenset(
    {"geometry", "osm_id", "osm_type", "@osmId", "@osmType", "@validFrom", "@validTo", "@snapshotTimestamp", "tags"}
)


class LocalOsmSource:
    """OSM polygons from a local file, selected with ohsome filter expressions.

    Args:
        path: `.geojson`, `.json`, `.gpkg`, `.parquet`, `.shp`, `.fgb` or `.osm.pbf`.

    Raises:
        InputError: the file does not exist or has an unsupported type (field `labels.osm_file`).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        name = self.path.name.lower()
        if not self.path.is_file():
            raise InputError("labels.osm_file", f"file {str(self.path)!r} does not exist", "give a local OSM extract")
        if not (name.endswith(".osm.pbf") or name.endswith(".pbf") or name.endswith(VECTOR_SUFFIXES)):
            raise InputError(
                "labels.osm_file", f"unsupported file type {self.path.name!r}", f"use .osm.pbf or {VECTOR_SUFFIXES}"
            )
        self._lock = threading.Lock()
        self._frame: gpd.GeoDataFrame | None = None
        self._tags: pd.DataFrame | list[dict[str, str]] | None = None

    def __repr__(self) -> str:
        return f"LocalOsmSource({str(self.path)!r})"

    # --- loading ---------------------------------------------------------------------------------------------------

    def _load(self) -> gpd.GeoDataFrame:
        with self._lock:
            if self._frame is None:
                if self.path.name.lower().endswith(".pbf"):
                    self._frame, self._tags = self._read_pbf()
                else:
                    self._frame, self._tags = self._read_vector()
                self._frame.sindex  # noqa: B018  (build the spatial index once, under the lock)
                log.info("%s: %d features loaded", self.path, len(self._frame))
            return self._frame

    def _read_vector(self) -> tuple[gpd.GeoDataFrame, pd.DataFrame]:
        try:
            raw = gpd.read_parquet(self.path) if self.path.suffix == ".parquet" else gpd.read_file(self.path)
        except Exception as exc:
            raise InputError("labels.osm_file", f"cannot read {self.path}: {exc}") from exc
        if raw.crs is None:
            raw = raw.set_crs(WGS84)
        raw = raw[raw.geometry.notna() & ~raw.geometry.is_empty].to_crs(WGS84).reset_index(drop=True)
        tags = raw[[c for c in raw.columns if c not in META_COLUMNS]].copy()
        tags = tags.astype(object).where(tags.notna(), None)
        for col in tags.columns:
            tags[col] = tags[col].map(lambda v: None if v is None else str(v))
        if "tags" in raw.columns:
            parsed = [_as_dict(v) for v in raw["tags"]]
            expanded = pd.DataFrame.from_records(parsed, index=raw.index)
            tags = tags.drop(columns=[c for c in expanded.columns if c in tags.columns]).join(expanded)
        frame = gpd.GeoDataFrame(
            {
                "osm_id": _osm_ids(raw),
                "osm_type": _osm_types(raw),
                "geometry_type": [geometry_type_of(t) for t in raw.geometry.geom_type],
            },
            geometry=shapely.make_valid(raw.geometry.to_numpy()),
            crs=WGS84,
        )
        for col in ("@validFrom", "@validTo"):
            if col in raw.columns:
                frame[col] = pd.to_datetime(raw[col], utc=True, errors="coerce")
        return frame, tags

    def _read_pbf(self) -> tuple[gpd.GeoDataFrame, list[dict[str, str]]]:
        import osmium

        factory = osmium.geom.WKBFactory()
        ids, types, wkbs, tags = [], [], [], []
        try:
            processor = (
                osmium.FileProcessor(str(self.path))
                .with_areas()
                .with_filter(osmium.filter.EntityFilter(osmium.osm.AREA))
            )
            for obj in processor:
                if not isinstance(obj, osmium.osm.Area) or len(obj.tags) == 0:
                    continue
                try:
                    wkb = factory.create_multipolygon(obj)
                except RuntimeError:  # an area osmium cannot assemble (broken ring)
                    continue
                kind = "way" if obj.from_way() else "relation"
                ids.append(f"{kind}/{obj.orig_id()}")
                types.append(kind)
                wkbs.append(wkb)
                tags.append({t.k: t.v for t in obj.tags})
        except RuntimeError as exc:
            raise InputError("labels.osm_file", f"cannot read {self.path} as OSM PBF: {exc}") from exc
        geoms = shapely.make_valid(shapely.from_wkb(np.asarray(wkbs, dtype=object))) if wkbs else []
        frame = gpd.GeoDataFrame(
            {"osm_id": ids, "osm_type": types, "geometry_type": ["polygon"] * len(ids)}, geometry=geoms, crs=WGS84
        )
        return frame, tags

    def _tag_frame(self, index: np.ndarray, keys: frozenset[str]) -> pd.DataFrame:
        assert self._tags is not None
        if isinstance(self._tags, pd.DataFrame):
            cols = [k for k in keys if k in self._tags.columns]
            return self._tags.iloc[index][cols]
        rows = [self._tags[i] for i in index]
        return pd.DataFrame({k: [r.get(k) for r in rows] for k in keys}, dtype=object)

    # --- the OsmSource interface -----------------------------------------------------------------------------------

    def features(self, bbox: BBox, when: date, osm_filter: str, *, clip: bool = True) -> gpd.GeoDataFrame:
        """Polygons matching `osm_filter` that intersect `bbox` (clipped to it with `clip`), EPSG:4326.

        Columns: `osm_id`, `osm_type`, the tag keys the filter reads, `geometry`. Geometric selectors (`area:`, ...)
        measure the whole polygon, as ohsome does.
        """
        expr = parse_filter(osm_filter)
        keys = sorted(expr.keys())
        columns = ["osm_id", "osm_type", *keys]
        frame = self._load()
        window = box(*bbox.as_tuple())
        index = np.sort(frame.sindex.query(window, predicate="intersects"))
        if len(index) == 0:
            return empty_frame(columns)
        cand = frame.iloc[index]
        t = pd.Timestamp(when, tz="UTC")
        valid = np.ones(len(cand), bool)
        if "@validFrom" in cand.columns:
            valid &= (cand["@validFrom"].isna() | (cand["@validFrom"] <= t)).to_numpy()
        if "@validTo" in cand.columns:
            valid &= (cand["@validTo"].isna() | (cand["@validTo"] > t)).to_numpy()
        cand, index = cand[valid], index[valid]
        tags = self._tag_frame(index, frozenset(keys))
        tags.index = cand.index
        matched = expr.mask(
            tags, cand["geometry_type"], cand["osm_type"], osm_ids=cand["osm_id"], geometries=cand.geometry.to_numpy()
        )
        mask = matched & (cand["geometry_type"] == "polygon").to_numpy()
        if not mask.any():
            return empty_frame(columns)
        picked = cand[mask]
        clipped = shapely.intersection(picked.geometry.to_numpy(), window) if clip else picked.geometry.to_numpy()
        polygons = np.array([polygonal(g) for g in clipped], dtype=object)
        keep = np.array([g is not None for g in polygons], dtype=bool)
        if not keep.any():
            return empty_frame(columns)
        out = pd.DataFrame({"osm_id": picked["osm_id"].to_numpy(), "osm_type": picked["osm_type"].to_numpy()})
        for k in keys:
            out[k] = tags[k].to_numpy()[mask] if k in tags.columns else None
        return gpd.GeoDataFrame(out[keep].reset_index(drop=True), geometry=list(polygons[keep]), crs=WGS84)


def _as_dict(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if v is not None}
    if isinstance(value, str) and value.strip().startswith("{"):
        return {str(k): str(v) for k, v in json.loads(value).items() if v is not None}
    return {}


def _osm_ids(raw: pd.DataFrame) -> list[str]:
    for col in ("@osmId", "osm_id"):
        if col in raw.columns:
            return [str(v) for v in raw[col]]
    return [f"feature/{i}" for i in range(len(raw))]


def _osm_types(raw: pd.DataFrame) -> list[str]:
    for col in ("osm_type", "@osmType"):
        if col in raw.columns:
            return [str(v).lower() if v is not None else "way" for v in raw[col]]
    ids = _osm_ids(raw)
    out = []
    for v in ids:
        prefix = v.split("/", 1)[0].lower() if "/" in v else ""
        out.append(prefix if prefix in ("node", "way", "relation") else "way")
    return out
