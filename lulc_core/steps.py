"""What each pipeline step depends on: its slice of the run configuration.

KFP reuses a step's cached result when the step's inputs (parameters, input artifacts, image and command) are
unchanged. Were every step given the whole RunConfig, changing `training.epochs` would change every step's input
and fetch all imagery again (paid processing units). So each step receives `step_config(cfg, step)`: the fields
listed in `DEPENDENCIES[step]` copied from the run's configuration, every other field at its default, and the
required sections a step does not read (area, imagery, labels) set to `PLACEHOLDER` — a fixed value whose paths
name no real file, so a step that reads a field it does not declare fails loudly instead of using a stale value.

A step that starts reading a new setting adds its dotted path here (one place); `docs/configuration.md` shows the
table. The register step receives the whole configuration: it records it with the model (lineage), and it is not
cached.
"""

from __future__ import annotations

from typing import Any, Final

from lulc_core.config import RunConfig
from lulc_core.errors import InputError

FULL: Final = ("*",)
"""The whole configuration."""

DEPENDENCIES: Final[dict[str, tuple[str, ...]]] = {
    # the grid: the AOI and time frames, cut at the imagery resolution, spread over the shards
    "area_grid": ("area", "imagery.resolution", "pipeline.shards"),
    # one shard of tiles from the imagery store (store, bands, resolution, Sentinel Hub settings, concurrency);
    # the download cache lives under imagery.cache_dir or <work_dir>/cache
    "imagery": ("work_dir", "imagery", "pipeline.shards"),
    # one shard of labels on the tiles' grid (the grid, resolution included, comes with the tiles artifact);
    # CORINE labels come from Sentinel Hub BYOC (imagery.sentinelhub); the cache as for imagery
    "labels": ("work_dir", "labels", "imagery.sentinelhub", "imagery.cache_dir", "pipeline.shards"),
    # the spatial split and band/class statistics of the training tiles
    "statistics": ("labels.label_set", "data.val_fraction", "data.test_fraction", "data.split_seed"),
    # the model: bands, resolution and label set define its inputs and outputs; the tracking run (registry
    # backend and names, <work_dir> for the embedded MLflow) is the one that becomes the registered version
    "train": (
        "name",
        "work_dir",
        "imagery.bands",
        "imagery.resolution",
        "labels.label_set",
        "data.chip_size",
        "data.min_labelled_share",
        "model",
        "training",
        # where checkpoints live (the cache PVC) and, with training.launcher, the training job's nodes
        "pipeline.cache_pvc",
        "pipeline.accelerator_type",
        "pipeline.node_selector",
        "pipeline.cpu_limit",
        "pipeline.memory_limit",
        "pipeline.image",
        "registry.backend",
        "registry.model_name",
        "registry.tracking_uri",
        "registry.neptune_project",
        "registry.neptune_model_key",
        "registry.artifact_root",
        "registry.track_training",
    ),
    # the bundle carries its bands, normalisation and label set; the split comes as an artifact; int8 quantisation
    # (calibrated on the training tiles, checked on the test tiles) happens here, where the data is
    "evaluate": (
        "registry.onnx_quantization",
        "registry.int8_calibration_chips",
        "registry.int8_min_agreement",
        "registry.int8_max_miou_drop",
    ),
    # provenance and the saved run configuration are the whole configuration (not cached)
    "register": FULL,
    # the registered version's name and backend, and how KServe runs it (not cached)
    "deploy": ("registry", "serving.deployment_mode", "serving.kserve_version"),
}

PLACEHOLDER: Final[dict[str, Any]] = {
    "area": {
        "name": "not-used-by-this-step",
        "bbox": [0.0, 0.0, 0.001, 0.001],
        "time_frames": [{"start": "2000-01-01", "end": "2000-01-01"}],
    },
    "imagery": {"store": "sentinelhub"},
    "labels": {"label_set": "not-used-by-this-step.yaml", "source": "ohsome"},
}
"""Values of the required sections a step does not depend on (every other field takes its default)."""


def _get(tree: dict[str, Any], path: list[str]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def step_config(cfg: RunConfig, step: str) -> RunConfig:
    """The part of `cfg` that `step` depends on (see `DEPENDENCIES`); everything else at defaults.

    Equal slices serialise to equal JSON (`model_dump_json()`), which is what keeps a step's KFP cache key equal
    when an unrelated setting changes.

    Raises:
        InputError: `step` is not a pipeline step.
    """
    if step not in DEPENDENCIES:
        raise InputError("step", f"{step!r} is not a pipeline step", f"use one of {list(DEPENDENCIES)}")
    paths = DEPENDENCIES[step]
    if paths == FULL:
        return cfg
    full = cfg.model_dump(mode="json")
    out = RunConfig.model_validate(PLACEHOLDER).model_dump(mode="json")
    for path in paths:
        keys = path.split(".")
        _set(out, keys, _get(full, keys))
    return RunConfig.model_validate(out)


def step_configs(cfg: RunConfig) -> dict[str, str]:
    """Every step's slice of `cfg` as JSON (what the pipeline's configure step hands to each step)."""
    return {step: step_config(cfg, step).model_dump_json() for step in DEPENDENCIES}
