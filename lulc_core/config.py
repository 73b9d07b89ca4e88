"""Run configuration: pydantic models for every step, loaded from YAML in `conf/`.

Every model forbids unknown fields and describes each field, so a typo is an error naming the field and a run is
reproducible from its saved JSON (`RunConfig.model_dump_json()`). Relative paths in a YAML file are resolved
against the directory of that file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lulc_core.errors import ConfigError, InputError
from lulc_core.geo import BBox, TimeRange

S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
S1_BANDS = ["VV", "VH"]
DEM_BANDS = ["DEM"]
DEFAULT_BANDS = [*S2_BANDS, *S1_BANDS, *DEM_BANDS]
ALL_BANDS = frozenset(DEFAULT_BANDS) | {"SCL", "CLM"}
OHSOME_REQUESTS_PER_SECOND = 5.0
"""Default ohsome request rate (starts per second): the public API publishes no numeric quota, so a modest one."""


class StrictModel(BaseModel):
    """Base of every configuration model: unknown fields are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AreaConfig(StrictModel):
    """Where and when: the area of interest, its tiling and the time frames."""

    name: str = Field(default="area", description="Name of the area, used in tile ids and provenance.")
    aoi: Path | None = Field(default=None, description="AOI file (GeoJSON or GeoPackage) with polygons.")
    bbox: list[float] | None = Field(default=None, description="AOI as [west, south, east, north] in EPSG:4326.")
    time_frames: list[TimeRange] = Field(
        min_length=1, description="One or more date ranges; each tile is fetched once per time frame."
    )
    tile_size_m: float | None = Field(
        default=2560.0, gt=0, description="Tile edge in metres on the UTM grid (ignored when `zoom` is set)."
    )
    zoom: int | None = Field(default=None, ge=1, le=20, description="Split by OSM/XYZ tiles of this zoom level.")
    min_land_share: float = Field(
        default=0.0, ge=0, le=1, description="Drop tiles whose share of AOI/land area is below this (0..1)."
    )
    sample_fraction: float = Field(default=1.0, gt=0, le=1, description="Keep this random share of tiles.")
    seed: int = Field(default=42, description="Seed of the tile sampling.")

    @field_validator("time_frames", mode="before")
    @classmethod
    def _frames_in_order(cls, value: Any) -> Any:
        """Name the frame (area.time_frames.N) when its dates are reversed."""
        for i, item in enumerate(value if isinstance(value, list) else []):
            try:
                TimeRange.model_validate(item)
            except InputError as exc:
                raise InputError(f"area.time_frames.{i}", exc.message, exc.fix) from None
            except ValidationError:
                pass  # malformed dates: reported with their location by the normal validation
        return value

    @model_validator(mode="after")
    def _one_aoi(self) -> AreaConfig:
        if (self.aoi is None) == (self.bbox is None):
            raise ValueError("give exactly one of `aoi` (a GeoJSON/GeoPackage path) or `bbox` [W, S, E, N]")
        if self.bbox is not None:
            BBox.from_sequence(self.bbox, "area.bbox")
        return self


