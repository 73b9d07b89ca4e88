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


# --- real scenes: real Sentinel-2 bands, real clouds, real CLM and SCL (eo-learn's TestEOPatch) -------------------

SCENES = REPO / "data" / "sample" / "clouds" / "eolearn_scenes.npz"
SUMMER = (date(2015, 7, 1), date(2015, 9, 30))
"""Five real acquisitions with real clouds (two cloudy), real L1C bands and real s2cloudless CLM; no SCL (0)."""
WINTER = (date(2016, 12, 1), date(2017, 2, 28))
"""Five real acquisitions with the real Sen2Cor SCL; bands only where eo-learn kept them (SCL 4..7)."""


@dataclass(frozen=True)
class Scene(Observation):
    """A real observation of eo-learn's Slovenian patch; `data` is 0 where the source holds no band values."""

    data: np.ndarray  # (H, W) 0/1
    flagged: np.ndarray  # (H, W) SCL class in SCL_INVALID or CLM 1

    @property
    def cloud_percent(self) -> float:
        return float(self.flagged.mean() * 100)


def scene_grid() -> tuple[CRS, Affine, int, int]:
    """CRS, 10 m transform (anchored at the patch's north-west corner), width and height of the real scenes."""
    with np.load(SCENES) as z:
        west, _, _, north = z["bbox"]
        _, _, h, w = z["summer_bands"].shape
        return CRS.from_user_input(str(z["crs"])), Affine(10.0, 0, west, 0, -10.0, north), w, h


@functools.lru_cache(maxsize=1)
def real_scenes() -> tuple[Scene, ...]:
    """The ten real scenes in date order (summer 2015, then winter 2016/17).

    Summer scenes carry their real bands everywhere (clouds included) and SCL 0 (none exists for them; the real
    CLM flags the clouds). Winter scenes carry their real SCL and CLM; where eo-learn kept no band values (SCL 2,
    3, 8..11) a flagged pixel gets the flat `CLOUD_DN` (masked by its real flags anyway) and an unflagged one
    `data` 0 (no data).
    """
    from lulc_core.imagery.clouds import cloud_invalid

    crs, transform, _, _ = scene_grid()
    out = []
    with np.load(SCENES) as z:
        for season in ("summer", "winter"):
            bands = z[f"{season}_bands"].astype(np.float64)
            clm = z[f"{season}_clm"].astype(np.float64)
            scl = z["winter_scl"].astype(np.float64) if season == "winter" else np.zeros_like(clm)
            for i, stamp in enumerate(z[f"{season}_dates"]):
                flagged = cloud_invalid(scl[i], clm[i])
                missing = (bands[i] == 0).all(axis=0)
                s2 = bands[i].copy()
                s2[:, missing & flagged] = CLOUD_DN
                day = date.fromisoformat(str(stamp)[:10])
                data = (~(missing & ~flagged)).astype(np.float64)
                out.append(Scene(day, s2, scl[i], clm[i], crs, transform, data, flagged))
    return tuple(out)


def scenes_in(frame: tuple[date, date]) -> list[Scene]:
    """The real scenes inside `frame` (inclusive)."""
    return [s for s in real_scenes() if frame[0] <= s.day <= frame[1]]


def scene_tile(frame: tuple[date, date], tile_id: str = "slovenia") -> Tile:
    """The whole real-scene patch as a 10 m tile over `frame`."""
    crs, transform, w, h = scene_grid()
    west, north = transform.c, transform.f
    return Tile(
        id=tile_id,
        crs=f"EPSG:{crs.to_epsg()}",
        bounds=(west, north - 10.0 * h, west + 10.0 * w, north),
        resolution=10.0,
        start=frame[0],
        end=frame[1],
    )
