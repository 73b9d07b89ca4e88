"""Gap polygons across block borders (`lulc_core.mapping.gaps.merge_across_blocks`): a gap straddling two blocks is
one polygon with its area summed and its confidence averaged by area; a corner touch or another class is not merged.
`tests/test_mapping_local.py` checks the same on the gaps of a whole `lulc map run --local`."""

from __future__ import annotations

from typing import Any

import pytest
from shapely.geometry import box

from lulc_core.mapping.gaps import merge_across_blocks

RES = 10.0


def _gap(block: str, geom: Any, conf: float, cls: str = "crops", zone: str = "z1") -> dict[str, Any]:
    return {"class": cls, "area_m2": geom.area, "mean_confidence": conf, "block": block, "zone": zone,
            "crs": "EPSG:32632", "geometry": geom}  # fmt: skip


def test_a_gap_straddling_two_blocks_is_one_polygon() -> None:
    # blocks of 1,280 m side by side at x = 501,280 m; float noise at the shared edge as two grids compute it
    left = _gap("b0", box(501_200.0, 5_000_000.0, 501_280.0000001, 5_000_100.0), 0.9)
    right = _gap("b1", box(501_279.9999999, 5_000_020.0, 501_400.0, 5_000_060.0), 0.6)
    corner = _gap("b1", box(501_280.0, 5_000_100.0, 501_300.0, 5_000_120.0), 0.95)  # touches `left` at a point
    other = _gap("b1", box(501_280.0, 5_000_060.0, 501_300.0, 5_000_080.0), 0.9, cls="grass")
    elsewhere = _gap("b1", box(501_279.99, 5_000_000.0, 501_300.0, 5_000_020.0), 0.9, zone="z2")
    merged = merge_across_blocks([left, right, corner, other, elsewhere], ["class"], RES)
    assert len(merged) == 4
    (both,) = [m for m in merged if m["block"] == "b0,b1"]
    assert both["geometry"].geom_type == "Polygon"
    assert both["area_m2"] == pytest.approx(80 * 100 + 120 * 40, rel=1e-6)
    assert both["geometry"].area == pytest.approx(both["area_m2"], rel=1e-6)
    assert both["mean_confidence"] == pytest.approx((0.9 * 8000 + 0.6 * 4800) / 12800)
    assert merge_across_blocks([], ["class"], RES) == []
