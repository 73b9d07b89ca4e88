"""The ohsome filter language: a recursive-descent parser and an evaluator over OSM features.

The grammar of https://docs.ohsome.org/ohsome-api/v1/filter.html (the oshdb-filter module)::

    expr     := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | primary
    primary  := "(" expr ")" | key "=" (value | "*") | key "!=" (value | "*") | key "in" "(" value ("," value)* ")"
              | "geometry:" ("polygon"|"line"|"point"|"other") | "type:" ("node"|"way"|"relation")
              | "id:" id | "id:(" id ("," id)* ")" | "id:(" range ")"            id := [osm-type "/"] integer
              | ("area:" | "length:" | "perimeter:" | "geometry.vertices:" | "geometry.roundness:") "(" range ")"
              | ("geometry.outers:" | "geometry.inners:") (integer | "(" range ")")
    range    := [number] ".." [number]          bounds included; an omitted bound is open

Keys and values are unquoted (letters, digits, `_ - : .`) or double-quoted (`"a b"`, with `\\"` and `\\\\`
escapes). As in ohsome, `key!=value` also matches features without `key`, and `key!=*` matches features without it.

Geometric selectors measure the feature's whole geometry (EPSG:4326) on the WGS84 ellipsoid (pyproj `Geod`):
`area` in m² (polygons, else 0), `length` in m (lines, else 0), `perimeter` in m (every ring of a polygon, else 0),
`geometry.vertices` the number of coordinates, `geometry.outers` / `geometry.inners` the number of outer rings /
holes (polygons, else -1), `geometry.roundness` the Polsby-Popper score 4πA/P² (polygons, else 0). The
contribution selectors `changeset:` and `contributor:` (and `geometry.squareness:`) are refused with one line.

A filter is evaluated one feature at a time (`OsmFilter.matches`) or vectorised over a table (`OsmFilter.mask`,
`OsmFilter.evaluate` on a `FeatureTable`), with the same result; a table measures each geometry once.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from lulc_core.errors import InputError

GEOMETRY_TYPES = ("polygon", "line", "point", "other")
OSM_TYPES = ("node", "way", "relation")
KEYWORDS = frozenset({"and", "or", "not", "in"})
MEASURES = (
    "area",
    "length",
    "perimeter",
    "geometry.vertices",
    "geometry.outers",
    "geometry.inners",
    "geometry.roundness",
)
"""Selectors that measure the geometry: `<name>:(<from>..<to>)` (outers/inners also `<name>:<integer>`)."""
UNSUPPORTED = {
    "changeset": "`changeset:` selects contributions (edits), not the OSM elements labels are made of",
    "contributor": "`contributor:` selects contributions (edits), not the OSM elements labels are made of",
    "geometry.squareness": "`geometry.squareness:` (Žunić-Rosin rectilinearity) is not supported",
}
_WORD = re.compile(r"[\w\-:.]+")
_SELECTOR = re.compile(
    r"(id|area|length|perimeter|geometry\.[a-z]+|changeset|contributor)\s*:\s*(\([^()]*\)?|[A-Za-z]+\s*/\s*\d+|[\w.+\-]+)"
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"\(\s*({_NUMBER})?\s*\.\.\s*({_NUMBER})?\s*\)")
_ID = re.compile(r"\s*(?:(node|way|relation)\s*/\s*)?(\d+)\s*")
_FIX = "see https://docs.ohsome.org/ohsome-api/v1/filter.html (e.g. `landuse=forest or natural=wood`)"


class FilterSyntaxError(InputError):
    """An ohsome filter expression that cannot be parsed; `.position` is the 0-based character offset."""

    def __init__(self, expr: str, position: int, message: str) -> None:
        self.expr = expr
        self.position = position
        pointer = f"\n  {expr}\n  {' ' * position}^"
        super().__init__("osm_filter", f"{message} at position {position}{pointer}", _FIX)


class UnsupportedSelectorError(FilterSyntaxError):
    """A valid ohsome selector lulc cannot evaluate (contribution selectors): one line, no pointer."""

    def __init__(self, expr: str, position: int, message: str) -> None:
        self.expr = expr
        self.position = position
        InputError.__init__(self, "osm_filter", f"{message} (position {position})", "remove it from the label set")


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "op", "selector", "eof"
    text: str
    pos: int
    value: str = ""  # selector: its raw argument, e.g. "(10..)" or "way/42"


def _selector_at(expr: str, i: int) -> re.Match[str] | None:
    """A `name:value` selector starting at `i` (not a tag key such as `area:highway=*` or `id:x in (...)`)."""
    m = _SELECTOR.match(expr, i)
    if m is None:
        return None
    rest = expr[m.end() :].lstrip()
    if rest.startswith(("=", "!=")) or re.match(r"in\b", rest):
        return None
    return m


def _tokenize(expr: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(expr):
        ch = expr[i]
        if ch.isspace():
            i += 1
        elif expr.startswith("!=", i):
            tokens.append(_Token("op", "!=", i))
            i += 2
        elif ch in "=(),*":
            tokens.append(_Token("op", ch, i))
            i += 1
        elif ch == '"':
            start, i, chars = i, i + 1, []
            while i < len(expr) and expr[i] != '"':
                if expr[i] == "\\" and i + 1 < len(expr):
                    i += 1
                chars.append(expr[i])
                i += 1
            if i >= len(expr):
                raise FilterSyntaxError(expr, start, "unterminated quoted string")
            tokens.append(_Token("string", "".join(chars), start))
            i += 1
        elif (sel := _selector_at(expr, i)) is not None:
            tokens.append(_Token("selector", sel.group(1), i, sel.group(2)))
            i = sel.end()
        else:
            m = _WORD.match(expr, i)
            if not m:
                raise FilterSyntaxError(expr, i, f"unexpected character {ch!r}")
            tokens.append(_Token("word", m.group(), i))
            i = m.end()
    tokens.append(_Token("eof", "", len(expr)))
    return tokens


# --- what a filter is evaluated on --------------------------------------------------------------------------------


def parse_osm_id(value: Any) -> tuple[str | None, int | None]:
    """("way", 42) from "way/42", (None, 42) from 42 or "42"; (None, None) when there is no OSM id."""
    text = str(value) if value is not None else ""
    prefix, _, number = text.rpartition("/")
    kind = prefix.lower() if prefix.lower() in OSM_TYPES else None
    if not number.isdigit() or (prefix and kind is None):  # e.g. "feature/3": a row number, not an OSM id
        return None, None
    return kind, int(number)


@dataclass
class FeatureTable:
    """Features to evaluate a filter on: tags (one column per key, missing = NaN/None), geometry kinds, OSM types,
    and — for `id:` and geometric selectors — OSM ids ("way/42") and shapely geometries in EPSG:4326."""

    tags: pd.DataFrame
    geometry_types: np.ndarray
    osm_types: np.ndarray
    osm_ids: np.ndarray | None = None
    geometries: np.ndarray | None = None
    _measures: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        tags: pd.DataFrame,
        geometry_types: Sequence[str] | pd.Series,
        osm_types: Sequence[str] | pd.Series,
        osm_ids: Sequence[Any] | pd.Series | None = None,
        geometries: Sequence[Any] | np.ndarray | None = None,
    ) -> FeatureTable:
        as_array = lambda v: None if v is None else np.asarray(list(v), dtype=object)  # noqa: E731
        return cls(
            tags.reset_index(drop=True),
            np.asarray(list(geometry_types), dtype=object),
            np.asarray(list(osm_types), dtype=object),
            as_array(osm_ids),
            as_array(geometries),
        )

    def __len__(self) -> int:
        return len(self.geometry_types)

    def tag(self, key: str) -> pd.Series:
        if key not in self.tags.columns:
            return pd.Series([None] * len(self), dtype=object)
        return self.tags[key]

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(OSM types or None, numeric ids or -1) per feature."""
        if self.osm_ids is None:
            raise InputError("osm_filter", "`id:` needs the features' OSM ids, which this source does not provide")
        if "id" not in self._measures:
            parsed = [parse_osm_id(v) for v in self.osm_ids]
            self._measures["id_type"] = np.asarray([k for k, _ in parsed], dtype=object)
            self._measures["id"] = np.asarray([-1 if n is None else n for _, n in parsed], dtype=np.int64)
        return self._measures["id_type"], self._measures["id"]

    def measure(self, name: str) -> np.ndarray:
        """One geometric measure per feature (see the module docstring), computed once per table."""
        if name not in self._measures:
            if self.geometries is None:
                raise InputError("osm_filter", f"`{name}:` needs the features' geometries, which were not given")
            self._measures[name] = np.asarray([_measure(name, g) for g in self.geometries], dtype=np.float64)
        return self._measures[name]


