"""Rasterising OSM polygons of a label set onto tiles: order, all-touched off, class 0, caching, colour map."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject
from shapely.geometry import box, mapping
from shapely.ops import transform as shp_transform

from lulc_core.errors import ConfigError
from lulc_core.geo import BBox, Tile
from lulc_core.labelling import label_tiles, rasterize_labels
from lulc_core.labels import LabelSet
from lulc_core.osm.filter import FilterSyntaxError
from lulc_core.osm.local import LocalOsmSource

# ESRI LULC value -> v3 raster value under the sample's tag mapping (see data/sample/README.md)
ESRI_TO_V3 = np.array([0, 3, 2, 0, 4, 1, 0, 0, 0, 6], dtype=np.uint8)
TILE = Tile(
    id="synthetic",
    crs="EPSG:32632",
    bounds=(500000.0, 6000000.0, 500320.0, 6000320.0),
    resolution=10.0,
    start=date(2023, 6, 1),
    end=date(2023, 6, 30),
)


@pytest.fixture(scope="module")
def sample_source(repo_root: Path) -> LocalOsmSource:
    return LocalOsmSource(repo_root / "data" / "sample" / "osm" / "sample_osm.geojson")


def _geojson(path: Path, features: list[tuple[dict, object]]) -> Path:
    from pyproj import Transformer

    tr = Transformer.from_crs("EPSG:32632", "EPSG:4326", always_xy=True)
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": props, "geometry": mapping(shp_transform(tr.transform, geom))}
            for props, geom in features
        ],
    }
    path.write_text(json.dumps(fc))
    return path


def test_sample_labels_reproduce_the_land_cover_map(sample_source, v3_label_set, data_sample_tiles, shared_data):
    for tile in data_sample_tiles[::4]:
        raster = rasterize_labels(sample_source, v3_label_set, tile)
        assert raster.band_names == ["class"] and raster.data.dtype == np.uint8
        assert raster.data.shape == (1, tile.height, tile.width)
        assert raster.bounds == pytest.approx(tile.bounds)
        patch = {"EPSG:32632": "637U_59R_1_3", "EPSG:32718": "433D_629L_3_1", "EPSG:32736": "38D_378R_2_3"}[tile.crs]
        with rasterio.open(shared_data / "terramind" / "LULC" / f"{patch}.tif") as src:
            esri = np.zeros((tile.height, tile.width), np.uint8)
            reproject(
                src.read(1),
                esri,
                src_transform=src.transform,
                src_crs=src.crs,
                dst_transform=raster.transform,
                dst_crs=raster.crs,
                resampling=Resampling.nearest,
            )
        agreement = (ESRI_TO_V3[esri] == raster.data[0]).mean()
        assert agreement > 0.99, (tile.id, agreement)


def test_smaller_polygons_on_top_and_unknown_elsewhere(tmp_path: Path, v3_label_set: LabelSet):
    forest = box(500000, 6000000, 500200, 6000320)  # 20 x 32 px
    houses = box(500050, 6000100, 500150, 6000200)  # 10 x 10 px inside the forest
    for order in (
        [({"landuse": "residential"}, houses), ({"landuse": "forest"}, forest)],
        [({"landuse": "forest"}, forest), ({"landuse": "residential"}, houses)],
    ):
        src = LocalOsmSource(_geojson(tmp_path / "osm.geojson", order))
        classes = rasterize_labels(src, v3_label_set, TILE).data[0]
        built, wood = v3_label_set.value_of("built-up"), v3_label_set.value_of("forest")
        assert (classes == built).sum() == 100
        assert (classes == wood).sum() == 20 * 32 - 100
        assert (classes[:, 20:] == 0).all()  # east of the forest: no polygon -> unknown


def test_all_touched_is_off(tmp_path: Path, v3_label_set: LabelSet):
    # an 8 m square touching 4 pixels but covering none of their centres; a strip over one row of centres
    tiny = box(500006, 6000306, 500014, 6000314)
    strip = box(500000, 6000100, 500320, 6000110)
    src = LocalOsmSource(
        _geojson(tmp_path / "osm.geojson", [({"landuse": "farmland"}, tiny), ({"natural": "water"}, strip)])
    )
    classes = rasterize_labels(src, v3_label_set, TILE).data[0]
    assert (classes == v3_label_set.value_of("farmland")).sum() == 0
    assert (classes == v3_label_set.value_of("water")).sum() == 32


def test_label_tiles_colormap_resume_and_cache(sample_source, v3_label_set, data_sample_tiles, tmp_path: Path):
    class CountingSource(LocalOsmSource):
        calls = 0

        def features(self, bbox: BBox, when: date, osm_filter: str, *, clip: bool = True):
            CountingSource.calls += 1
            return super().features(bbox, when, osm_filter, clip=clip)

    src = CountingSource(sample_source.path)
    tiles = data_sample_tiles[:3]
    paths = label_tiles(src, v3_label_set, tiles, tmp_path / "a", cache_dir=tmp_path / "cache")
    assert CountingSource.calls == 3  # one query per tile for every class
    with rasterio.open(paths[0]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.descriptions == ("class",)
        cmap = ds.colormap(1)
        for value, rgba in v3_label_set.colormap().items():
            assert cmap[value] == rgba
        assert ds.tags()["LABEL_SET"] == "v3"
    calls = CountingSource.calls
    label_tiles(src, v3_label_set, tiles, tmp_path / "a", cache_dir=tmp_path / "cache")  # resume
    copies = label_tiles(src, v3_label_set, tiles, tmp_path / "b", cache_dir=tmp_path / "cache")  # from the cache
    assert CountingSource.calls == calls
    for p, q in zip(paths, copies, strict=True):
        with rasterio.open(p) as a, rasterio.open(q) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    # another label set (other fingerprint) is not served from the cache
    grass_only = LabelSet(name="grass", classes=[v3_label_set.classes[-1]])
    other = label_tiles(src, grass_only, tiles[:1], tmp_path / "b", cache_dir=tmp_path / "cache")
    assert CountingSource.calls == calls + 1
    with rasterio.open(other[0]) as ds:
        assert set(np.unique(ds.read(1))) <= {0, 1}


def test_bad_label_set_and_filter(tmp_path: Path, sample_source, data_sample_tiles):
    with pytest.raises(ConfigError) as err:
        LabelSet.from_yaml(tmp_path / "missing.yaml")
    assert err.value.field == "label_set"
    broken = LabelSet(name="broken", classes=[{"name": "x", "osm_filter": "landuse=forest or", "color": "#112233"}])
    with pytest.raises(FilterSyntaxError) as syn:
        label_tiles(sample_source, broken, data_sample_tiles[:1], tmp_path / "out")
    assert syn.value.position == 17 and data_sample_tiles[0].id in str(syn.value)
    assert not list((tmp_path / "out").glob("*.tif"))
