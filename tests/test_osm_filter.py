"""The ohsome filter language: parsing, evaluation (row-wise and vectorised) and syntax errors with positions."""

from __future__ import annotations

import pandas as pd
import pytest

from lulc_core.errors import InputError
from lulc_core.osm.filter import FilterSyntaxError, geometry_type_of, parse_filter

FEATURES = [
    ({"landuse": "forest"}, "polygon", "way"),
    ({"natural": "wood", "name": "Big Wood"}, "polygon", "relation"),
    ({"landuse": "residential", "building": "yes"}, "polygon", "way"),
    ({"landuse": "farmland", "crop": "wheat"}, "polygon", "way"),
    ({"highway": "primary"}, "line", "way"),
    ({"amenity": "bench"}, "point", "node"),
    ({"name": 'The "Old" Mill', "addr:street": "Main Street"}, "polygon", "way"),
    ({}, "other", "relation"),
]

CASES = [
    ("landuse=forest", [0]),
    ("landuse=*", [0, 2, 3]),
    ("landuse!=forest", [1, 2, 3, 4, 5, 6, 7]),  # ohsome: also features without the key
    ("landuse!=*", [1, 4, 5, 6, 7]),
    ("landuse in (forest, farmland)", [0, 3]),
    ("landuse=forest or natural=wood", [0, 1]),
    ("landuse=* and not landuse=forest", [2, 3]),
    ("natural=wood or landuse=forest and type:relation", [1]),  # `and` binds tighter than `or`
    ("(natural=wood or landuse=forest) and type:way", [0]),
    ("geometry:polygon and not landuse=*", [1, 6]),
    ("geometry:line or geometry:point", [4, 5]),
    ("geometry:other", [7]),
    ("type:node", [5]),
    ('name="Big Wood"', [1]),
    ('name="The \\"Old\\" Mill"', [6]),
    ("addr:street=*", [6]),
    ('"addr:street"="Main Street"', [6]),
    ("not not landuse=forest", [0]),
    ("  landuse = forest  ", [0]),
    ("landuse=residential and building=*", [2]),
]


@pytest.mark.parametrize(("expr", "expected"), CASES)
def test_matches_and_vectorised_mask_agree(expr: str, expected: list[int]):
    flt = parse_filter(expr)
    rowwise = [i for i, (tags, geom, osm) in enumerate(FEATURES) if flt.matches(tags, geom, osm)]
    assert rowwise == expected
    frame = pd.DataFrame.from_records([tags for tags, _, _ in FEATURES])
    geoms = pd.Series([g for _, g, _ in FEATURES])
    types = pd.Series([t for _, _, t in FEATURES])
    mask = flt.mask(frame, geoms, types)
    assert [i for i, m in enumerate(mask) if m] == expected


def test_keys_and_missing_columns():
    flt = parse_filter("landuse=forest or (natural in (wood, scrub) and not leaf_type=*)")
    assert flt.keys() == {"landuse", "natural", "leaf_type"}
    # a key absent from the table behaves like a tag no feature has
    frame = pd.DataFrame({"landuse": ["forest", None]})
    mask = parse_filter("leaf_type!=*").mask(frame, pd.Series(["polygon"] * 2), pd.Series(["way"] * 2))
    assert mask.tolist() == [True, True]


def test_every_v3_filter_parses(v3_label_set):
    for cls in v3_label_set.classes:
        flt = parse_filter(cls.osm_filter)
        assert flt.keys()
    water = parse_filter(v3_label_set.classes[2].osm_filter)
    assert water.matches({"waterway": "riverbank"}, "polygon", "way")
    assert not water.matches({"waterway": "river"}, "line", "way")


def test_geometry_type_names():
    assert geometry_type_of("MultiPolygon") == "polygon"
    assert geometry_type_of("LineString") == "line"
    assert geometry_type_of("Point") == "point"
    assert geometry_type_of("GeometryCollection") == "other"


@pytest.mark.parametrize(
    ("expr", "position", "fragment"),
    [
        ("", 0, "empty filter"),
        ("landuse=", 8, "expected a tag value"),
        ("landuse=forest and", 18, "expected a tag key"),
        ("landuse=forest or or natural=wood", 18, "expected a tag key"),
        ("(landuse=forest", 15, "expected `)`"),
        ("landuse=forest)", 14, "expected `and`, `or`"),
        ('name="abc', 5, "unterminated"),
        ("geometry:polygn", 9, "unknown geometry"),
        ("type:area", 5, "unknown type"),
        ("landuse in (a,)", 14, "expected a tag value"),
        ("landuse in a", 11, "expected `(`"),
        ("landuse ~ forest", 8, "unexpected character"),
        ("landuse forest", 8, "expected `=`, `!=` or `in`"),
        ("landuse=forest natural=wood", 15, "expected `and`, `or`"),
    ],
)
def test_syntax_errors_carry_the_position(expr: str, position: int, fragment: str):
    with pytest.raises(FilterSyntaxError) as err:
        parse_filter(expr)
    assert err.value.position == position
    assert fragment in str(err.value)
    assert isinstance(err.value, InputError) and err.value.field == "osm_filter"
    assert f"position {position}" in str(err.value)
