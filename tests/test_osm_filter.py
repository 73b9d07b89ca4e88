"""The ohsome filter language: parsing, evaluation (row-wise and vectorised) and syntax errors with positions;
the id, type and geometric selectors measured geodesically; contribution selectors refused."""

from __future__ import annotations

import pandas as pd
import pytest
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

from lulc_core.errors import InputError
from lulc_core.osm.filter import (
    FeatureTable,
    FilterSyntaxError,
    UnsupportedSelectorError,
    geometry_type_of,
    parse_filter,
)

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


# --- id, type and geometric selectors (https://docs.ohsome.org/ohsome-api/v1/filter.html) ------------------------

# 0.01° x 0.01° at 55° N: about 639 m x 1,114 m on the WGS84 ellipsoid (geodesic), 712,317 m² (pyproj Geod)
SQUARE = box(10.0, 55.0, 10.01, 55.01)
HOLED = Polygon(SQUARE.exterior.coords, [box(10.002, 55.002, 10.004, 55.004).exterior.coords])
TWO = MultiPolygon([box(10.0, 55.0, 10.001, 55.001), box(10.005, 55.005, 10.006, 55.006)])
ROAD = LineString([(10.0, 55.0), (10.0, 55.001)])  # 111.3 m north
POINT = Point(10.0, 55.0)
SHAPES = [  # (osm id, geometry, geometry kind, osm type)
    ("way/1", SQUARE, "polygon", "way"),
    ("relation/2", HOLED, "polygon", "relation"),
    ("relation/3", TWO, "polygon", "relation"),
    ("way/4", ROAD, "line", "way"),
    ("node/5", POINT, "point", "node"),
    ("way/500", box(10.0, 55.0, 10.00001, 55.00001), "polygon", "way"),  # a 0.7 m² sliver
]

SELECTOR_CASES = [
    ("id:1", [0]),
    ("id:way/4", [3]),
    ("id:node/4", []),  # type and id must both match
    ("id : 5", [4]),
    ("id:(1, relation/3, 500)", [0, 2, 5]),
    ("id:(2..4)", [1, 2, 3]),
    ("id:(..2)", [0, 1]),
    ("id:(100..)", [5]),
    ("type:relation and id:(..2)", [1]),
    ("area:(700000..720000)", [0]),
    ("area:(1..)", [0, 1, 2]),  # drops the sliver, the line and the point (area 0)
    ("area:(..1)", [3, 4, 5]),
    ("area:(1.0E5 .. 1e6)", [0, 1]),
    ("length:(100..120)", [3]),
    ("length:(1..)", [3]),  # polygons have no length, only a perimeter
    ("perimeter:(3400..3600)", [0]),  # 3,506 m
    ("perimeter:(3600..)", [1]),  # with its hole's ring: 3,506 + 701 m
    ("geometry.vertices:(5..5)", [0, 5]),
    ("geometry.vertices:(1..2)", [3, 4]),
    ("geometry.vertices:(10..)", [1, 2]),
    ("geometry.outers:2", [2]),
    ("geometry.outers:1", [0, 1, 5]),
    ("geometry.outers:(1..)", [0, 1, 2, 5]),
    ("geometry.inners:0", [0, 2, 5]),
    ("geometry.inners:(1..)", [1]),
    ("geometry.roundness:(0.7..)", [0, 5]),  # 639 m x 1,114 m rectangles: 4πA/P² = 0.728
    ("geometry.roundness:(..0.5)", [1, 2, 3, 4]),  # the hole lengthens the boundary; two parts; no polygon
    ("landuse=forest and area:(1..)", [0]),
    ("not area:(1..)", [3, 4, 5]),
]


def _table_inputs() -> tuple[pd.DataFrame, list[str], list[str], list[str], list[object]]:
    tags = pd.DataFrame.from_records([{"landuse": "forest"}] + [{}] * (len(SHAPES) - 1))
    ids = [i for i, *_ in SHAPES]
    return tags, [k for _, _, k, _ in SHAPES], [t for *_, t in SHAPES], ids, [g for _, g, _, _ in SHAPES]


@pytest.mark.parametrize(("expr", "expected"), SELECTOR_CASES)
def test_id_and_geometric_selectors(expr: str, expected: list[int]):
    flt = parse_filter(expr)
    tags, kinds, types, ids, geoms = _table_inputs()
    mask = flt.mask(tags, kinds, types, osm_ids=ids, geometries=geoms)
    assert [i for i, m in enumerate(mask) if m] == expected
    rowwise = [
        i
        for i, (osm_id, geom, kind, osm_type) in enumerate(SHAPES)
        if flt.matches(tags.iloc[i].dropna().to_dict(), kind, osm_type, osm_id=osm_id, geometry=geom)
    ]
    assert rowwise == expected


def test_geodesic_measures_match_pyproj():
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    table = FeatureTable.build(
        pd.DataFrame(index=range(2)), ["polygon", "line"], ["way", "way"], geometries=[SQUARE, ROAD]
    )
    area, perimeter = geod.geometry_area_perimeter(SQUARE)
    assert table.measure("area")[0] == pytest.approx(abs(area)) and 712_000 < abs(area) < 713_000
    assert table.measure("perimeter")[0] == pytest.approx(perimeter)
    assert (
        table.measure("length")[1] == pytest.approx(geod.geometry_length(ROAD))
        and 111 < table.measure("length")[1] < 112
    )


def test_tag_keys_that_look_like_selectors_stay_tags():
    assert parse_filter("area:highway=*").keys() == {"area:highway"}
    assert parse_filter('length:unit="m"').keys() == {"length:unit"}
    assert parse_filter("id:wikidata in (Q1, Q2)").keys() == {"id:wikidata"}


def test_selectors_without_ids_or_geometries_are_named():
    with pytest.raises(InputError, match="area"):
        parse_filter("area:(1..)").mask(pd.DataFrame(index=[0]), ["polygon"], ["way"])
    with pytest.raises(InputError, match="id"):
        parse_filter("id:(1..)").mask(pd.DataFrame(index=[0]), ["polygon"], ["way"])


@pytest.mark.parametrize(
    "expr", ["changeset:42", "changeset:(10, 42)", "contributor:(1..5)", "geometry.squareness:(0.8..)"]
)
def test_contribution_selectors_are_refused_in_one_line(expr: str):
    with pytest.raises(UnsupportedSelectorError) as err:
        parse_filter(f"landuse=forest and {expr}")
    message = str(err.value)
    assert "\n" not in message and expr.split(":")[0] in message and err.value.position == 19
    assert isinstance(err.value, FilterSyntaxError)  # callers that name the class catch it like any syntax error


@pytest.mark.parametrize(
    ("expr", "position", "fragment"),
    [
        ("area:5", 5, "expected (from..to)"),
        ("area:(5..1)", 5, "empty range"),
        ("length:(1..", 11, "expected `)`"),
        ("id:(a, b)", 3, "expected an OSM id"),
        ("geometry.outers:x", 16, "an integer or (from..to)"),
        ("geometry.corners:(1..2)", 0, "unknown selector"),
    ],
)
def test_selector_syntax_errors_carry_the_position(expr: str, position: int, fragment: str):
    with pytest.raises(FilterSyntaxError) as err:
        parse_filter(expr)
    assert err.value.position == position and fragment in str(err.value)