class SentinelHubConfig(StrictModel):
    """Sentinel Hub Process API settings (commercial or Copernicus Data Space Ecosystem)."""

    base_url: str = Field(default="https://services.sentinel-hub.com", description="Process API base URL.")
    token_url: str = Field(
        default="https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token",
        description="OAuth2 client-credentials token URL.",
    )
    evalscript: str = Field(
        default="lulc_v2",
        description="Evalscript name in lulc_core/evalscripts/ or a path (lulc_v2: cloud-masked composites; lulc_v1: "
        "the first-sample mosaic of earlier versions).",
    )
    max_pixels_per_request: int = Field(default=2500 * 2500, gt=0, description="Larger tiles are split.")
    mosaicking_order: Literal["leastCC", "mostRecent", "leastRecent"] = Field(
        default="leastCC", description="Sentinel-2 mosaicking order."
    )
    max_cloud_coverage: float = Field(default=100.0, ge=0, le=100, description="Max scene cloud cover (%).")
    s1_backscatter: Literal["GAMMA0_TERRAIN", "GAMMA0_ELLIPSOID", "SIGMA0_ELLIPSOID", "BETA0"] = Field(
        default="GAMMA0_TERRAIN", description="Sentinel-1 backscatter coefficient."
    )
    byoc_corine_collection: str | None = Field(default=None, description="BYOC collection id of CORINE.")
    timeout_s: float = Field(default=120.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(default=5, ge=0, description="Retries for 429/5xx/timeouts.")
    endpoint: Literal["sentinelhub", "cdse"] = Field(
        default="sentinelhub",
        description="Endpoint preset: commercial Sentinel Hub or Copernicus Data Space Ecosystem; sets the default "
        "base and token URLs (explicit `base_url`/`token_url` win) and the collection definitions.",
    )
    backoff_s: float = Field(default=1.0, ge=0, description="First retry wait in seconds; doubles per attempt.")
    max_backoff_s: float = Field(default=60.0, ge=0, description="Longest wait between two attempts (seconds).")
    max_retry_after_s: float = Field(default=120.0, ge=0, description="Cap on a 429 Retry-After wait (seconds).")
    max_requests_per_second: float = Field(
        default=5.0, gt=0, description="Rate limit of one store across all its threads (requests started per second)."
    )


class StacConfig(StrictModel):
    """A public STAC API with Sentinel-2 L2A, Sentinel-1 and Copernicus DEM as cloud-optimised GeoTIFFs."""

    catalog: Literal["earth_search", "planetary_computer"] = Field(
        default="earth_search",
        description="Catalogue preset: Element 84 Earth Search (no account, no signing) or Microsoft Planetary "
        "Computer (no account; asset URLs signed with a SAS token); sets the URL and collections unless given.",
    )
    url: str | None = Field(default=None, description="STAC API root URL (default: the preset's).")
    sign_url: str | None = Field(
        default=None, description="Planetary Computer SAS token endpoint (default: the preset's; None: no signing)."
    )
    s2_collection: str | None = Field(default=None, description="Sentinel-2 L2A collection id (default: preset).")
    s1_collection: str | None = Field(default=None, description="Sentinel-1 collection id (default: preset).")
    dem_collection: str | None = Field(default=None, description="Copernicus DEM collection id (default: preset).")
    max_cloud_cover: float = Field(
        default=60.0, ge=0, le=100, description="Search only scenes with eo:cloud_cover at most this (%)."
    )
    max_items: int = Field(default=12, ge=1, le=200, description="Most Sentinel-2 scenes composited per tile.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout (search and COG reads), seconds.")
    max_retries: int = Field(default=4, ge=0, description="Retries for 429/5xx/timeouts/truncated reads.")
    backoff_s: float = Field(default=1.0, ge=0, description="First retry wait in seconds; doubles per attempt.")
    max_requests_per_second: float = Field(
        default=10.0, gt=0, description="API requests (searches, tokens) started per second; COG reads are unlimited."
    )


class ImageryConfig(StrictModel):
    """Which imagery store, which bands, at which resolution."""

    store: Literal["local", "sentinelhub", "stac"] = Field(default="local", description="Imagery store backend.")
    local_dir: Path | None = Field(default=None, description="Directory of GeoTIFFs for the local store.")
    sentinelhub: SentinelHubConfig = Field(default_factory=SentinelHubConfig, description="Sentinel Hub settings.")
    stac: StacConfig = Field(default_factory=StacConfig, description="STAC API settings (store `stac`).")
    cloud_mask: bool = Field(
        default=True,
        description="Treat Sentinel-2 pixels flagged by SCL (1 saturated/defective, 3 cloud shadow, 8/9 cloud "
        "medium/high probability, 10 thin cirrus) or by the cloud mask CLM as missing.",
    )
    composite: Literal["median", "least_cloudy"] = Field(
        default="median",
        description="How the valid observations of the time frame become one image: per-band median, or per pixel "
        "the first valid observation, least cloudy scene first (its flagged pixels filled from the next scene).",
    )
    min_valid_share: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Tiles with a smaller share of pixels having valid data in every band are skipped (counted).",
    )
    sensor_normalisation: Literal["none", "per_sensor"] = Field(
        default="none",
        description="per_sensor: as the original utility, Sentinel-1 in dB (every store delivers dB) and the DEM "
        "standardised per tile (tile mean 0, std 1), before the dataset statistics.",
    )
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS), min_length=1, description="Bands.")
    resolution: float = Field(default=10.0, gt=0, description="Pixel size in metres.")
    cache_dir: Path | None = Field(default=None, description="Download cache (default: <work_dir>/cache).")
    concurrency: int = Field(default=8, ge=1, le=64, description="Tiles fetched in parallel.")

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str]) -> list[str]:
        unknown = [b for b in v if b not in ALL_BANDS]
        if unknown:
            raise ValueError(f"unknown bands {unknown}; choose from {sorted(ALL_BANDS)}")
        if len(set(v)) != len(v):
            raise ValueError("bands must not repeat")
        return v

    @model_validator(mode="after")
    def _store(self) -> ImageryConfig:
        if self.store == "local" and self.local_dir is None:
            raise ValueError("store 'local' needs `local_dir` (a directory of GeoTIFFs)")
        if (
            self.store == "sentinelhub"
            and self.composite == "least_cloudy"
            and self.sentinelhub.mosaicking_order != "leastCC"
        ):
            raise ValueError(
                "composite 'least_cloudy' needs sentinelhub.mosaicking_order 'leastCC' (it takes the samples in that "
                "order); set it, or use composite 'median'"
            )
        return self


