"""Label sets: the classes a model predicts, each selected from OSM by an ohsome filter expression.

A label set is a YAML list of classes in the original utility's layout::

    - name: forest
      osm_filter: landuse=forest or natural=wood
      color: '#647E43'
      description: Managed and unmanaged tree covers.

Class 0 is always `unknown` (no polygon, or below the confidence threshold); the classes of the file get raster
values 1..N in file order.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lulc_core.errors import ConfigError, NotFoundError
from lulc_core.raster import hex_to_rgba

UNKNOWN = "unknown"
UNKNOWN_COLOR = "#000000"
_HEX = re.compile(r"^#[0-9A-Fa-f]{6}([0-9A-Fa-f]{2})?$")


class LabelClass(BaseModel):
    """One class of a label set."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, description="Class name, unique in the set; 'unknown' is reserved.")
    osm_filter: str = Field(
        min_length=1, alias="filter", description="ohsome filter expression selecting the class's OSM polygons."
    )
    color: str = Field(alias="color_code", description="Display colour as '#RRGGBB'.")
    description: str | None = Field(default=None, description="What the class contains.")
    corine_codes: list[int] = Field(
        default_factory=list, description="CORINE land cover codes mapped to this class (optional label source)."
    )

    @field_validator("color")
    @classmethod
    def _color(cls, v: str) -> str:
        if not _HEX.match(v):
            raise ValueError(f"color {v!r} is not a hex colour; write it as '#RRGGBB'")
        return v.upper()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v == UNKNOWN:
            raise ValueError("'unknown' is reserved for class 0; rename the class")
        return v


class LabelSet(BaseModel):
    """An ordered list of classes; raster value i+1 is `classes[i]`, value 0 is unknown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Label set name, e.g. 'v3' (the file stem).")
    classes: list[LabelClass] = Field(min_length=1, description="Classes in raster-value order (1..N).")

    @model_validator(mode="after")
    def _unique(self) -> LabelSet:
        names = [c.name for c in self.classes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique; repeated: {dupes}")
        return self

    @property
    def names(self) -> list[str]:
        """All class names by raster value, `unknown` first."""
        return [UNKNOWN, *(c.name for c in self.classes)]

    @property
    def num_classes(self) -> int:
        """Number of raster values including class 0."""
        return len(self.classes) + 1

    @property
    def colors(self) -> list[str]:
        return [UNKNOWN_COLOR, *(c.color for c in self.classes)]

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """Raster value -> RGBA, for GeoTIFF colour tables and legends."""
        return {i: hex_to_rgba(c) for i, c in enumerate(self.colors)}

    def value_of(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise NotFoundError(f"class {name!r} is not in label set {self.name!r} ({self.names})") from None

    def fingerprint(self) -> str:
        """A short hash of the classes and filters: part of every label cache key."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:12]

    @classmethod
    def from_yaml(cls, path: str | Path) -> LabelSet:
        """Load a label set file; errors name the file, the class and the field."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError("label_set", f"file {str(p)!r} does not exist", "give the path of a label set YAML")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("label_set", f"{p} is not valid YAML: {exc}") from exc
        if isinstance(raw, dict) and "classes" in raw:
            raw = {"name": raw.get("name", p.stem), "classes": raw["classes"]}
        elif isinstance(raw, list):
            raw = {"name": p.stem, "classes": raw}
        else:
            raise ConfigError("label_set", f"{p} must hold a list of classes (name, osm_filter, color)")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"label_set {p.name}: {loc}", err["msg"]) from exc
