"""Geographic value types shared by every step: bounding boxes, time ranges and tiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pyproj import CRS, Transformer

from lulc_core.errors import InputError

SENTINEL2_LAUNCH = date(2015, 6, 23)


class BBox(BaseModel):
    """A bounding box in EPSG:4326 ordered west, south, east, north (the order of the field's APIs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    west: float = Field(description="Western longitude in degrees, -180..180.")
    south: float = Field(description="Southern latitude in degrees, -90..90.")
    east: float = Field(description="Eastern longitude in degrees, -180..180, greater than west.")
    north: float = Field(description="Northern latitude in degrees, -90..90, greater than south.")

    @model_validator(mode="after")
    def _check(self) -> BBox:
        for name in ("west", "south", "east", "north"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise InputError(f"bbox.{name}", f"{value!r} is not a finite number", "give degrees as numbers")
        for name in ("west", "east"):
            if not -180 <= getattr(self, name) <= 180:
                raise InputError(f"bbox.{name}", f"{getattr(self, name)} is outside -180..180", "use longitude")
        for name in ("south", "north"):
            if not -90 <= getattr(self, name) <= 90:
                raise InputError(f"bbox.{name}", f"{getattr(self, name)} is outside -90..90", "use latitude")
        if self.east <= self.west:
            raise InputError(
                "bbox",
                f"east ({self.east}) must be greater than west ({self.west})",
                "order is west, south, east, north; an area across the antimeridian must be split in two",
            )
        if self.north <= self.south:
            raise InputError(
                "bbox", f"north ({self.north}) must be greater than south ({self.south})", "order is W, S, E, N"
            )
        return self

    @classmethod
    def from_sequence(cls, values: Sequence[float | str], field: str = "bbox") -> BBox:
        """Build from `[west, south, east, north]`, naming `field` in errors."""
        if len(values) != 4:
            raise InputError(field, f"expected 4 numbers (west, south, east, north), got {len(values)}")
        try:
            w, s, e, n = (float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise InputError(field, f"values must be numbers: {values!r}") from exc
        try:
            return cls(west=w, south=s, east=e, north=n)
        except InputError as exc:
            raise InputError(exc.field.replace("bbox", field, 1), exc.message, exc.fix) from None

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.west, self.south, self.east, self.north)

    def utm_crs(self) -> CRS:
        """The UTM zone CRS of the box centre (WGS 84 / UTM), the grid imagery is fetched on."""
        lon = (self.west + self.east) / 2
        lat = (self.south + self.north) / 2
        zone = int((lon + 180) // 6) + 1
        return CRS.from_epsg((32600 if lat >= 0 else 32700) + min(zone, 60))

    def to_crs(self, crs: CRS | str) -> tuple[float, float, float, float]:
        """Bounds of this box in another CRS (densified edges)."""
        transformer = Transformer.from_crs("EPSG:4326", CRS.from_user_input(crs), always_xy=True)
        return transformer.transform_bounds(*self.as_tuple(), densify_pts=21)


class TimeRange(BaseModel):
    """An inclusive date range [start, end]."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: date = Field(description="First day (ISO date).")
    end: date = Field(description="Last day (ISO date), not before start.")

    @model_validator(mode="after")
    def _check(self) -> TimeRange:
        if self.end < self.start:
            raise InputError("time_range", f"end {self.end} is before start {self.start}", "swap the dates")
        return self


class Tile(BaseModel):
    """One cell of the area grid: the unit imagery and labels are fetched for.

    `bounds` are in `crs` (a projected UTM CRS, metres); `width`/`height` are pixels at `resolution`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Stable identifier, used as the file name of the tile's rasters.")
    crs: str = Field(description="CRS of `bounds`, e.g. 'EPSG:32632'.")
    bounds: tuple[float, float, float, float] = Field(description="(minx, miny, maxx, maxy) in `crs`.")
    resolution: float = Field(gt=0, description="Pixel size in CRS units (metres).")
    start: date = Field(description="Start of the imagery time range.")
    end: date = Field(description="End of the imagery time range; OSM labels are taken at this date.")

    @property
    def width(self) -> int:
        return round((self.bounds[2] - self.bounds[0]) / self.resolution)

    @property
    def height(self) -> int:
        return round((self.bounds[3] - self.bounds[1]) / self.resolution)

    @property
    def bbox_wgs84(self) -> BBox:
        transformer = Transformer.from_crs(self.crs, "EPSG:4326", always_xy=True)
        w, s, e, n = transformer.transform_bounds(*self.bounds, densify_pts=21)
        return BBox(west=w, south=s, east=e, north=n)


def tile_for_bbox(bbox: BBox, resolution: float, start: date, end: date, tile_id: str = "request") -> Tile:
    """The pixel grid covering `bbox` on its UTM zone, snapped outward to whole pixels."""
    crs = bbox.utm_crs()
    minx, miny, maxx, maxy = bbox.to_crs(crs)
    snap = resolution
    minx, miny = math.floor(minx / snap) * snap, math.floor(miny / snap) * snap
    maxx, maxy = math.ceil(maxx / snap) * snap, math.ceil(maxy / snap) * snap
    return Tile(
        id=tile_id,
        crs=crs.to_string(),
        bounds=(minx, miny, maxx, maxy),
        resolution=resolution,
        start=start,
        end=end,
    )