class LabelsConfig(StrictModel):
    """Where labels come from and which label set defines the classes."""

    label_set: Path = Field(description="Label set YAML (name, osm_filter, color, description per class).")
    source: Literal["file", "ohsome", "corine"] = Field(
        default="file",
        description="Label source: 'file' (local OSM extract), 'ohsome' (ohsome API) or 'corine' (CORINE Land Cover "
        "from the Sentinel Hub BYOC collection imagery.sentinelhub.byoc_corine_collection, mapped onto the label "
        "set by its corine_codes).",
    )
    osm_file: Path | None = Field(default=None, description="Local OSM extract (.geojson, .gpkg or .osm.pbf).")
    ohsome_url: str = Field(default="https://api.ohsome.org/v1", description="ohsome API base URL.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout in seconds.")
    max_retries: int = Field(default=5, ge=0, description="Retries for 429/5xx/timeouts.")
    concurrency: int = Field(default=8, ge=1, le=64, description="Tiles labelled in parallel.")
    max_requests_per_second: float = Field(
        default=OHSOME_REQUESTS_PER_SECOND,
        gt=0,
        description="ohsome requests started per second by one labelling process (all its threads): the public "
        "API publishes no quota and asks for considerate use; raise it for a self-hosted ohsome API.",
    )

    @model_validator(mode="after")
    def _source(self) -> LabelsConfig:
        if self.source == "file" and self.osm_file is None:
            raise ValueError("source 'file' needs `osm_file` (.geojson, .gpkg or .osm.pbf)")
        return self


