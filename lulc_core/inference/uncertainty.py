"""Uncertainty by test-time augmentation (TTA).

Every window is predicted under several of the 8 dihedral transforms (rot90 x flip), each prediction is mapped
back, and the mean probability and mean squared probability are kept. From those, per pixel:

- variance: the largest, over the classes, of a class probability's variance across the augmentations (0..0.25;
  the original utility's `max(var(p, axis=augmentations), axis=classes)`);
- entropy: Shannon entropy of the mean probabilities, divided by ln(N) so that it lies in 0..1 (as the
  original utility's `entropy(p, base=N)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Variant = tuple[int, bool]
"""(quarter turns, horizontal flip first)."""

# Ordered so that any prefix is a useful subset: identity, flip, half turn, ... .
DIHEDRAL: tuple[Variant, ...] = (
    (0, False),
    (0, True),
    (2, False),
    (2, True),
    (1, False),
    (1, True),
    (3, False),
    (3, True),
)


def variants(n: int) -> tuple[Variant, ...]:
    """The first `n` (1..8) dihedral variants."""
    if not 1 <= n <= len(DIHEDRAL):
        raise ValueError(f"tta variants must be 1..{len(DIHEDRAL)}, got {n}")
    return DIHEDRAL[:n]


def augment(x: torch.Tensor, variant: Variant) -> torch.Tensor:
    """Apply a dihedral transform to (B, C, H, W)."""
    k, flip = variant
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def invert(y: torch.Tensor, variant: Variant) -> torch.Tensor:
    """Undo `augment` on a (B, C, H, W) prediction."""
    k, flip = variant
    if k:
        y = torch.rot90(y, -k, dims=(2, 3))
    return torch.flip(y, dims=(3,)) if flip else y


def tta_predictor(
    probabilities: Callable[[torch.Tensor], torch.Tensor], n_variants: int
) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]:
    """Wrap a batch -> probabilities function into one returning (mean, mean of squares) over augmentations."""
    chosen = variants(n_variants)

    def predict(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        total: torch.Tensor | None = None
        squares: torch.Tensor | None = None
        for variant in chosen:
            p = invert(probabilities(augment(x, variant)), variant)
            total = p if total is None else total + p
            squares = p * p if squares is None else squares + p * p
        assert total is not None and squares is not None
        return total / len(chosen), squares / len(chosen)

    return predict


def variance_and_entropy(mean: np.ndarray, mean_squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel variance (the largest over the classes) and normalised entropy, from (N, h, w) moments."""
    variance = np.clip((mean_squares - mean * mean).max(axis=0), 0.0, 0.25).astype(np.float32)
    return variance, normalised_entropy(mean)


def normalised_entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy of class probabilities (N, h, w) over ln(N): 0 certain .. 1 uniform."""
    n = p.shape[0]
    if n < 2:
        return np.zeros(p.shape[1:], np.float32)
    q = np.clip(p, 1e-12, 1.0)
    h = -(q * np.log(q)).sum(axis=0) / math.log(n)
    return np.clip(h, 0.0, 1.0).astype(np.float32)