@lru_cache(maxsize=1)
def _geod() -> Any:
    from pyproj import Geod

    return Geod(ellps="WGS84")


def _measure(name: str, geom: Any) -> float:
    import shapely

    if geom is None or geom.is_empty:
        return -1.0 if name in ("geometry.outers", "geometry.inners") else 0.0
    kind = geometry_type_of(geom.geom_type)
    if name == "geometry.vertices":
        return float(shapely.get_num_coordinates(geom))
    if name == "length":
        return float(_geod().geometry_length(geom)) if kind == "line" else 0.0
    if kind != "polygon":
        return -1.0 if name in ("geometry.outers", "geometry.inners") else 0.0
    polygons = list(shapely.get_parts(geom))
    if name == "geometry.outers":
        return float(len(polygons))
    if name == "geometry.inners":
        return float(sum(len(p.interiors) for p in polygons))
    area = perimeter = 0.0
    for polygon in polygons:  # each ring on its own: holes are subtracted whatever their orientation
        for i, ring in enumerate([polygon.exterior, *polygon.interiors]):
            lons, lats = ring.xy
            ring_area, ring_length = _geod().polygon_area_perimeter(lons, lats)
            area += abs(ring_area) if i == 0 else -abs(ring_area)
            perimeter += ring_length
    if name == "area":
        return area
    if name == "perimeter":
        return perimeter
    return 4 * math.pi * area / perimeter**2 if perimeter > 0 else 0.0  # geometry.roundness


