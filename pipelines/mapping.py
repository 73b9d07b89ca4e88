"""The mapping pipeline `lulc-mapping`: plan -> predict blocks (ParallelFor over shards, GPU by configuration)
-> assemble zone COGs and STAC -> area estimates and the OSM gap report.

Task settings come from the run configuration at compile time (`mapping.parallelism`, `mapping.accelerator_*`,
`pipeline` resources, node selector, retries, the cache PVC), so a CPU and a GPU run differ only there. What a
user may change per run — the model, the AOI, the time frames, the image — are pipeline parameters.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's annotations as types.
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Metrics
from kfp.dsl.graph_component import GraphComponent
from kfp.dsl.pipeline_task import PipelineTask

from components._image import resolve_image
from components.configure import configure
from components.map_areas import map_areas
from components.map_assemble import map_assemble
from components.map_blocks import map_blocks
from components.map_gaps import map_gaps
from components.map_plan import map_plan
from lulc_core.config import RunConfig
from pipelines.secrets import TRACKER_SECRETS
from pipelines.training import _cache, _gpu, _heavy, _network, _secrets

PIPELINE_NAME = "lulc-mapping"
OUTPUT_SECRET = "lulc-map-output"
"""Optional secret with the keys of an s3:// mapping.output_dir, given to every step that reads or writes it."""
OUTPUT_KEYS = {k: k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")}


class MappingOutputs(NamedTuple):
    """What a run returns (kfp.local gives these back as artifacts with local paths)."""

    catalog: Dataset
    areas: Dataset
    gaps: Dataset
    metrics: Metrics


def _accelerator(task: PipelineTask, cfg: RunConfig) -> PipelineTask:
    """The predict step's accelerator (mapping.accelerator_*), with the node selector and GPU toleration of
    `pipeline`, as the training step's."""
    m = cfg.mapping
    update = {"accelerator_type": m.accelerator_type, "accelerator_limit": m.accelerator_limit}
    return _gpu(task, cfg.pipeline.model_copy(update=update))


def _output(task: PipelineTask) -> PipelineTask:
    """The object store keys of an s3:// output location (secret `lulc-map-output`, optional)."""
    kubernetes.use_secret_as_env(task, secret_name=OUTPUT_SECRET, secret_key_to_env=OUTPUT_KEYS, optional=True)
    return task


def _worker_cpu(task: PipelineTask, cfg: RunConfig) -> PipelineTask:
    """A predict worker's CPU request and limit = mapping.cpu_per_worker (its threads follow; unset: `pipeline`'s)."""
    cpus = cfg.mapping.cpu_per_worker
    return task if cpus is None else task.set_cpu_request(f"{cpus:g}").set_cpu_limit(f"{cpus:g}")


def build_mapping_pipeline(cfg: RunConfig, image: str | None = None) -> GraphComponent:
    """The mapping pipeline for the task settings in `cfg`; `cfg` is the run_config default.

    Args:
        cfg: The run configuration (JSON default of `run_config`; `mapping` and `pipeline` sections set the fan-out,
            accelerators, resources, retries and the cache PVC).
        image: Project image (default: env LULC_IMAGE, else `cfg.pipeline.image`); must be pinned.
    """
    s = cfg.pipeline
    default_image = resolve_image(image, s.image)

    @dsl.pipeline(name=PIPELINE_NAME, description="Map a region: blocks, zone COGs + STAC, areas, OSM gaps.")
    def lulc_mapping(
        run_config: str = cfg.model_dump_json(),
        model: str = cfg.mapping.model or "",
        aoi_file: str = "",
        time_frames: list = [],  # noqa: B006 — KFP needs a literal default
        image: str = default_image,
    ) -> MappingOutputs:
        def step(task: PipelineTask, name: str, cache: bool = True) -> PipelineTask:
            return task.set_display_name(name).set_caching_options(cache).set_container_image(image)

        overrides = {
            "aoi_bbox": [],
            "label_set": "",
            "imagery_store": "",
            "model_variant": "",
            "epochs": 0,
            "registry": "",
        }
        conf = step(
            configure(run_config=run_config, aoi_file=aoi_file, time_frames=time_frames, **overrides), "configure"
        )
        config = conf.outputs["full"]  # the mapping steps read area, imagery, labels, serving and mapping
        # the registry may have moved the stage since the last run: never cached
        plan = step(map_plan(config=config, model=model), "plan", cache=False)
        _secrets(_network(plan, s), *TRACKER_SECRETS)
        with dsl.ParallelFor(plan.outputs["Output"], parallelism=cfg.mapping.parallelism) as shard:
            blk = map_blocks(config=config, plan=plan.outputs["plan"], bundle=plan.outputs["bundle"], shard=shard)
            # resumable by itself (valid blocks are skipped): no KFP cache, retries redo only unfinished blocks
            step(blk, "predict blocks", cache=False)
            _cache(_secrets(_accelerator(_worker_cpu(_heavy(_network(blk, s), s), cfg), cfg), "lulc-sentinelhub"), s)
            _output(blk)
        statuses = dsl.Collected(blk.outputs["statuses"])
        asm = step(map_assemble(config=config, plan=plan.outputs["plan"], statuses=statuses), "assemble", cache=False)
        _output(_cache(_heavy(asm, s), s))
        catalog = asm.outputs["catalog"]
        areas = step(map_areas(config=config, plan=plan.outputs["plan"], catalog=catalog), "area estimates")
        _output(_cache(areas, s))
        gaps = step(map_gaps(config=config, plan=plan.outputs["plan"], catalog=catalog), "OSM gaps")
        _output(_cache(_network(gaps, s), s))
        return MappingOutputs(
            catalog=catalog, areas=areas.outputs["areas"], gaps=gaps.outputs["gaps"], metrics=gaps.outputs["metrics"]
        )

    return lulc_mapping
