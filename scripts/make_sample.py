"""Build the bundled sample area `data/sample/` from the TerraMind/TerraMesh patches in ../shared/data/terramind.

Run from the repository root::

    .venv/bin/python scripts/make_sample.py [--source ../shared/data/terramind] [--out data/sample]

What it writes (all derived from three real 224 x 224 px, 10 m patches; see data/sample/README.md):

- `imagery/<patch>_s2.tif`: Sentinel-2 L2A, 12 bands int16 reflectance x 10000 (B01..B12), harmonised: the
  +1000 offset of processing baseline 04.00 is removed where a patch carries it (decided per patch from the data:
  the darkest band's 1st percentile is above 1000, which no real surface gives without the offset), clipped at 0.
- `imagery/<patch>_s1.tif`: Sentinel-1 RTC backscatter VV, VH as float32 dB.
- `imagery/<patch>_dem.tif`: Copernicus DEM, int16 metres (no ACQUISITION_DATE: a DEM is timeless).
- `osm/sample_osm.geojson`: the ESRI 10 m LULC map polygonised and dressed as OSM tags the v3 label set selects.
- `aoi.geojson`: the three patch footprints (EPSG:4326) with the patch id and a start/end time frame each.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from datetime import date, timedelta
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

from lulc_core.raster import atomic_path

log = logging.getLogger("make_sample")

REPO = Path(__file__).resolve().parents[1]
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S2_OFFSET = 1000
# Acquisition dates from ../shared/data/README.md and the files' `datetime` tags (S2 = LULC date).
PATCHES: dict[str, dict[str, str]] = {
    "637U_59R_1_3": {"place": "North Jutland, Denmark", "s2": "2017-10-30", "s1": "2017-10-30"},
    "433D_629L_3_1": {"place": "Araucania, Chile", "s2": "2020-04-08", "s1": "2020-04-11"},
    "38D_378R_2_3": {"place": "Tanzania", "s2": "2023-06-10", "s1": "2023-06-10"},
}
TIME_FRAME_DAYS = 5
# ESRI/Impact Observatory 10 m LULC class -> OSM tags. Classes 1, 2, 4, 5, 9 get tags the v3 label set selects;
# 3, 6, 7, 8 get tags v3 does not select (they stay class 0 "unknown"); 0 (no data) is dropped.
ESRI_TO_OSM: dict[int, tuple[str, dict[str, str]]] = {
    1: ("water", {"natural": "water"}),
    2: ("trees", {"landuse": "forest"}),
    3: ("flooded_vegetation", {"natural": "wetland"}),
    4: ("crops", {"landuse": "farmland"}),
    5: ("built_area", {"landuse": "residential"}),
    6: ("bare_ground", {"natural": "bare_rock"}),
    7: ("snow_ice", {"natural": "glacier"}),
    8: ("clouds", {}),
    9: ("rangeland", {"landuse": "meadow"}),
}
SIMPLIFY_M = 3.0


def _write(path: Path, data: np.ndarray, profile: dict, names: list[str], tags: dict[str, str]) -> None:
    prof = {**profile, "count": data.shape[0], "dtype": str(data.dtype), "compress": "deflate", "zlevel": 9}
    prof["predictor"] = 3 if data.dtype.kind == "f" else 2
    prof.update(tiled=False, blockysize=16)
    prof.pop("blockxsize", None)
    prof.pop("nodata", None)
    prof["driver"] = "GTiff"
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **prof) as dst:
        dst.write(data)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(**tags)


def _has_offset(s2: np.ndarray) -> bool:
    """True when the darkest band's 1st percentile is above the offset: baseline 04.00 data (+1000)."""
    p1 = np.percentile(s2.reshape(s2.shape[0], -1), 1, axis=1)
    return bool(p1.min() > S2_OFFSET)


