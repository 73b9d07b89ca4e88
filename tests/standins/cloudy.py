"""Cloudy Sentinel-2 observations for the stand-ins: real cloud shapes over a real clear scene.

Four real s2cloudless cloud masks of four real acquisitions (eo-learn's TestEOPatch, see data/sample/README.md,
`clouds/eolearn_clm.npz`) are resized onto the Danish sample patch `637U_59R_1_3` (its real, cloud-free L2A
reflectances) and dated inside its time frame. Where a mask says cloud, the observation carries SCL 9 (cloud high
probability), CLM 1 and a bright, flat cloud reflectance; elsewhere SCL 4 (vegetation; the sample patch has no
cloud pixel in its land-cover map) and the real reflectance. The clear scene is the truth a composite is judged by.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from lulc_core.geo import Tile

REPO = Path(__file__).resolve().parents[2]
PATCH = "637U_59R_1_3"
S2_FILE = REPO / "data" / "sample" / "imagery" / f"{PATCH}_s2.tif"
MASKS = REPO / "data" / "sample" / "clouds" / "eolearn_clm.npz"
DATES = (date(2017, 10, 26), date(2017, 10, 27), date(2017, 10, 28), date(2017, 11, 1))
CLOUD_DN = 7200.0  # bright and flat across bands, as thick cloud is


@dataclass(frozen=True)
class Observation:
    """One dated Sentinel-2 observation on the patch grid."""

    day: date
    s2: np.ndarray  # (12, H, W) DN, harmonised
    scl: np.ndarray  # (H, W)
    clm: np.ndarray  # (H, W) 0/1
    crs: CRS
    transform: Affine

    @property
    def cloud_percent(self) -> float:
        return float(self.clm.mean() * 100)


@functools.lru_cache(maxsize=1)
def clear_scene() -> tuple[np.ndarray, CRS, Affine]:
    """The real clear S2 scene of the patch (12, H, W) float64, its CRS and transform."""
    with rasterio.open(S2_FILE) as src:
        return src.read().astype(np.float64), src.crs, src.transform


@functools.lru_cache(maxsize=1)
def observations() -> tuple[Observation, ...]:
    """The four cloudy observations, in date order."""
    s2, crs, transform = clear_scene()
    masks = np.load(MASKS)["clm"]
    _, h, w = s2.shape
    rows = np.arange(h) * masks.shape[1] // h
    cols = np.arange(w) * masks.shape[2] // w
    out = []
    for day, mask in zip(DATES, masks, strict=True):
        cloud = mask[np.ix_(rows, cols)].astype(bool)
        bands = s2.copy()
        bands[:, cloud] = CLOUD_DN
        scl = np.where(cloud, 9.0, 4.0)
        out.append(Observation(day, bands, scl, cloud.astype(np.float64), crs, transform))
    return tuple(out)


def cloudy_tile(size_m: float = 2240.0, tile_id: str = "cloudy") -> Tile:
    """A tile on the patch grid from its north-west corner, `size_m` wide, over the cloudy dates."""
    _, crs, transform = clear_scene()
    west, north = transform.c, transform.f
    return Tile(
        id=tile_id,
        crs=f"EPSG:{crs.to_epsg()}",
        bounds=(west, north - size_m, west + size_m, north),
        resolution=10.0,
        start=DATES[0],
        end=DATES[-1],
    )
