"""What the original lulc-utility's clients send and get back on its paths (/segment/, /uncertainty/, ...).

- `OriginalRequest`: the original's request body with its field names, ranges and defaults. Unknown fields are
  ignored, as the original ignored them, and named in a `Warning` response header (`ignored_fields_warning`).
  The V1/V2 protocols and lulc's own options stay strict.
- `on_requested_box`: a prediction on the original's grid, EPSG:4326 spanning exactly the requested box, unless
  the client opts into lulc's UTM grid (`grid: "utm"`); `requested_bounds`: that box (for writers that warp
  straight into the file).
- `original_labels`: the original's `/segment/describe` keys `osm` and `corine` (name -> descriptor with
  `raster_value` and an RGB `color`).
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lulc_core.corine import CLC_CLASSES
from lulc_core.errors import InputError
from lulc_core.inference import FusionMode, Prediction
from lulc_core.labels import LabelSet
from lulc_core.raster import hex_to_rgba, warp_to_bounds
from serving.service import AreaRequest, no_bool

ORIGINAL_PATHS = frozenset(
    {"/segment/", "/segment/preview", "/segment/describe", "/uncertainty/", "/uncertainty/preview", "/health"}
)
GEOTIFF = "image/geotiff"
UNKNOWN_DESCRIPTION = "areas which class cannot be predicted with a required certainty score"
Lon = Annotated[float, Field(ge=-180, le=180)]
Lat = Annotated[float, Field(ge=-90, le=90)]


class Grid(StrEnum):
    """The grid of a GeoTIFF answer."""

    WGS84 = "EPSG:4326"
    UTM = "utm"


class BadRequestError(InputError):
    """A request the original answered with 400 (not 422)."""

    status_code = 400


class OriginalRequest(BaseModel):
    """An area and time range to segment: the original utility's body (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    area_coords: tuple[Lon, Lat, Lon, Lat] = Field(
        description="Bounding box (west, south, east, north) in WGS 84 degrees; swapped corners are put in order.",
        examples=[[9.835, 57.222, 9.850, 57.230]],
    )
    start_date: date | None = Field(
        default=None,
        description="First day of imagery, inclusive (default: end_date - 7 days).",
        examples=["2023-05-01"],
    )
    end_date: date | None = Field(
        default=None,
        description="Last day of imagery and OSM date, inclusive (default: today).",
        examples=["2023-06-01"],
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Below this class score a pixel is unknown (0..1; default: the server's, 0 unless configured).",
    )
    fusion_mode: FusionMode = Field(default=FusionMode.ONLY_MODEL, description="How model and OSM are combined.")
    grid: Grid = Field(
        default=Grid.WGS84,
        description="GeoTIFF grid: 'EPSG:4326' clipped to the box (the original's answer) or 'utm' (lulc's "
        "native grid: the box's UTM zone at the model's resolution, no resampling).",
    )
    # lulc's extensions, beside the original's fields (the server's `serving` settings when absent)
    tta: bool | None = Field(default=None, description="Test-time augmentation of the classes (serving.tta).")
    edge_buffer_m: float | None = Field(
        default=None, ge=0, description="Margin predicted around the box and cropped off (serving.edge_buffer_m)."
    )

    @field_validator("area_coords", "threshold", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return no_bool(v)

    def area_request(self) -> AreaRequest:
        """The request in lulc's terms (corners in order, as the original's Sentinel Hub BBox put them)."""
        values = self.model_dump(include={"start_date", "end_date", "threshold", "fusion_mode", "tta", "edge_buffer_m"})
        return AreaRequest.parse({"area_coords": list(self.box())} | values)

    def box(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) with the corners in order."""
        w, s, e, n = self.area_coords
        return (min(w, e), min(s, n), max(w, e), max(s, n))


def ignored_fields(body: Any) -> list[str]:
    """Top-level keys of a JSON body that `OriginalRequest` does not know."""
    return sorted(k for k in body if k not in OriginalRequest.model_fields) if isinstance(body, dict) else []


def ignored_fields_warning(names: list[str], limit: int = 10) -> str:
    """An RFC 9111 style `Warning` header value (299 = miscellaneous persistent warning) naming ignored fields."""
    shown = [re.sub(r'[^\x20-\x7e]|["\\]', "?", n)[:64] for n in names[:limit]]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f'299 - "ignored unknown fields: {", ".join(shown)}{more}"'


def requested_bounds(request: OriginalRequest) -> tuple[float, float, float, float] | None:
    """The EPSG:4326 box a GeoTIFF answer spans exactly, or None for lulc's UTM grid (`grid: "utm"`)."""
    return None if request.grid == Grid.UTM else request.box()


def on_requested_box(prediction: Prediction, request: OriginalRequest) -> Prediction:
    """`prediction` on the grid the client asked for: EPSG:4326 spanning exactly the box (nearest neighbour)."""
    box = requested_bounds(request)
    if box is None:
        return prediction
    unc = prediction.uncertainty
    return Prediction(
        classes=warp_to_bounds(prediction.classes, box),
        label_set=prediction.label_set,
        probabilities=None,
        uncertainty=warp_to_bounds(unc, box) if unc is not None else None,
        title=prediction.title,
    )


def _descriptor(name: str, value: int, color: str | tuple[int, int, int], **extra: Any) -> dict[str, Any]:
    rgb = list(hex_to_rgba(color)[:3]) if isinstance(color, str) else list(color)
    fields = {"osm_ref": None, "description": None, "osm_filter": None, "geometry_types": ["polygon"]}
    return {"name": name, **(fields | extra), "raster_value": value, "color": rgb}


def original_labels(label_set: LabelSet) -> dict[str, dict[str, dict[str, Any]]]:
    """The original's describe keys: `osm` (the label set) and `corine` (the CORINE legend, `osm_ref` = the class
    each code is harmonised to), each name -> {name, raster_value, color [r, g, b], description, ...}."""
    unknown = _descriptor("unknown", 0, (0, 0, 0), description=UNKNOWN_DESCRIPTION)
    osm = {"unknown": unknown}
    owner: dict[int, str] = {}
    for value, cls in enumerate(label_set.classes, start=1):
        osm[cls.name] = _descriptor(cls.name, value, cls.color, description=cls.description, osm_filter=cls.osm_filter)
        owner |= dict.fromkeys(cls.corine_codes, cls.name)
    corine = {"unknown": unknown}
    for c in CLC_CLASSES:
        description = f"CORINE Land Cover {c.code}"
        corine[c.name] = _descriptor(c.name, c.index, c.color, osm_ref=owner.get(c.code), description=description)
    return {"osm": osm, "corine": corine}
