"""GeoDataFrame pieces every OSM source shares: the CRS, the empty result and polygon-only geometries."""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import pandas as pd
import shapely

WGS84 = "EPSG:4326"


def empty_frame(columns: list[str]) -> gpd.GeoDataFrame:
    """An empty EPSG:4326 GeoDataFrame with `columns` (object dtype) and a geometry column."""
    return gpd.GeoDataFrame({c: pd.Series(dtype=object) for c in columns}, geometry=[], crs=WGS84)


def polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (clipping can leave lines/points on the edge), or None."""
    if geom is None or geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon") and g.area > 0]
    return shapely.union_all(parts) if parts else None
