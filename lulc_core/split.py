"""Spatial tile splits: whole blocks of tiles go to train, validation or test (TorchGeo's habit).

All time frames of a location and all tiles of a block share a split, and separate UTM zones never share a block,
so neighbouring tiles meet across splits only along block borders. Kept apart from :mod:`lulc_core.dataset` so
that the steps that only split (statistics) do not import torch and Lightning.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lulc_core.errors import InputError
from lulc_core.geo import Tile
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)


class TileSplit(BaseModel):
    """Tile ids of the train, validation and test splits (disjoint)."""

    model_config = ConfigDict(extra="forbid")

    train: list[str] = Field(description="Tile ids used for training.")
    val: list[str] = Field(default_factory=list, description="Tile ids for validation (early stopping).")
    test: list[str] = Field(default_factory=list, description="Tile ids held out for evaluation.")
    seed: int | None = Field(default=None, description="Seed that produced the split.")
    block_size_m: float | None = Field(default=None, description="Edge of the spatial blocks in metres.")

    @model_validator(mode="after")
    def _disjoint(self) -> TileSplit:
        seen: dict[str, str] = {}
        for name in ("train", "val", "test"):
            for tile_id in getattr(self, name):
                if tile_id in seen:
                    raise ValueError(f"tile {tile_id!r} is in both {seen[tile_id]} and {name}; splits must be disjoint")
                seen[tile_id] = name
        return self

    def ids(self, stage: str) -> list[str]:
        """Tile ids of `stage` ("train", "val" or "test")."""
        if stage not in ("train", "val", "test"):
            raise InputError("stage", f"{stage!r} is not a split", "use train, val or test")
        return list(getattr(self, stage))

    def save(self, path: str | Path) -> Path:
        """Write the split as JSON (atomically)."""
        with atomic_path(path) as tmp:
            tmp.write_text(self.model_dump_json(indent=2))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> TileSplit:
        """Read a split written by :meth:`save`."""
        p = Path(path)
        if not p.is_file():
            raise InputError("split", f"file {str(p)!r} does not exist", "run `lulc model split` first")
        return cls.model_validate_json(p.read_text())


def _location_key(tile: Tile) -> tuple[str, tuple[float, ...]]:
    """Tiles of the same place in different time frames share this key."""
    return tile.crs, tuple(round(b, 3) for b in tile.bounds)


def _blocks(tiles: Sequence[Tile], k: int) -> dict[tuple[Any, ...], list[Tile]]:
    """Group tiles into blocks of k x k tile edges per CRS (UTM zone), keyed by block position."""
    by_crs: dict[str, list[Tile]] = defaultdict(list)
    for t in tiles:
        by_crs[t.crs].append(t)
    blocks: dict[tuple[Any, ...], list[Tile]] = defaultdict(list)
    for crs, group in by_crs.items():
        edge = float(np.median([t.bounds[2] - t.bounds[0] for t in group])) * k
        for t in group:
            cx, cy = (t.bounds[0] + t.bounds[2]) / 2, (t.bounds[1] + t.bounds[3]) / 2
            blocks[(crs, math.floor(cx / edge), math.floor(cy / edge))].append(t)
    return blocks


def split_tiles(
    tiles: list[Tile],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    block_tiles: int | None = None,
) -> TileSplit:
    """Split tiles into train/val/test by spatial blocks, deterministically for a seed.

    Tiles are grouped per CRS into square blocks of ``block_tiles`` x ``block_tiles`` tile edges (default: the
    largest block that still leaves about ten blocks, so that the fractions can be met); all time frames of a
    place fall into the same block. Blocks are shuffled with `seed` and dealt to test, then validation, until
    each holds its share of tiles; the rest train. With three or more tiles every split whose fraction is
    positive gets at least one tile (blocks shrink to single places, then to single tiles, if needed).

    Args:
        tiles: the tiles of the area grid (ids must be unique).
        val_fraction: share of tiles for validation, 0 <= f < 1.
        test_fraction: share of tiles for testing; val_fraction + test_fraction < 1.
        seed: seed of the block shuffle.
        block_tiles: block edge in tiles; None chooses it from the number of tiles.
    """
    if not tiles:
        raise InputError("tiles", "no tiles to split", "build the area grid first (`lulc data grid`)")
    for name, value in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
        if not 0 <= value < 1:
            raise InputError(name, f"{value} is outside [0, 1)", "give a share of tiles such as 0.2")
    if val_fraction + test_fraction >= 1:
        raise InputError("data.val_fraction", "val_fraction + test_fraction must be below 1", "leave tiles to train")
    if block_tiles is not None and block_tiles < 1:
        raise InputError("block_tiles", f"{block_tiles} must be at least 1")
    ids = [t.id for t in tiles]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError("tiles", f"tile ids repeat: {dupes[:5]}", "give each tile a unique id")

    n = len(tiles)
    wanted = [f for f in (val_fraction, test_fraction) if f > 0]
    needed_splits = 1 + len(wanted)
    locations: dict[tuple[str, tuple[float, ...]], list[Tile]] = defaultdict(list)
    for t in tiles:
        locations[_location_key(t)].append(t)

    k = block_tiles
    if k is None:
        min_blocks = max(needed_splits, math.ceil(2 / min(wanted))) if wanted else 1
        k = 1
        while k < 16 and len(_blocks(tiles, k + 1)) >= min_blocks:
            k += 1
    groups: list[list[Tile]] = [_merge_locations(b, locations) for b in _blocks(tiles, k).values()]
    if n >= 3 and len(groups) < needed_splits:
        groups = list(locations.values())
        if len(groups) < needed_splits:
            log.warning("only %d places for %d splits: splitting by single tiles (time frames)", len(groups), n)
            groups = [[t] for t in tiles]
    groups = [sorted(g, key=lambda t: t.id) for g in groups]
    groups.sort(key=lambda g: g[0].id)
    order = np.random.default_rng(seed).permutation(len(groups))

    def target(fraction: float) -> int:
        if fraction <= 0:
            return 0
        return max(1, round(fraction * n)) if n >= 3 else 0

    targets = {"test": target(test_fraction), "val": target(val_fraction)}
    if n == 2 and wanted:
        targets["val" if val_fraction > 0 else "test"] = 1
    assigned: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for pos, idx in enumerate(order):
        remaining = len(groups) - pos - 1
        stage = "train"
        for name in ("test", "val"):
            if len(assigned[name]) >= targets[name]:
                continue
            # Take another block only if enough remain for every other split that is still empty.
            still_empty = [s for s in ("train", "test", "val") if s != name and not assigned[s]]
            if remaining >= sum(1 for s in still_empty if s == "train" or targets[s] > 0):
                stage = name
                break
        assigned[stage].extend(t.id for t in groups[int(idx)])
    edge = float(np.median([t.bounds[2] - t.bounds[0] for t in tiles])) * k
    split = TileSplit(
        train=sorted(assigned["train"]),
        val=sorted(assigned["val"]),
        test=sorted(assigned["test"]),
        seed=seed,
        block_size_m=edge,
    )
    log.info(
        "split %d tiles in %d blocks of %dx%d tiles: %d train, %d val, %d test",
        n,
        len(groups),
        k,
        k,
        len(split.train),
        len(split.val),
        len(split.test),
    )
    return split


def _merge_locations(block: list[Tile], locations: dict[tuple[str, tuple[float, ...]], list[Tile]]) -> list[Tile]:
    """A block's tiles plus every other time frame of its places (they never split apart)."""
    out = {t.id: t for t in block}
    for t in block:
        for other in locations[_location_key(t)]:
            out[other.id] = other
    return list(out.values())


# ----------------------------------------------------------------------------------------------- rasters
