"""Helpers the components call at run time (inside the project image, or in-process with kfp.local).

Components are serialised as source, so each imports what it needs inside its body; this module holds the few
adapter chores they share: rebuilding the RunConfig from its JSON parameter, applying the pipeline's typed
overrides, picking the cache directory, selecting a shard of tiles and merging shard directories.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from lulc_core.config import RunConfig, deep_merge, format_validation_error
from lulc_core.errors import ConfigError, InputError
from lulc_core.geo import Tile, TimeRange

log = logging.getLogger(__name__)

TILES_FILE = "tiles.geojson"
"""File name of the tile grid inside the `tiles` Dataset directory."""
CACHE_ENV = "LULC_CACHE_DIR"
T = TypeVar("T")
"""Set by the pipeline when a PVC is mounted as the download cache."""


def load_config(config_json: str) -> RunConfig:
    """Rebuild the RunConfig from the JSON string every component receives."""
    if not config_json or not config_json.strip():
        raise ConfigError("run_config", "is empty", "pass RunConfig.model_dump_json() (lulc pipeline compile does)")
    try:
        return RunConfig.model_validate_json(config_json)
    except ValidationError as exc:
        raise format_validation_error(exc, "run_config") from exc


def parse_time_frames(values: Sequence[Any]) -> list[dict[str, str]]:
    """Time frames given as 'YYYY-MM-DD/YYYY-MM-DD' strings or {start, end} mappings."""
    frames = []
    for i, value in enumerate(values):
        if isinstance(value, dict):
            start, end = value.get("start"), value.get("end")
        else:
            start, _, end = str(value).partition("/")
        try:
            tr = TimeRange.model_validate({"start": start, "end": end})
        except (ValidationError, InputError):
            raise InputError(
                f"time_frames[{i}]", f"{value!r} is not a date range", "write 'YYYY-MM-DD/YYYY-MM-DD', start <= end"
            ) from None
        frames.append({"start": tr.start.isoformat(), "end": tr.end.isoformat()})
    return frames


def apply_overrides(
    config_json: str,
    *,
    aoi_bbox: Sequence[float] | None = None,
    aoi_file: str = "",
    time_frames: Sequence[Any] | None = None,
    label_set: str = "",
    imagery_store: str = "",
    model_variant: str = "",
    epochs: int = 0,
    registry: str = "",
) -> RunConfig:
    """The run configuration with the pipeline's typed parameters applied (empty/zero values keep the config)."""
    base = load_config(config_json).model_dump(mode="json")
    over: dict[str, Any] = {}
    if aoi_bbox and aoi_file:
        raise InputError("aoi_bbox", "both aoi_bbox and aoi_file are set", "give only one of them")
    if aoi_bbox:
        over["area"] = {"bbox": [float(v) for v in aoi_bbox], "aoi": None}
    if aoi_file:
        over["area"] = {"aoi": aoi_file, "bbox": None}
    if time_frames:
        over.setdefault("area", {})["time_frames"] = parse_time_frames(time_frames)
    if label_set:
        over["labels"] = {"label_set": label_set}
    if imagery_store:
        over["imagery"] = {"store": imagery_store}
    if model_variant:
        over["model"] = {"variant": model_variant}
    if epochs:
        over["training"] = {"epochs": epochs}
    if registry:
        over["registry"] = {"backend": registry}
    try:
        return RunConfig.model_validate(deep_merge(base, over))
    except ValidationError as exc:
        raise format_validation_error(exc) from exc


CONFIGURE_OUTPUTS = ("full", "area_grid", "imagery", "labels", "statistics", "train", "evaluate", "deploy")
"""The configure step's outputs, in order: the whole configuration, then the slice of each step that takes one."""


def configure_run(config_json: str, deploy_target: str = "none", **overrides: Any) -> tuple[str, ...]:
    """The configure step: overrides applied, then the whole RunConfig JSON and each step's slice, as
    `CONFIGURE_OUTPUTS`."""
    from lulc_core.config import check_deploy_target
    from lulc_core.corine import check_corine_config
    from lulc_core.steps import step_configs

    cfg = apply_overrides(config_json, **overrides)
    check_deploy_target(cfg, deploy_target, os.environ)  # refused now, not after training in the deploy step
    check_corine_config(cfg, credentials=False)  # credentials are the labels step's secret, not this step's
    log.info("run %s, config %s", cfg.name, cfg.fingerprint())
    slices = {"full": cfg.model_dump_json(), **step_configs(cfg)}
    return tuple(slices[name] for name in CONFIGURE_OUTPUTS)


def cache_dir(cfg: RunConfig, kind: str) -> Path:
    """Download cache for `kind` (imagery, osm, labels): the mounted PVC, else the configured cache directory."""
    root = os.environ.get(CACHE_ENV) or cfg.imagery.cache_dir or cfg.work_dir / "cache"
    return Path(root) / kind


def shard_count(n_tiles: int, shards: int) -> int:
    """How many shards `n_tiles` tiles are split into (never more shards than tiles, at least one)."""
    return max(1, min(shards, n_tiles))


def select_shard(tiles: Sequence[T], shard: int, shards: int) -> list[T]:
    """Items (tiles, map blocks) of shard `shard` (round robin, so neighbouring ones spread over the shards)."""
    n = shard_count(len(tiles), shards)
    if not 0 <= shard < n:
        raise InputError("shard", f"{shard} is outside 0..{n - 1}", "iterate over the area grid's shard list")
    return list(tiles[shard::n])


def read_shard(tiles_dir: str | Path, shard: int, shards: int) -> list[Tile]:
    """Read the tile grid from its Dataset directory and select one shard."""
    from lulc_core.grid import read_tiles

    return select_shard(read_tiles(Path(tiles_dir) / TILES_FILE), shard, shards)


def merge_dirs(sources: Sequence[str | Path], target: str | Path) -> int:
    """Copy the files of shard directories into one directory; a file present in two shards is an error."""
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for src in sources:
        for f in sorted(Path(src).iterdir()):
            if not f.is_file() or f.name.startswith("."):
                continue
            dest = out / f.name
            if dest.exists():
                raise InputError("shards", f"{f.name} is in more than one shard", "shards must not overlap")
            shutil.copy2(f, dest)
            count += 1
    log.info("merged %d files from %d shards into %s", count, len(sources), out)
    return count


def copy_dir(src: str | Path, dst: str | Path) -> Path:
    """Copy a directory artifact (e.g. a model bundle) to an output artifact path."""
    return Path(shutil.copytree(src, dst, dirs_exist_ok=True))
