"""The ohsome filter language: a small recursive-descent parser and an evaluator over OSM tags.

Grammar (the subset of https://docs.ohsome.org/ohsome-api/v1/filter.html that label sets use)::

    expr     := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | primary
    primary  := "(" expr ")" | "geometry:" ("polygon"|"line"|"point"|"other") | "type:" ("node"|"way"|"relation")
              | key "=" (value | "*") | key "!=" (value | "*") | key "in" "(" value ("," value)* ")"

Keys and values are unquoted (letters, digits, `_ - : .`) or double-quoted (`"a b"`, with `\\"` and `\\\\`
escapes). As in ohsome, `key!=value` also matches features without `key`, and `key!=*` matches features without it.
A filter is evaluated one feature at a time (`OsmFilter.matches`) or vectorised over a table of tags
(`OsmFilter.mask`), with the same result.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from lulc_core.errors import InputError

GEOMETRY_TYPES = ("polygon", "line", "point", "other")
OSM_TYPES = ("node", "way", "relation")
KEYWORDS = frozenset({"and", "or", "not", "in"})
_WORD = re.compile(r"[\w\-:.]+")


class FilterSyntaxError(InputError):
    """An ohsome filter expression that cannot be parsed; `.position` is the 0-based character offset."""

    def __init__(self, expr: str, position: int, message: str) -> None:
        self.expr = expr
        self.position = position
        pointer = f"\n  {expr}\n  {' ' * position}^"
        super().__init__(
            "osm_filter",
            f"{message} at position {position}{pointer}",
            "see https://docs.ohsome.org/ohsome-api/v1/filter.html (e.g. `landuse=forest or natural=wood`)",
        )


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "op", "eof"
    text: str
    pos: int


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
        else:
            m = _WORD.match(expr, i)
            if not m:
                raise FilterSyntaxError(expr, i, f"unexpected character {ch!r}")
            tokens.append(_Token("word", m.group(), i))
            i = m.end()
    tokens.append(_Token("eof", "", len(expr)))
    return tokens


# --- the expression tree ------------------------------------------------------------------------------------------


def _tag_values(tags: pd.DataFrame, key: str) -> pd.Series:
    if key not in tags.columns:
        return pd.Series([None] * len(tags), index=tags.index, dtype=object)
    return tags[key]


class OsmFilter(ABC):
    """A parsed filter expression."""

    @abstractmethod
    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        """Whether one feature matches.

        Args:
            tags: the feature's OSM tags.
            geometry_type: "polygon", "line", "point" or "other".
            osm_type: "node", "way" or "relation".
        """

    @abstractmethod
    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        """Vectorised `matches`: a boolean array, one value per row of `tags` (one column per key; missing = NaN/None)."""

    @abstractmethod
    def keys(self) -> frozenset[str]:
        """Tag keys the expression reads."""


@dataclass(frozen=True)
class TagEquals(OsmFilter):
    key: str
    value: str | None  # None: `key=*`

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        v = tags.get(self.key)
        return v is not None if self.value is None else v == self.value

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        col = _tag_values(tags, self.key)
        return col.notna().to_numpy() if self.value is None else (col == self.value).fillna(False).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset({self.key})


@dataclass(frozen=True)
class TagIn(OsmFilter):
    key: str
    values: tuple[str, ...]

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return tags.get(self.key) in self.values

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        return _tag_values(tags, self.key).isin(self.values).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset({self.key})


@dataclass(frozen=True)
class GeometryIs(OsmFilter):
    kind: str

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return geometry_type == self.kind

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        return (geometry_types == self.kind).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class TypeIs(OsmFilter):
    kind: str

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return osm_type == self.kind

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        return (osm_types == self.kind).to_numpy(bool)

    def keys(self) -> frozenset[str]:
        return frozenset()


@dataclass(frozen=True)
class Not(OsmFilter):
    inner: OsmFilter

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return not self.inner.matches(tags, geometry_type, osm_type)

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        return ~self.inner.mask(tags, geometry_types, osm_types)

    def keys(self) -> frozenset[str]:
        return self.inner.keys()


@dataclass(frozen=True)
class And(OsmFilter):
    parts: tuple[OsmFilter, ...]

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return all(p.matches(tags, geometry_type, osm_type) for p in self.parts)

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        out = np.ones(len(tags), bool)
        for p in self.parts:
            out &= p.mask(tags, geometry_types, osm_types)
        return out

    def keys(self) -> frozenset[str]:
        return frozenset().union(*(p.keys() for p in self.parts))


@dataclass(frozen=True)
class Or(OsmFilter):
    parts: tuple[OsmFilter, ...]

    def matches(self, tags: Mapping[str, str], geometry_type: str, osm_type: str) -> bool:
        return any(p.matches(tags, geometry_type, osm_type) for p in self.parts)

    def mask(self, tags: pd.DataFrame, geometry_types: pd.Series, osm_types: pd.Series) -> np.ndarray:
        out = np.zeros(len(tags), bool)
        for p in self.parts:
            out |= p.mask(tags, geometry_types, osm_types)
        return out

    def keys(self) -> frozenset[str]:
        return frozenset().union(*(p.keys() for p in self.parts))


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
        if tok.kind == "word" and tok.text.startswith(("geometry:", "type:")):
            nxt = self.tokens[self.i + 1]
            if not (nxt.kind == "op" and nxt.text in ("=", "!=")) and not (nxt.kind == "word" and nxt.text == "in"):
                return self.selector()
        key = self.text("a tag key, `(`, `not`, `geometry:` or `type:`")
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

    def selector(self) -> OsmFilter:
        tok = self.advance()
        prefix, _, kind = tok.text.partition(":")
        allowed = GEOMETRY_TYPES if prefix == "geometry" else OSM_TYPES
        if kind not in allowed:
            raise FilterSyntaxError(
                self.expr, tok.pos + len(prefix) + 1, f"unknown {prefix} {kind!r}; expected one of {list(allowed)}"
            )
        return GeometryIs(kind) if prefix == "geometry" else TypeIs(kind)


@lru_cache(maxsize=256)
def parse_filter(expr: str) -> OsmFilter:
    """Parse an ohsome filter expression.

    Raises:
        FilterSyntaxError: with `.position`, the offset of the offending character.
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
