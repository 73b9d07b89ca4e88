"""The demo's comparison: prediction on the reference grid, agreement over labelled pixels, the picture, grouping."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from lulc.demo import area_request, held_back_areas
from lulc_core.comparison import Panel, agreement, on_grid, plot_comparison, reference_mosaic
from lulc_core.geo import Tile
from lulc_core.raster import Raster, write_geotiff

UTM = CRS.from_epsg(32632)


def _classes(path: Path, data: np.ndarray, west: float, north: float) -> Path:
    raster = Raster(data[None].astype(np.uint8), Affine(10, 0, west, 0, -10, north), UTM, ["class"])
    return write_geotiff(path, raster)


def test_reference_mosaic_and_prediction_on_its_grid(tmp_path: Path) -> None:
    left = _classes(tmp_path / "a.tif", np.full((4, 4), 1), 500_000, 6_000_040)
    right = _classes(tmp_path / "b.tif", np.full((4, 4), 2), 500_040, 6_000_040)
    reference = reference_mosaic([left, right])
    assert reference.data.shape == (1, 4, 8) and set(np.unique(reference.data)) == {1, 2}
    # A prediction shifted by one pixel east and larger: resampled onto the reference grid, 0 where it has none.
    pred = np.arange(4 * 10).reshape(4, 10) % 3 + 1
    path = _classes(tmp_path / "p.tif", pred, 500_010, 6_000_040)
    on_ref = on_grid(path, reference)
    assert on_ref.shape == (4, 8)
    assert (on_ref[:, 0] == 0).all()
    np.testing.assert_array_equal(on_ref[:, 1:], pred[:, :7])


def test_agreement_counts_only_labelled_pixels_and_names_classes(v3_label_set) -> None:
    reference = np.array([[0, 1, 1, 2], [2, 2, 0, 0]], dtype=np.uint8)
    predicted = np.array([[5, 1, 2, 2], [2, 1, 3, 3]], dtype=np.uint8)
    result = agreement([Panel("t", predicted, reference)], v3_label_set)
    assert result.pixels == 5
    assert result.agreement == pytest.approx(3 / 5)
    names = v3_label_set.names
    assert result.per_class == {names[1]: 0.5, names[2]: pytest.approx(round(2 / 3, 4))}
    with pytest.raises(ValueError, match="no labelled pixel"):
        agreement([Panel("t", predicted, np.zeros_like(reference))], v3_label_set)


def test_comparison_picture_is_written(tmp_path: Path, v3_label_set) -> None:
    reference = np.array([[1, 2], [2, 0]], dtype=np.uint8)
    panel = Panel("area", np.array([[1, 1], [2, 2]], dtype=np.uint8), reference)
    path = plot_comparison([panel, panel], v3_label_set, agreement([panel], v3_label_set), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _tile(tile_id: str, x: float, crs: str = "EPSG:32632", start: date = date(2020, 1, 1)) -> Tile:
    return Tile(id=tile_id, crs=crs, bounds=(x, 6e6, x + 640, 6e6 + 640), resolution=10, start=start, end=start)


def test_test_tiles_are_grouped_by_crs_and_time_frame_and_requested_inside_their_outline() -> None:
    tiles = [_tile("a", 5e5), _tile("b", 5e5 + 640), _tile("c", 5e5, "EPSG:32736"), _tile("d", 5e5 + 1280)]
    groups = held_back_areas(tiles, ["a", "b", "c"])
    assert [[t.id for t in g] for g in groups] == [["a", "b"], ["c"]]
    bbox, body = area_request(groups[0])
    outline = groups[0][0].model_copy(update={"bounds": (5e5, 6e6, 5e5 + 1280, 6e6 + 640)}).bbox_wgs84
    assert outline.west < bbox.west < bbox.east < outline.east
    assert body["start_date"] == "2020-01-01" and len(body["area_coords"]) == 4  # type: ignore[arg-type]
