"""OSM label sources: polygons selected by ohsome filter expressions, for a bbox at a date.

`build_osm_source` picks the backend: a local extract (`LocalOsmSource`: GeoJSON/GeoPackage with tags as
columns, or `.osm.pbf`) or the ohsome API (`lulc_core.osm.ohsome.OhsomeSource`, imported only when chosen).
The same filter gives the same polygons from both.
"""

from __future__ import annotations

import importlib
from datetime import date
from pathlib import Path
from typing import Protocol, runtime_checkable

import geopandas as gpd

from lulc_core.config import LabelsConfig
from lulc_core.errors import InputError
from lulc_core.geo import BBox


@runtime_checkable
class OsmSource(Protocol):
    """Where OSM polygons come from."""

    def features(self, bbox: BBox, when: date, osm_filter: str, *, clip: bool = True) -> gpd.GeoDataFrame:
        """Polygons matching `osm_filter` valid at `when` that intersect `bbox`, in EPSG:4326: clipped to `bbox`,
        or whole with `clip=False` (labelling classifies whole polygons; `area:` and the like measure them whole).

        Columns: `osm_id` ("way/42"), `osm_type`, the tag keys the filter reads, `geometry`. Returns an empty
        GeoDataFrame (with a geometry column and CRS) when nothing matches. Raises FilterSyntaxError for an
        unparsable filter.
        """
        ...


def build_osm_source(cfg: LabelsConfig, cache_dir: Path | None = None) -> OsmSource:
    """The OSM source configured in `cfg` ("file" or "ohsome").

    Raises:
        InputError: an unknown or unavailable backend (field `labels.source`) or a missing file (`labels.osm_file`).
    """
    if cfg.source == "file":
        from lulc_core.osm.local import LocalOsmSource

        if cfg.osm_file is None:
            raise InputError("labels.osm_file", "source 'file' needs osm_file", "give a .geojson, .gpkg or .osm.pbf")
        return LocalOsmSource(cfg.osm_file)
    if cfg.source == "ohsome":
        module = _backend("lulc_core.osm.ohsome", "ohsome")
        source: OsmSource = module.OhsomeSource(
            cfg.ohsome_url,
            cfg.timeout_s,
            cfg.max_retries,
            cache_dir,
            max_requests_per_second=cfg.max_requests_per_second,
        )
        return source
    raise InputError(
        "labels.source", f"source {cfg.source!r} is not available as an OSM source", "use 'file' or 'ohsome'"
    )


def _backend(module_name: str, label: str):  # type: ignore[no-untyped-def]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise InputError("labels.source", f"the {label} backend is not installed ({module_name})") from exc
