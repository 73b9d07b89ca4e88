"""The training pipeline: area grid -> imagery/labels (fan-out over shards) -> statistics -> train -> evaluate ->
register (quality gate) -> deploy (only when the gate passed).

Task settings — retries, caching, GPU, resources, node selector, tolerations, secrets, the cache PVC — come from
the run configuration's `pipeline` section at compile time, so a CPU run and a GPU run differ only there. What a
user may change per run (AOI, time frames, label set, imagery store, model variant, epochs, registry, deploy
target, image) are typed pipeline parameters, applied to the run configuration by the `configure` step, which
hands each step only its slice of the configuration (`lulc_core.steps`): changing `training.epochs` re-runs
training, not the imagery download. The register step gets the whole configuration and records it with the model.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's annotations as types.
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact, Metrics, Model
from kfp.dsl.graph_component import GraphComponent
from kfp.dsl.pipeline_task import PipelineTask

from components._image import resolve_image
from components.area_grid import area_grid
from components.configure import configure
from components.deploy import deploy
from components.evaluate import evaluate
from components.gather import gather
from components.imagery import imagery
from components.labels import labels
from components.register import register
from components.statistics import statistics
from components.train import train
from lulc_core.config import PipelineConfig, RunConfig, TrainingConfig
from pipelines.secrets import SECRETS, TRACKER_SECRETS

PIPELINE_NAME = "lulc-training"
CACHE_MOUNT = "/var/cache/lulc"
GPU_TAINT = "nvidia.com/gpu"
RETRY_BACKOFF = {"backoff_duration": "30s", "backoff_factor": 2.0, "backoff_max_duration": "1800s"}


class PipelineOutputs(NamedTuple):
    """What a run returns (kfp.local gives these back as artifacts with local paths)."""

    bundle: Model
    metrics: Metrics
    registration: Artifact


def _network(task: PipelineTask, s: PipelineConfig) -> PipelineTask:
    """Retries with exponential backoff for steps that call external services."""
    return task.set_retry(num_retries=s.retries, **RETRY_BACKOFF)  # type: ignore[arg-type]


def _heavy(task: PipelineTask, s: PipelineConfig) -> PipelineTask:
    """CPU and memory requests/limits of the heavy steps."""
    task.set_cpu_request(s.cpu_request).set_cpu_limit(s.cpu_limit)
    return task.set_memory_request(s.memory_request).set_memory_limit(s.memory_limit)


def _secrets(task: PipelineTask, *names: str) -> PipelineTask:
    for name in names:
        kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=SECRETS[name], optional=True)
    return task


def _cache(task: PipelineTask, s: PipelineConfig) -> PipelineTask:
    """Mount the cache PVC (when configured) and point the step's download cache at it."""
    if s.cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=s.cache_pvc, mount_path=CACHE_MOUNT)
        task.set_env_variable("LULC_CACHE_DIR", CACHE_MOUNT)
    return task


def _gpu(task: PipelineTask, s: PipelineConfig, t: TrainingConfig | None = None) -> PipelineTask:
    """Accelerators, node selector and the GPU-taint toleration of a GPU step. The train step (`t` given) asks for
    training.devices of them (Lightning runs DDP in the pod); with a launcher (TrainJob/PyTorchJob) the job's
    nodes get them, not the step."""
    if t is not None and t.launcher != "none":
        return task
    if s.accelerator_type:
        task.set_accelerator_type(s.accelerator_type).set_accelerator_limit(t.devices if t else s.accelerator_limit)
        if s.gpu_toleration:
            kubernetes.add_toleration(task, key=GPU_TAINT, operator="Exists", effect="NoSchedule")
    for key, value in sorted(s.node_selector.items()):
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    return task