class DataConfig(StrictModel):
    """How tiles become training chips."""

    chip_size: int = Field(default=64, ge=16, le=2048, description="Chip edge in pixels (multiple of 32).")
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description="Share of tiles for validation.")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="Share of tiles for testing.")
    split_seed: int = Field(default=7, description="Seed of the spatial train/val/test split.")
    min_labelled_share: float = Field(default=0.05, ge=0, le=1, description="Skip chips with fewer labels.")

    @field_validator("chip_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"chip_size {v} must be a multiple of 32 (SegFormer downsamples by 32)")
        return v

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must be below 1 to leave tiles for training")
        return self


class ModelConfig(StrictModel):
    """The SegFormer model."""

    variant: Literal["b0", "b1", "b2", "b3", "b4", "b5"] = Field(default="b0", description="MiT encoder size.")
    pretrained: str | None = Field(
        default=None, description="Optional pretrained encoder: a local path or a hub id (random init if unset)."
    )


class TrainingConfig(StrictModel):
    """Optimisation, early stopping and hardware."""

    epochs: int = Field(default=10, ge=1, description="Maximum epochs.")
    batch_size: int = Field(default=8, ge=1, description="Chips per batch.")
    learning_rate: float = Field(default=6e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(default=0.01, ge=0, description="Weight decay.")
    optimizer: Literal["adamw", "adam"] = Field(default="adamw", description="Optimizer.")
    scheduler: Literal["cosine", "plateau", "none"] = Field(default="cosine", description="LR scheduler.")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="Cross-entropy label smoothing.")
    class_weights: bool = Field(default=True, description="Weight the loss by inverse class frequency.")
    early_stopping_patience: int = Field(default=5, ge=1, description="Epochs without val-loss improvement.")
    accelerator: Literal["auto", "cpu", "gpu"] = Field(default="auto", description="Lightning accelerator.")
    devices: int = Field(
        default=1,
        ge=1,
        description="Devices (GPUs, or CPU processes) per node; more than 1 trains data-parallel (DDP); "
        "training.batch_size is per device.",
    )
    num_nodes: int = Field(
        default=1, ge=1, description="Nodes; more than 1 needs training.launcher (a Kubeflow training job)."
    )
    strategy: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto", description="Lightning strategy: auto (DDP when more than one device), ddp, fsdp (GPU only)."
    )
    launcher: Literal["none", "trainjob", "pytorchjob"] = Field(
        default="none",
        description="How the pipeline's train step runs: none (in its own pod), trainjob (Kubeflow Trainer v2) or "
        "pytorchjob (Training Operator v1), on num_nodes nodes sharing pipeline.cache_pvc.",
    )
    launcher_timeout_minutes: float = Field(
        default=24 * 60.0, gt=0, description="How long the train step waits for a TrainJob/PyTorchJob."
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Durable checkpoint directory (last.ckpt every epoch and on SIGTERM; default: <out>/checkpoints, "
        "in the pipeline the cache PVC when configured).",
    )
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = Field(default="32-true", description="Precision.")
    deterministic: bool = Field(default=True, description="Deterministic algorithms and seeded everything.")
    seed: int = Field(default=42, description="Global seed.")
    num_workers: int | None = Field(
        default=None,
        ge=0,
        description="DataLoader worker processes (default: 0 on CPU; on GPU nodes a share of the cores per device, "
        "with pinned memory and persistent workers).",
    )
    augment: bool = Field(default=True, description="Random flips and 90-degree rotations.")
    max_time_minutes: float | None = Field(default=None, gt=0, description="Stop training after this time.")

    @model_validator(mode="after")
    def _distributed(self) -> TrainingConfig:
        if self.strategy == "fsdp" and self.accelerator == "cpu":
            raise ConfigError("training.strategy", "'fsdp' needs GPUs", "use training.strategy 'ddp' on CPU")
        if self.num_nodes > 1 and self.launcher == "none":
            raise ConfigError(
                "training.num_nodes",
                f"{self.num_nodes} nodes need a launcher",
                "set training.launcher to 'trainjob' or 'pytorchjob'",
            )
        return self


class GateConfig(StrictModel):
    """Quality gate before promotion to production."""

    min_miou: float = Field(default=0.0, ge=0, le=1, description="Minimum test mIoU.")
    min_accuracy: float = Field(default=0.0, ge=0, le=1, description="Minimum test overall accuracy.")
    must_beat_production: bool = Field(default=True, description="Not worse than the current production model.")
    tolerance: float = Field(default=0.0, ge=0, description="Allowed mIoU drop versus production.")


ARTIFACT_SCHEMES = ("s3", "gs", "wasbs", "hdfs", "file")


class RegistryConfig(StrictModel):
    """Model registry backend and naming."""

    backend: Literal["mlflow", "neptune"] = Field(default="mlflow", description="Registry backend.")
    model_name: str = Field(default="lulc-segformer", description="Registered model name.")
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI (default: sqlite:///<work_dir>/mlflow.db)."
    )
    artifact_root: str | None = Field(
        default=None,
        description="Where MLflow stores new runs' artifacts, e.g. s3://bucket/mlflow (KServe's storage initializer "
        "fetches s3://, gs:// and hdfs:// directly, not MLflow's wasbs://; S3 endpoint and keys from AWS_ENDPOINT_URL, "
        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY); default <work_dir>/mlruns. Applies when the experiment is created.",
    )
    neptune_project: str | None = Field(default=None, description="Neptune project (else NEPTUNE_PROJECT).")
    neptune_model_key: str = Field(default="LULC", description="Neptune model key.")
    cache_dir: Path | None = Field(default=None, description="Where resolved bundles are downloaded.")
    track_training: bool = Field(
        default=True,
        description="Log loss and mIoU per epoch live to the backend's tracker (MLflow run, Neptune run); the "
        "registered version is made from (MLflow) or linked to (Neptune) that run.",
    )
    export_onnx: bool = Field(
        default=True,
        description="Export model.onnx (verified against torch) into the bundle at registration, so the predictor "
        "serves it with onnxruntime (about 2x torch on CPU); false registers the torch weights only.",
    )
    onnx_quantization: Literal["none", "int8"] = Field(
        default="none",
        description="'int8': also register model.int8.onnx (onnxruntime static QDQ quantisation calibrated on "
        "training chips), served instead of model.onnx when it agrees with fp32 on the test tiles (see "
        "int8_min_agreement, int8_max_miou_drop); otherwise the version is served in fp32. Needs export_onnx.",
    )
    int8_calibration_chips: int = Field(
        default=64, ge=1, le=4096, description="Training chips (data.chip_size) that calibrate the int8 ranges."
    )
    int8_min_agreement: float = Field(
        default=0.99, ge=0, le=1, description="Least share of test pixels whose int8 class equals fp32's."
    )
    int8_max_miou_drop: float = Field(
        default=0.01, ge=0, le=1, description="Largest test mIoU loss of int8 versus fp32 ONNX."
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion gate.")

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> RegistryConfig:
        if self.onnx_quantization == "int8" and not self.export_onnx:
            raise ConfigError(
                "registry.onnx_quantization", "'int8' quantises model.onnx", "set registry.export_onnx true or 'none'"
            )
        return self

    @field_validator("artifact_root")
    @classmethod
    def _artifact_root(cls, v: str | None) -> str | None:
        scheme = v.split("://", 1)[0].lower() if v and "://" in v else None
        if scheme is not None and scheme not in ARTIFACT_SCHEMES:
            raise ValueError(
                f"{v!r}: MLflow cannot store artifacts at {scheme}:// — use one of "
                f"{', '.join(s + '://' for s in ARTIFACT_SCHEMES)} or a local directory"
            )
        return v


class ServingConfig(StrictModel):
    """Inference and serving."""

    window: int = Field(
        default=512,
        ge=32,
        description="Largest sliding-window edge in pixels (multiple of 32); an area is split into as few windows as "
        "the overlap allows, each only as large as needed.",
    )
    overlap: int = Field(default=32, ge=0, description="Overlap between windows in pixels.")
    batch_size: int = Field(
        default=2,
        ge=1,
        description="Windows predicted at once; on onnxruntime shared out over the parallel one-thread calls (2 "
        "windows on 2 threads: one window per call), so memory stays that of one call of all of them.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="Arithmetic of the network: fp32, or torch autocast to bf16/fp16 (mixed precision, for CUDA; "
        "the gpu overlay sets bf16). Other than fp32 runs the torch model (onnxruntime runs fp32).",
    )
    max_pixels: int = Field(default=10_000 * 10_000, gt=0, description="Largest area accepted (pixels).")
    threshold: float = Field(default=0.0, ge=0, le=1, description="Below this confidence a pixel is unknown.")
    edge_buffer_m: float = Field(default=100.0, ge=0, description="Extra margin fetched around a request.")
    tta: bool = Field(default=False, description="Test-time augmentation for uncertainty.")
    cache_size: int = Field(default=32, ge=0, description="Idempotency cache entries (at most).")
    cache_max_bytes: int = Field(
        default=256 * 2**20,
        ge=0,
        description="Idempotency cache size in bytes of the cached arrays (LRU eviction; a larger prediction is "
        "not cached). Keep it well inside the predictor's memory limit.",
    )
    deployment_mode: Literal["Knative", "Standard", "Serverless", "RawDeployment"] = Field(
        default="Knative",
        description="KServe deployment mode of the deploy step: Knative (serverless, scale to zero) or Standard "
        "(Deployment + HPA/KEDA, no Knative). The old names Serverless/RawDeployment are accepted; the name written "
        "follows `kserve_version`.",
    )
    kserve_version: str = Field(
        default="0.16",
        pattern=r"^\d+\.\d+(\.\d+)?$",
        description="KServe version of the cluster: from 0.16 the modes are named Knative/Standard, before that "
        "Serverless/RawDeployment.",
    )
    host: str = Field(default="127.0.0.1", description="Bind address of `lulc serve`.")
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP port of `lulc serve`.")
    root_path: str = Field(
        default="",
        pattern=r"^(/[A-Za-z0-9._~\-]+)*$",
        description="URL prefix when served behind a proxy, e.g. '/lulc' (OpenAPI and /docs links carry it).",
    )


class PipelineConfig(StrictModel):
    """Kubeflow settings: set on tasks in pipelines/, so a CPU and a GPU run differ only here."""

    image: str = Field(default="ghcr.io/lulc/lulc:0.1.0", description="Project image (pinned tag or digest).")
    parallelism: int = Field(default=4, ge=1, description="Shards of tiles processed in parallel.")
    shards: int = Field(default=4, ge=1, description="Number of tile shards for imagery/labels.")
    accelerator_type: str | None = Field(default=None, description="e.g. 'nvidia.com/gpu' (None: CPU).")
    accelerator_limit: int = Field(
        default=1, ge=0, description="GPUs per predictor replica (the train step requests training.devices)."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels for training.")
    gpu_toleration: bool = Field(default=True, description="Tolerate the nvidia.com/gpu taint when on GPU.")
    cpu_request: str = Field(default="2", description="CPU request of heavy tasks.")
    cpu_limit: str = Field(default="4", description="CPU limit of heavy tasks.")
    memory_request: str = Field(default="8G", description="Memory request of heavy tasks.")
    memory_limit: str = Field(default="16G", description="Memory limit of heavy tasks.")
    retries: int = Field(default=3, ge=0, description="Retries of network steps.")
    cache_pvc: str | None = Field(default=None, description="PVC mounted as the data cache.")


FUSION_MODES = ("only_model", "only_osm", "favour_model", "favour_osm", "mean_mixin", "harmonized_corine")


class MappingConfig(StrictModel):
    """The mapping pipeline (`lulc map`): blocks over an AOI, their prediction, assembly and reports."""

    model: str | None = Field(
        default=None, description="Model reference to map with, e.g. 'lulc-sample@production' (CLI --model wins)."
    )
    block_px: int = Field(
        default=10_240, ge=64, le=40_960, description="Block edge in pixels on each UTM zone's grid (one COG each)."
    )
    output_dir: str | None = Field(
        default=None,
        description="Where blocks, zone mosaics and STAC go: a local directory, a mounted PVC path or an object "
        "store prefix s3://bucket/prefix (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...; default "
        "<work_dir>/maps/<area name>). Blocks already there and valid are skipped (resume).",
    )
    shards: int = Field(default=8, ge=1, description="Shards of blocks (one ParallelFor iteration each).")
    parallelism: int = Field(default=4, ge=1, description="Shards predicted at the same time.")
    accelerator_type: str | None = Field(
        default="nvidia.com/gpu", description="Accelerator of the predict step (None: CPU nodes)."
    )
    accelerator_limit: int = Field(default=1, ge=1, description="Accelerators per predict task.")
    cpu_per_worker: float | None = Field(
        default=None,
        gt=0,
        description="CPUs of one predict-blocks worker: its task's cpu request and limit, and the threads torch, "
        "onnxruntime and GDAL use in it (at least 1). Unset: pipeline.cpu_request/limit, and threads from the "
        "worker's CPU quota (cgroup), else the machine's cores / mapping.parallelism (local runs).",
    )
    fusion_mode: Literal[FUSION_MODES] = Field(  # type: ignore[valid-type]
        default="only_model", description="How model and OSM are combined (as the predictor's fusion modes)."
    )
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Minimum winning probability (default: serving.threshold)."
    )
    probabilities: bool = Field(default=False, description="Also write per-class probabilities per block.")
    uncertainty: bool = Field(default=False, description="Also write TTA variance/entropy per block.")
    throughput_px_s: float | None = Field(
        default=None,
        gt=0,
        description="Measured prediction throughput of the target node (px/s) for the GPU-hour estimate; unset: "
        "a short calibration of the chosen model on this machine.",
    )
    gap_confidence: float = Field(
        default=0.8, ge=0, le=1, description="OSM gaps/conflicts: the model's winning probability at least this."
    )
    gap_min_pixels: int = Field(default=16, ge=1, description="Smallest gap or conflict polygon kept (pixels).")


class RunConfig(StrictModel):
    """Everything a run needs; saved with every model for reproducibility."""

    name: str = Field(default="lulc", description="Run name.")
    work_dir: Path = Field(default=Path(".lulc"), description="Where outputs, caches and the registry live.")
    area: AreaConfig
    imagery: ImageryConfig
    labels: LabelsConfig
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    mapping: MappingConfig = Field(default_factory=MappingConfig, description="The mapping pipeline (lulc map).")

    @model_validator(mode="after")
    def _int8_serving(self) -> RunConfig:
        if self.registry.onnx_quantization == "int8" and self.serving.precision != "fp32":
            raise ConfigError(
                "registry.onnx_quantization",
                f"int8 is served by onnxruntime on the CPU, serving.precision {self.serving.precision} by torch",
                "set serving.precision fp32 or registry.onnx_quantization 'none'",
            )
        return self

    @model_validator(mode="after")
    def _corine_collection(self) -> RunConfig:
        if self.labels.source == "corine" and not self.imagery.sentinelhub.byoc_corine_collection:
            raise ConfigError(
                "imagery.sentinelhub.byoc_corine_collection",
                "labels.source corine reads CORINE Land Cover from a Sentinel Hub BYOC collection, and none is set",
                "set it to the collection id (Sentinel Hub's public CORINE: cbdba844-f86d-41dc-95ad-b3f7f12535e9), "
                "or use labels.source file or ohsome",
            )
        return self

    @model_validator(mode="after")
    def _shared_storage(self) -> RunConfig:
        if self.training.launcher != "none" and not self.pipeline.cache_pvc:
            raise ConfigError(
                "pipeline.cache_pvc",
                f"training.launcher {self.training.launcher!r} runs on several pods that share the run's artifacts",
                "set pipeline.cache_pvc to a ReadWriteMany PVC",
            )
        return self

    def fingerprint(self) -> str:
        """Hash of the configuration (lineage: which config produced a model)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def tracking_uri(self) -> str:
        return self.registry.tracking_uri or f"sqlite:///{(self.work_dir / 'mlflow.db').resolve()}"


CLUSTER_ARTIFACT_SCHEMES = ("s3", "gs", "hdfs")  # MLflow artifact stores KServe's storage initializer reads


def check_deploy_target(cfg: RunConfig, target: str, cluster_env: Mapping[str, str] | None = None) -> None:
    """Refuse `deploy_target: kserve` when the registered bundle would stay where KServe cannot fetch it.

    Refused: MLflow with its artifacts in a local directory — the embedded SQLite registry's `<work_dir>/mlruns`,
    or `registry.artifact_root` a path or file:// — or at wasbs://. An s3://, gs:// or hdfs:// artifact root works
    with any tracking URI (SQLite too); a tracking server chooses its own root; Neptune versions reach KServe
    through the neptune:// storage container. `cluster_env` is the environment of the cluster's steps (the
    configure step passes its own): without `registry.tracking_uri` their MLFLOW_TRACKING_URI picks the registry,
    so with `cluster_env` None (at submission) only what the configuration itself names is judged.
    """
    reg = cfg.registry
    if target != "kserve" or reg.backend != "mlflow":
        return
    root = reg.artifact_root
    if root and "://" in root and root.split("://", 1)[0].lower() in CLUSTER_ARTIFACT_SCHEMES:
        return
    if root is None:
        if reg.tracking_uri is None and cluster_env is None:
            return  # the cluster's MLFLOW_TRACKING_URI decides: judged by the configure step
        tracking = reg.tracking_uri or (cluster_env or {}).get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
        if "://" in tracking and not tracking.startswith(("sqlite:", "file:")):
            return  # a tracking server: its own artifact root decides (the deploy step checks the version's URI)
    where = root or f"<work_dir>/mlruns beside the embedded registry {reg.tracking_uri or cfg.tracking_uri}"
    raise ConfigError(
        "registry.artifact_root",
        f"deploy_target kserve with MLflow artifacts in {where}: a KServe pod cannot read them",
        "set registry.artifact_root: s3://bucket/prefix (or gs://), use a tracking server that stores them there, "
        "or registry.backend: neptune",
    )


def format_validation_error(exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first pydantic error as a ConfigError naming the dotted field path."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "config"
    field = f"{prefix}.{loc}" if prefix else loc
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    msg = err["msg"].removeprefix("Value error, ")
    return ConfigError(field, f"{msg}{shown}")


def _resolve_paths(raw: Any, base: Path, keys: frozenset[str]) -> Any:
    if isinstance(raw, dict):
        out = {}
        for k, v in raw.items():
            if k in keys and isinstance(v, str) and v and not Path(v).is_absolute():
                out[k] = str((base / v).resolve())
            else:
                out[k] = _resolve_paths(v, base, keys)
        return out
    if isinstance(raw, list):
        return [_resolve_paths(v, base, keys) for v in raw]
    return raw


PATH_KEYS = frozenset(
    {"aoi", "local_dir", "cache_dir", "label_set", "osm_file", "work_dir", "output_dir", "checkpoint_dir"}
)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base`."""
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run configuration YAML; relative paths are resolved against the file's directory."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file {str(p)!r} does not exist", "pass --config with a run YAML")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{p} must be a mapping of sections (area, imagery, labels, ...)")
    raw = _resolve_paths(raw, p.parent.resolve(), PATH_KEYS)
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise format_validation_error(exc) from exc


def parse_date(value: str, field: str) -> date:
    """An ISO date, with an error naming `field`."""
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"{value!r} is not a date", "write it as YYYY-MM-DD") from None
