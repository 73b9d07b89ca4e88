"""Cloud masking and temporal compositing of Sentinel-2 observations, shared by every imagery store.

A Sentinel-2 L2A pixel is invalid when its scene classification (SCL) says saturated/defective (1), cloud shadow
(3), cloud medium (8) or high probability (9) or thin cirrus (10), or when the cloud mask (CLM, Sentinel Hub's
s2cloudless) is 1. The observations of a time frame (dates x bands x H x W, NaN where invalid) become one image:

- `median`: per band, the median of the valid observations (nanmedian) — robust against undetected cloud edges
  and haze, and it uses every clear look;
- `least_cloudy`: per pixel, the first valid observation in the order of the scenes' cloud cover (least cloudy
  scene first) — real reflectances of one date where possible, gaps filled from the next scene.

A pixel without any valid observation stays NaN (nodata): the loss and the metrics ignore it in training, and it
becomes `unknown` in predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

SCL_INVALID = (1, 3, 8, 9, 10)
"""SCL classes that are not a clear view of the surface: saturated/defective, cloud shadow, cloud medium
probability, cloud high probability, thin cirrus."""

COMPOSITES = ("median", "least_cloudy")


def cloud_invalid(scl: np.ndarray | None, clm: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of pixels flagged by SCL (classes in `SCL_INVALID`) or by CLM (1 = cloud); shapes must match."""
    if scl is None and clm is None:
        raise ValueError("cloud_invalid needs SCL or CLM")
    ref = scl if scl is not None else clm
    assert ref is not None
    bad = np.zeros(ref.shape, dtype=bool)
    if scl is not None:
        bad |= np.isin(np.nan_to_num(scl, nan=0).astype(np.int64), SCL_INVALID)
    if clm is not None:
        bad |= np.nan_to_num(clm, nan=0) >= 1
    return bad


def composite(stack: np.ndarray, method: str = "median", order: Sequence[int] | None = None) -> np.ndarray:
    """One image from observations (T, B, H, W) with NaN where invalid.

    Args:
        stack: float observations; NaN marks an invalid value.
        method: "median" (per-band median of valid values) or "least_cloudy" (per pixel the first valid value in
            `order`).
        order: observation indexes, least cloudy first (least_cloudy only; default: as given).

    Returns:
        (B, H, W) float32 with NaN where no observation is valid.
    """
    if stack.ndim != 4:
        raise ValueError(f"observations must be (T, B, H, W), got shape {stack.shape}")
    if method not in COMPOSITES:
        raise ValueError(f"composite {method!r} is not one of {COMPOSITES}")
    if stack.shape[0] == 1:
        return stack[0].astype(np.float32, copy=True)
    if method == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            return np.nanmedian(stack, axis=0).astype(np.float32)
    idx = list(order) if order is not None else list(range(stack.shape[0]))
    out = np.full(stack.shape[1:], np.nan, dtype=np.float32)
    for i in idx:
        gap = np.isnan(out)
        if not gap.any():
            break
        out[gap] = stack[i][gap]
    return out


def mask_observation(bands: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """`bands` (B, H, W) as float32 with NaN where `invalid` (H, W) is set."""
    out = bands.astype(np.float32, copy=True)
    out[:, invalid] = np.nan
    return out


def valid_share(data: np.ndarray) -> float:
    """Share of pixels whose every band is finite, 0..1."""
    if data.size == 0:
        return 0.0
    return float(np.isfinite(data).all(axis=0).mean())