def build_imagery(src: Path, out: Path, patch: str, meta: dict[str, str]) -> dict[str, object]:
    """Write the S2, S1 and DEM GeoTIFFs of one patch; return facts for the README."""
    common = {"SOURCE": "TerraMesh validation sample via github.com/IBM/terramind examples/", "PATCH": patch}
    with rasterio.open(src / "S2L2A" / f"{patch}.tif") as ds:
        s2, profile = ds.read(), ds.profile
    offset = _has_offset(s2)
    if offset:
        s2 = np.clip(s2.astype(np.int32) - S2_OFFSET, 0, None).astype(np.int16)
    _write(
        out / "imagery" / f"{patch}_s2.tif",
        s2,
        profile,
        S2_BANDS,
        {
            **common,
            "ACQUISITION_DATE": meta["s2"],
            "SENSOR": "Sentinel-2 L2A",
            "SCALE": "reflectance x 10000",
            "HARMONISED": f"offset {S2_OFFSET} removed" if offset else "no offset present",
        },
    )
    s1_tags = {"ACQUISITION_DATE": meta["s1"], "SENSOR": "Sentinel-1 RTC", "UNITS": "dB"}
    dem_tags = {"SENSOR": "Copernicus DEM GLO-30", "UNITS": "m"}
    for folder, suffix, dtype, names, tags in (
        ("S1RTC", "s1", np.float32, ["VV", "VH"], s1_tags),
        ("DEM", "dem", np.int16, ["DEM"], dem_tags),
    ):
        with rasterio.open(src / folder / f"{patch}.tif") as ds:
            data = ds.read().astype(dtype)
        _write(out / "imagery" / f"{patch}_{suffix}.tif", data, profile, names, {**common, **tags})
    return {"offset_removed": offset, "crs": str(profile["crs"])}


def build_osm(src: Path, patch: str) -> gpd.GeoDataFrame:
    """Polygonise the patch's LULC map (no data dropped), simplify lightly, tag as OSM, in EPSG:4326."""
    with rasterio.open(src / "LULC" / f"{patch}.tif") as ds:
        lulc, transform, crs = ds.read(1), ds.transform, ds.crs
    rows = []
    for geom, value in rasterio.features.shapes(lulc, mask=lulc > 0, transform=transform, connectivity=4):
        code = int(value)
        name, tags = ESRI_TO_OSM[code]
        poly = shape(geom).simplify(SIMPLIFY_M, preserve_topology=True)
        if poly.is_empty:
            continue
        rows.append({"esri_lulc": name, "esri_lulc_code": code, **tags, "geometry": poly})
    gdf = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs).to_crs("EPSG:4326")
    gdf["source"] = f"ESRI 10m LULC via TerraMesh patch {patch}"
    return gdf


def footprint(src: Path, patch: str, meta: dict[str, str]) -> dict[str, object]:
    """The patch footprint as a GeoJSON feature in EPSG:4326 with its time frame."""
    with rasterio.open(src / "S2L2A" / f"{patch}.tif") as ds:
        geom = transform_geom(ds.crs, "EPSG:4326", mapping(box(*ds.bounds)), antimeridian_cutting=True, precision=7)
    when = date.fromisoformat(meta["s2"])
    start = min(when, date.fromisoformat(meta["s1"])) - timedelta(days=TIME_FRAME_DAYS)
    end = max(when, date.fromisoformat(meta["s1"])) + timedelta(days=TIME_FRAME_DAYS)
    props = {"patch": patch, "place": meta["place"], "start": start.isoformat(), "end": end.isoformat()}
    return {"type": "Feature", "properties": props, "geometry": geom}


def main() -> None:
    """Build data/sample from ../shared/data/terramind."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "terramind")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    out: Path = args.out
    (out / "imagery").mkdir(parents=True, exist_ok=True)
    (out / "osm").mkdir(parents=True, exist_ok=True)
    (out / "lulc").mkdir(parents=True, exist_ok=True)
    features, frames = [], []
    for patch, meta in PATCHES.items():
        # The land-cover map unchanged: the test stand-ins derive SCL and CORINE from it (no ../shared needed).
        shutil.copyfile(args.source / "LULC" / f"{patch}.tif", out / "lulc" / f"{patch}.tif")
        facts = build_imagery(args.source, out, patch, meta)
        log.info("%s: imagery written (%s, S2 offset removed: %s)", patch, facts["crs"], facts["offset_removed"])
        frames.append(build_osm(args.source, patch))
        features.append(footprint(args.source, patch, meta))
    osm = gpd.GeoDataFrame(gpd.pd.concat(frames, ignore_index=True), geometry="geometry", crs="EPSG:4326").reset_index(
        drop=True
    )
    osm.insert(0, "osm_id", [f"sample/{i}" for i in range(len(osm))])
    osm_path = out / "osm" / "sample_osm.geojson"
    with atomic_path(osm_path) as tmp:
        osm.to_file(tmp, driver="GeoJSON", layer="sample_osm", COORDINATE_PRECISION=7, WRITE_BBOX="NO")
    log.info("%s: %d polygons", osm_path, len(osm))
    aoi = {"type": "FeatureCollection", "name": "sample_aoi", "features": features}
    with atomic_path(out / "aoi.geojson") as tmp:
        tmp.write_text(json.dumps(aoi, indent=1) + "\n")
    log.info("%s: %d parts", out / "aoi.geojson", len(features))


if __name__ == "__main__":
    main()