def build_pipeline(cfg: RunConfig, image: str | None = None) -> GraphComponent:
    """The training pipeline for the task settings in `cfg.pipeline`; `cfg` is the run_config default.

    Args:
        cfg: The run configuration: its JSON becomes the `run_config` parameter's default and its `pipeline`
            section sets GPU, resources, node selector, retries, parallelism and the cache PVC.
        image: Project image (default: env LULC_IMAGE, else `cfg.pipeline.image`); must be pinned.
    """
    s = cfg.pipeline
    default_image = resolve_image(image, s.image)
    default_config = cfg.model_dump_json()
    gpus = s.accelerator_limit if s.accelerator_type else 0

    @dsl.pipeline(name=PIPELINE_NAME, description="Train, evaluate, register and deploy a LULC SegFormer.")
    def lulc_training(
        run_config: str = default_config,
        aoi_bbox: list = [],  # noqa: B006 — KFP needs a literal default
        aoi_file: str = "",
        time_frames: list = [],  # noqa: B006
        label_set: str = "",
        imagery_store: str = "",
        model_variant: str = "",
        epochs: int = 0,
        registry: str = "",
        deploy_target: str = "none",
        deploy_namespace: str = "lulc",
        image: str = default_image,
    ) -> PipelineOutputs:
        def step(task: PipelineTask, name: str, cache: bool = True) -> PipelineTask:
            return task.set_display_name(name).set_caching_options(cache).set_container_image(image)

        conf = step(
            configure(
                run_config=run_config,
                aoi_bbox=aoi_bbox,
                aoi_file=aoi_file,
                time_frames=time_frames,
                label_set=label_set,
                imagery_store=imagery_store,
                model_variant=model_variant,
                epochs=epochs,
                registry=registry,
                deploy_target=deploy_target,
            ),
            "configure",
        )
        part = conf.outputs  # the whole configuration ("full") and each step's slice of it (lulc_core.steps)
        grid = step(area_grid(config=part["area_grid"]), "area grid")
        with dsl.ParallelFor(grid.outputs["Output"], parallelism=s.parallelism) as shard:
            img = step(imagery(config=part["imagery"], tiles=grid.outputs["tiles"], shard=shard), "imagery")
            _cache(_secrets(_network(img, s), "lulc-sentinelhub"), s)
            lab = step(labels(config=part["labels"], tiles=grid.outputs["tiles"], shard=shard), "labels")
            _cache(_secrets(_network(lab, s), "lulc-sentinelhub"), s)  # labels.source corine reads Sentinel Hub
        all_imagery = step(gather(shards=dsl.Collected(img.outputs["rasters"])), "gather imagery")
        all_labels = step(gather(shards=dsl.Collected(lab.outputs["rasters"])), "gather labels")
        data: dict[str, Any] = {"imagery": all_imagery.outputs["merged"], "labels": all_labels.outputs["merged"]}
        st = step(statistics(config=part["statistics"], tiles=grid.outputs["tiles"], **data), "statistics")
        split = st.outputs["split"]
        tr = step(train(config=part["train"], stats=st.outputs["stats"], split=split, **data), "train")
        _cache(_secrets(_gpu(_heavy(tr, s), s, cfg.training), *TRACKER_SECRETS), s)  # checkpoints
        ev = step(evaluate(config=part["evaluate"], bundle=tr.outputs["bundle"], split=split, **data), "evaluate")
        _heavy(ev, s)
        reg = step(
            register(config=part["full"], bundle=ev.outputs["evaluated"], evaluation=ev.outputs["evaluation"]),
            "register",
            cache=False,
        )
        _secrets(_network(reg, s), *TRACKER_SECRETS)
        with dsl.If(reg.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 — a KFP condition, not a bool
            dep = deploy(
                config=part["deploy"],
                registration=reg.outputs["registration"],
                target=deploy_target,
                namespace=deploy_namespace,
                image=image,
                gpus=gpus,
            )
            _network(step(dep, "deploy", cache=False), s)
        return PipelineOutputs(
            bundle=ev.outputs["evaluated"], metrics=ev.outputs["metrics"], registration=reg.outputs["registration"]
        )

    return lulc_training