# --- the expression tree ------------------------------------------------------------------------------------------


class OsmFilter(ABC):
    """A parsed filter expression."""

    @abstractmethod
    def evaluate(self, table: FeatureTable) -> np.ndarray:
        """A boolean array: which features of `table` match."""

    @abstractmethod
    def keys(self) -> frozenset[str]:
        """Tag keys the expression reads."""

    def selectors(self) -> frozenset[str]:
        """Non-tag selectors the expression uses ("id", "area", ...): what a source must provide beyond tags."""
        return frozenset()

    def matches(
        self,
        tags: Mapping[str, str],
        geometry_type: str,
        osm_type: str,
        *,
        osm_id: Any = None,
        geometry: Any = None,
    ) -> bool:
        """Whether one feature matches.

        Args:
            tags: the feature's OSM tags.
            geometry_type: "polygon", "line", "point" or "other".
            osm_type: "node", "way" or "relation".
            osm_id: "way/42" or 42 (for `id:`).
            geometry: the shapely geometry in EPSG:4326 (for the geometric selectors).
        """
        table = FeatureTable(
            pd.DataFrame([dict(tags)]) if tags else pd.DataFrame(index=[0]),
            np.asarray([geometry_type], dtype=object),
            np.asarray([osm_type], dtype=object),
            np.asarray([osm_id], dtype=object),
            np.asarray([geometry], dtype=object) if geometry is not None else None,
        )
        return bool(self.evaluate(table)[0])

    def mask(
        self,
        tags: pd.DataFrame,
        geometry_types: pd.Series | Sequence[str],
        osm_types: pd.Series | Sequence[str],
        *,
        osm_ids: pd.Series | Sequence[Any] | None = None,
        geometries: Sequence[Any] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectorised `matches`: one boolean per row of `tags` (one column per key; missing = NaN/None)."""
        return self.evaluate(FeatureTable.build(tags, geometry_types, osm_types, osm_ids, geometries))


@dataclass(frozen=True)
class TagEquals(OsmFilter):
    key: str
    value: str | None  # None: `key=*`

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        col = table.tag(self.key)
        return col.notna().to_numpy() if self.value is None else (col == self.value).fillna(False).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset({self.key})


@dataclass(frozen=True)
class TagIn(OsmFilter):
    key: str
    values: tuple[str, ...]

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        return table.tag(self.key).isin(self.values).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset({self.key})


@dataclass(frozen=True)
class GeometryIs(OsmFilter):
    kind: str

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        return np.asarray(table.geometry_types == self.kind, dtype=bool)

    def keys(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class TypeIs(OsmFilter):
    kind: str

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        return np.asarray(table.osm_types == self.kind, dtype=bool)

    def keys(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class IdIn(OsmFilter):
    """`id:42`, `id:way/42`, `id:(1, way/2)`: (OSM type or None for any type, id) pairs."""

    ids: tuple[tuple[str | None, int], ...]

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        kinds, numbers = table.ids()
        out = np.zeros(len(table), bool)
        for kind, number in self.ids:
            hit = numbers == number
            out |= hit if kind is None else hit & (kinds == kind)
        return out

    def keys(self) -> frozenset[str]:
        return frozenset()

    def selectors(self) -> frozenset[str]:
        return frozenset({"id"})


@dataclass(frozen=True)
class InRange(OsmFilter):
    """`id:(a..b)` or a geometric measure in [low, high] (bounds included)."""

    measure: str  # "id" or one of MEASURES
    low: float
    high: float

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        if self.measure == "id":
            values = table.ids()[1]
            return np.asarray((values >= self.low) & (values <= self.high) & (values >= 0), dtype=bool)
        values = table.measure(self.measure)
        return np.asarray((values >= self.low) & (values <= self.high), dtype=bool)

    def keys(self) -> frozenset[str]:
        return frozenset()

    def selectors(self) -> frozenset[str]:
        return frozenset({self.measure})


@dataclass(frozen=True)
class Not(OsmFilter):
    inner: OsmFilter

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        return ~self.inner.evaluate(table)

    def keys(self) -> frozenset[str]:
        return self.inner.keys()

    def selectors(self) -> frozenset[str]:
        return self.inner.selectors()


@dataclass(frozen=True)
class And(OsmFilter):
    parts: tuple[OsmFilter, ...]

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        out = np.ones(len(table), bool)
        for p in self.parts:
            out &= p.evaluate(table)
        return out

    def keys(self) -> frozenset[str]:
        return frozenset().union(*(p.keys() for p in self.parts))

    def selectors(self) -> frozenset[str]:
        return frozenset().union(*(p.selectors() for p in self.parts))


@dataclass(frozen=True)
class Or(OsmFilter):
    parts: tuple[OsmFilter, ...]

    def evaluate(self, table: FeatureTable) -> np.ndarray:
        out = np.zeros(len(table), bool)
        for p in self.parts:
            out |= p.evaluate(table)
        return out

    def keys(self) -> frozenset[str]:
        return frozenset().union(*(p.keys() for p in self.parts))

    def selectors(self) -> frozenset[str]:
        return frozenset().union(*(p.selectors() for p in self.parts))


# --- the parser ---------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = _tokenize(expr)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def error(self, message: str, tok: _Token | None = None) -> FilterSyntaxError:
        t = tok or self.tok
        found = "end of expression" if t.kind == "eof" else repr(t.text)
        return FilterSyntaxError(self.expr, t.pos, f"{message}, found {found}")

    def is_word(self, text: str) -> bool:
        return self.tok.kind == "word" and self.tok.text == text

    def is_op(self, text: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == text

    def advance(self) -> _Token:
        tok = self.tok
        self.i += 1
        return tok

    def parse(self) -> OsmFilter:
        if self.tok.kind == "eof":
            raise self.error("empty filter: expected a tag expression such as landuse=forest")
        node = self.or_expr()
        if self.tok.kind != "eof":
            raise self.error("expected `and`, `or` or the end of the expression")
        return node

    def or_expr(self) -> OsmFilter:
        parts = [self.and_expr()]
        while self.is_word("or"):
            self.advance()
            parts.append(self.and_expr())
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self) -> OsmFilter:
        parts = [self.not_expr()]
        while self.is_word("and"):
            self.advance()
            parts.append(self.not_expr())
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def not_expr(self) -> OsmFilter:
        if self.is_word("not"):
            self.advance()
            return Not(self.not_expr())
        return self.primary()

    def text(self, what: str) -> str:
        tok = self.tok
        if tok.kind == "string" or (tok.kind == "word" and tok.text not in KEYWORDS):
            self.advance()
            return tok.text
        raise self.error(f"expected {what}")

    def primary(self) -> OsmFilter:
        tok = self.tok
        if self.is_op("("):
            self.advance()
            node = self.or_expr()
            if not self.is_op(")"):
                raise self.error("expected `)` closing the `(` at position " + str(tok.pos))
            self.advance()
            return node
        if tok.kind == "selector":
            return self.selector(self.advance())
        if tok.kind == "word" and tok.text.startswith(("geometry:", "type:")):
            nxt = self.tokens[self.i + 1]
            if not (nxt.kind == "op" and nxt.text in ("=", "!=")) and not (nxt.kind == "word" and nxt.text == "in"):
                return self.kind_selector()
        key = self.text("a tag key, `(`, `not` or a selector such as `geometry:polygon`")
        if self.is_op("="):
            self.advance()
            if self.is_op("*"):
                self.advance()
                return TagEquals(key, None)
            return TagEquals(key, self.text("a tag value or `*`"))
        if self.is_op("!="):
            self.advance()
            if self.is_op("*"):
                self.advance()
                return Not(TagEquals(key, None))
            return Not(TagEquals(key, self.text("a tag value or `*`")))
        if self.is_word("in"):
            self.advance()
            if not self.is_op("("):
                raise self.error("expected `(` after `in`")
            self.advance()
            values = [self.text("a tag value")]
            while self.is_op(","):
                self.advance()
                values.append(self.text("a tag value"))
            if not self.is_op(")"):
                raise self.error("expected `,` or `)` in the value list")
            self.advance()
            return TagIn(key, tuple(values))
        raise self.error(f"expected `=`, `!=` or `in` after key {key!r}")

    def kind_selector(self) -> OsmFilter:
        tok = self.advance()
        prefix, _, kind = tok.text.partition(":")
        allowed = GEOMETRY_TYPES if prefix == "geometry" else OSM_TYPES
        if kind not in allowed:
            raise FilterSyntaxError(
                self.expr, tok.pos + len(prefix) + 1, f"unknown {prefix} {kind!r}; expected one of {list(allowed)}"
            )
        return GeometryIs(kind) if prefix == "geometry" else TypeIs(kind)

    def selector(self, tok: _Token) -> OsmFilter:
        name, value = tok.text, tok.value.strip()
        at = tok.pos + self.expr[tok.pos :].index(":") + 1  # where the value starts (after spaces)
        at += len(self.expr[at:]) - len(self.expr[at:].lstrip())
        if name in UNSUPPORTED:
            raise UnsupportedSelectorError(self.expr, tok.pos, UNSUPPORTED[name])
        if name != "id" and name not in MEASURES:
            choices = ", ".join(f"{m}:" for m in ("id", *MEASURES))
            raise FilterSyntaxError(self.expr, tok.pos, f"unknown selector `{name}:`; expected one of {choices}")
        if not (value.startswith("(") and value.endswith(")")) and value.startswith("("):
            raise FilterSyntaxError(self.expr, at + len(value), f"expected `)` closing `{name}:(`")
        bounds = _RANGE.fullmatch(value)
        if bounds is not None:
            low = float(bounds.group(1)) if bounds.group(1) else -math.inf
            high = float(bounds.group(2)) if bounds.group(2) else math.inf
            if low > high:
                raise FilterSyntaxError(self.expr, at, f"empty range {value}: the lower bound exceeds the upper")
            return InRange(name, low, high)
        if name == "id":
            return IdIn(self.ids(value, at))
        if name in ("geometry.outers", "geometry.inners") and value.isdigit():
            return InRange(name, float(value), float(value))
        form = "an integer or (from..to)" if name in ("geometry.outers", "geometry.inners") else "(from..to)"
        raise FilterSyntaxError(self.expr, at, f"expected {form} after `{name}:`, found {value!r}")

    def ids(self, value: str, at: int) -> tuple[tuple[str | None, int], ...]:
        inner = value[1:-1] if value.startswith("(") else value
        out: list[tuple[str | None, int]] = []
        for part in inner.split(","):
            m = _ID.fullmatch(part)
            if m is None:
                raise FilterSyntaxError(
                    self.expr,
                    at,
                    f"expected an OSM id (42, way/42), a list or a range (1..9) after `id:`, found {value!r}",
                )
            out.append((m.group(1), int(m.group(2))))
        return tuple(out)


@lru_cache(maxsize=256)
def parse_filter(expr: str) -> OsmFilter:
    """Parse an ohsome filter expression.

    Raises:
        FilterSyntaxError: with `.position`, the offset of the offending character (`UnsupportedSelectorError`
            for a selector lulc cannot evaluate, e.g. `changeset:`).
    """
    if not isinstance(expr, str):
        raise FilterSyntaxError(str(expr), 0, "the filter must be a string")
    return _Parser(expr).parse()


def geometry_type_of(geom_type: str | None) -> str:
    """Map a shapely geometry type name to the ohsome `geometry:` kind."""
    if geom_type in ("Polygon", "MultiPolygon"):
        return "polygon"
    if geom_type in ("LineString", "MultiLineString", "LinearRing"):
        return "line"
    if geom_type in ("Point", "MultiPoint"):
        return "point"
    return "other"
