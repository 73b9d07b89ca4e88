"""Build `data/sample/clouds/eolearn_scenes.npz`: real Sentinel-2 scenes with real clouds, CLM and SCL.

Source: eo-learn's `example_data/TestEOPatch` (github.com/sentinel-hub/eo-learn, MIT, (c) Sinergise; contains
modified Copernicus Sentinel data), read from a git mirror of the repository::

    .venv/bin/python scripts/make_eolearn_scenes.py --repo /path/to/eo-learn.git [--out data/sample/clouds]

Two sets over the same 1 km patch in Slovenia (EPSG:32633, 101 x 100 px; see data/sample/README.md):

- `summer_*` (commit 303e758): `example_data/REFERENCE_SCENES.npy` — the first five acquisitions of the patch
  (2015-07-11 .. 2015-09-09), all 13 Sentinel-2 **L1C** bands as top-of-atmosphere reflectance, two of them
  cloudy — with their s2cloudless cloud masks (`mask/CLM.npy`, same dates). No SCL exists for these dates.
- `winter_*` (commit c70dbc5): the first five acquisitions of the older patch version (2016-12-12 .. 2017-02-20):
  the Sen2Cor scene classification `mask/SCL.npy`, `mask/CLM.npy` and `data/REFERENCE_SCENES.npy` — the L1C
  bands where eo-learn kept them (SCL 4..7) and NaN elsewhere (stored here as 0).

Bands are kept in lulc's order B01..B12 without B10 (cirrus, L1C only), as uint16 reflectance x 10000.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("make_eolearn_scenes")

SUMMER_COMMIT = "303e75855880531d519264f847e7c6b2fb97104d"
WINTER_COMMIT = "c70dbc5981f6bc72241b07c0f8e0a068bcccc2ea"
PATCH = "example_data/TestEOPatch"
L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
KEEP = [i for i, b in enumerate(L1C_BANDS) if b != "B10"]


class _DatetimesOnly(pickle.Unpickler):
    """Unpickles eo-learn's old `timestamp.pkl` (a list of datetimes) and refuses any other class."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("datetime", "datetime"):
            return dt.datetime
        raise pickle.UnpicklingError(f"refusing {module}.{name}")


def _show(repo: Path, commit: str, path: str) -> bytes:
    return subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], check=True, capture_output=True).stdout


def _npy(repo: Path, commit: str, path: str) -> np.ndarray:
    return np.load(io.BytesIO(_show(repo, commit, path)))


def _dn(bands: np.ndarray) -> np.ndarray:
    """(T, H, W, 13) float reflectance -> (T, 12, H, W) uint16 x 10000, NaN -> 0."""
    kept = bands[..., KEEP].transpose(0, 3, 1, 2)
    return np.where(np.isfinite(kept), np.round(np.nan_to_num(kept) * 10000), 0).astype(np.uint16)


def _dates_of(scenes: np.ndarray, ndvi: np.ndarray) -> list[int]:
    """The date index of each scene: the patch's NDVI of that date equals the scene's (B08 - B04) / (B08 + B04)."""
    out = []
    for scene in scenes:
        own = (scene[..., 7] - scene[..., 3]) / (scene[..., 7] + scene[..., 3])
        diff = np.nanmean(np.abs(ndvi - own), axis=(1, 2))
        best = int(np.nanargmin(diff))
        assert diff[best] < 1e-4, f"no date matches a reference scene (closest NDVI differs by {diff[best]})"
        out.append(best)
    return out


def build(repo: Path) -> dict[str, np.ndarray]:
    """The arrays of the npz; eo-learn's reference scenes are not in date order, so each is matched to its date."""
    summer = _npy(repo, SUMMER_COMMIT, "example_data/REFERENCE_SCENES.npy")
    summer_idx = _dates_of(summer, _npy(repo, SUMMER_COMMIT, f"{PATCH}/data/NDVI.npy")[..., 0])
    summer_dates = json.loads(_show(repo, SUMMER_COMMIT, f"{PATCH}/timestamps.json"))
    winter = _npy(repo, WINTER_COMMIT, f"{PATCH}/data/REFERENCE_SCENES.npy")
    winter_idx = _dates_of(winter, _npy(repo, WINTER_COMMIT, f"{PATCH}/data/NDVI.npy")[..., 0])
    stamps = _DatetimesOnly(io.BytesIO(_show(repo, WINTER_COMMIT, f"{PATCH}/timestamp.pkl"))).load()
    s_order, w_order = np.argsort(summer_idx), np.argsort(winter_idx)
    summer, summer_idx = summer[s_order], sorted(summer_idx)
    winter, winter_idx = winter[w_order], sorted(winter_idx)
    bbox = json.loads(_show(repo, SUMMER_COMMIT, f"{PATCH}/bbox.geojson"))["coordinates"][0]
    xs, ys = [p[0] for p in bbox], [p[1] for p in bbox]
    return {
        "bands": np.array([L1C_BANDS[i] for i in KEEP]),
        "crs": np.array("EPSG:32633"),
        "bbox": np.array([min(xs), min(ys), max(xs), max(ys)]),
        "summer_dates": np.array([summer_dates[i] for i in summer_idx]),
        "summer_bands": _dn(summer),
        "summer_clm": _npy(repo, SUMMER_COMMIT, f"{PATCH}/mask/CLM.npy")[summer_idx, ..., 0].astype(np.uint8),
        "winter_dates": np.array([stamps[i].isoformat() for i in winter_idx]),
        "winter_bands": _dn(winter),
        "winter_scl": _npy(repo, WINTER_COMMIT, f"{PATCH}/mask/SCL.npy")[winter_idx, ..., 0].astype(np.uint8),
        "winter_clm": _npy(repo, WINTER_COMMIT, f"{PATCH}/mask/CLM.npy")[winter_idx, ..., 0].astype(np.uint8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True, help="git directory of github.com/sentinel-hub/eo-learn")
    parser.add_argument("--out", type=Path, default=Path("data/sample/clouds"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    arrays = build(args.repo)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "eolearn_scenes.npz"
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]
    log.info("wrote %s (%d KB)", path, path.stat().st_size // 1024)


if __name__ == "__main__":
    main()
