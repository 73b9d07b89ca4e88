"""Benchmark (marker `bench`, run by `make bench` / `pytest -m bench`): peak memory of a large-area request.

The issue's figure is 10,000 x 10,000 px (`python -m benchmarks.serving_memory --pixels 10000`, minutes on 2
cores); this test runs 2,500 x 2,500 px and checks that the server's memory growth stays bounded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench


def test_large_area_memory_is_bounded() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.serving_memory import measure

    pixels = int(os.environ.get("LULC_BENCH_PIXELS", "2500"))
    result = measure(pixels)
    print(result)
    assert (result["width"], result["height"]) == (pytest.approx(pixels, rel=0.02),) * 2
    # the uint8 output is pixels^2 bytes; everything else is bounded by the block of windows, not the area
    assert result["rss_growth_mb"] < 1500 + pixels * pixels / 1e6
