"""label_tiles with several tiles at once: same files as one at a time, overlapping requests, clear errors."""

from __future__ import annotations

import threading
import time
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio

from lulc_core.errors import InputError, UpstreamError
from lulc_core.geo import BBox
from lulc_core.labelling import label_tiles
from lulc_core.osm.local import LocalOsmSource

SAMPLE_OSM = Path(__file__).resolve().parents[1] / "data" / "sample" / "osm" / "sample_osm.geojson"


class SlowSource(LocalOsmSource):
    """The sample extract with a delay per query; counts queries in flight and can fail for one tile."""

    def __init__(self, delay_s: float = 0.02, fail_bbox: BBox | None = None) -> None:
        super().__init__(SAMPLE_OSM)
        self.delay_s = delay_s
        self.fail_bbox = fail_bbox
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0

    def features(self, bbox: BBox, when: date, osm_filter: str, *, clip: bool = True):  # type: ignore[no-untyped-def]
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if self.fail_bbox is not None and bbox.as_tuple() == self.fail_bbox.as_tuple():
                raise UpstreamError("ohsome", "503 after 5 retries")
            return super().features(bbox, when, osm_filter, clip=clip)
        finally:
            with self.lock:
                self.in_flight -= 1


def test_concurrent_labels_equal_sequential_ones(v3_label_set, data_sample_tiles, tmp_path: Path):
    tiles = data_sample_tiles[:6]
    serial = label_tiles(SlowSource(), v3_label_set, tiles, tmp_path / "serial")
    source = SlowSource()
    parallel = label_tiles(source, v3_label_set, tiles, tmp_path / "parallel", concurrency=4)
    assert [p.name for p in parallel] == [f"{t.id}.tif" for t in tiles]
    assert 2 <= source.max_in_flight <= 4
    for a, b in zip(serial, parallel, strict=True):
        with rasterio.open(a) as x, rasterio.open(b) as y:
            np.testing.assert_array_equal(x.read(), y.read())
            assert x.tags()["LULC_LABEL_KEY"] == y.tags()["LULC_LABEL_KEY"]


def test_a_failing_tile_is_named_and_others_stay_complete(v3_label_set, data_sample_tiles, tmp_path: Path):
    tiles = data_sample_tiles[:6]
    bad = tiles[3]
    source = SlowSource(fail_bbox=bad.bbox_wgs84)
    with pytest.raises(UpstreamError, match=bad.id):
        label_tiles(source, v3_label_set, tiles, tmp_path / "out", concurrency=3)
    assert not (tmp_path / "out" / f"{bad.id}.tif").exists()
    assert not list((tmp_path / "out").glob("*.tmp*")) and not list((tmp_path / "out").glob(".*"))


def test_concurrency_below_one_is_refused(v3_label_set, data_sample_tiles, tmp_path: Path):
    with pytest.raises(InputError) as err:
        label_tiles(SlowSource(), v3_label_set, data_sample_tiles[:1], tmp_path, concurrency=0)
    assert err.value.field == "labels.concurrency"
