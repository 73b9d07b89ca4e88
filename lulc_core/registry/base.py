"""The registry's model: references, stages, what a registration records, the bundle cache and the
`ModelRegistry` interface every backend implements (see `lulc_core.registry` for the overview).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import yaml
from pydantic import BaseModel, ConfigDict, Field

from lulc_core.bundle import INT8_FILE, METADATA_FILE, BundleMetadata, ModelBundle, Provenance
from lulc_core.config import RunConfig
from lulc_core.errors import InputError, NotFoundError
from lulc_core.labels import LabelSet
from lulc_core.lineage import build_provenance, fingerprint_test_set, lineage_tags
from lulc_core.raster import publish_tree

if TYPE_CHECKING:
    from lulc_core.registry.tracking import TrainingRun

log = logging.getLogger(__name__)

Stage = Literal["none", "staging", "production", "archived"]
STAGES: tuple[Stage, ...] = ("none", "staging", "production", "archived")
ALIAS_STAGES: tuple[Stage, ...] = ("staging", "production")
REF_HELP = "write NAME, NAME@latest, NAME@<version number> or NAME@<staging|production|archived|none>"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,99}$")
_NEPTUNE_VERSION_ID = re.compile(r"^(?P<model>[A-Z0-9]{1,10}-[A-Z0-9]{1,10})-(?P<n>[1-9][0-9]*)$")
_METRIC_KEY = re.compile(r"[^A-Za-z0-9_\-./ :]")

# Tags every backend writes on a version.
TAG_STAGE = "lulc.stage"
TAG_TEST_SET = "lulc.test_set"
TAG_LABEL_SET = "lulc.label_set"
TAG_BANDS = "lulc.bands"
TAG_ONNX = "lulc.onnx"
TAG_INT8 = "lulc.int8"
TAG_METRIC = "lulc.metric."


class ModelRef(BaseModel):
    """A model version reference: a name plus a version number, an alias/stage, or neither (= latest)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered model name (Neptune: the model key or id).")
    version: int | None = Field(default=None, ge=1, description="Version number.")
    alias: str | None = Field(default=None, description="Alias or stage, e.g. 'production'.")

    @property
    def is_latest(self) -> bool:
        return self.version is None and self.alias is None

    def __str__(self) -> str:
        return f"{self.name}@{self.version or self.alias or 'latest'}"

    @classmethod
    def parse(cls, text: str | ModelRef, default_name: str | None = None) -> ModelRef:
        """Parse "name", "name@latest", "name@3", "name@production", "models:/name/3" or "@production"."""
        if isinstance(text, ModelRef):
            return text
        raw = (text or "").strip()
        if not raw:
            raise InputError("ref", "the model reference is empty", REF_HELP)
        neptune_id = _NEPTUNE_VERSION_ID.match(raw)
        if neptune_id:
            return cls(name=neptune_id["model"], version=int(neptune_id["n"]))
        body = raw.removeprefix("models:/")
        if body != raw and "@" not in body and "/" in body:
            body = "@".join(body.rsplit("/", 1))
        if body.count("@") > 1:
            raise InputError("ref", f"{raw!r} has more than one '@'", REF_HELP)
        name, _, selector = body.partition("@")
        name = name.strip() or (default_name or "")
        if not name:
            raise InputError("ref", f"{raw!r} names no model", REF_HELP)
        if not _NAME.match(name):
            raise InputError(
                "ref", f"model name {name!r} is not valid", "use letters, digits, '.', '_' and '-' (max 200)"
            )
        if "@" in body and not selector.strip():
            raise InputError("ref", f"{raw!r} has nothing after '@'", REF_HELP)
        selector = selector.strip()
        if not selector or selector.lower() == "latest":
            return cls(name=name)
        if selector.isdigit():
            if int(selector) < 1:
                raise InputError("ref", f"version {selector} does not exist; versions start at 1", REF_HELP)
            return cls(name=name, version=int(selector))
        if selector.startswith("v") and selector[1:].isdigit() and int(selector[1:]) >= 1:
            return cls(name=name, version=int(selector[1:]))
        if not _ALIAS.match(selector):
            raise InputError("ref", f"{selector!r} is neither a version number nor an alias", REF_HELP)
        return cls(name=name, alias=selector.lower())


def is_neptune_version_id(text: str) -> bool:
    """Whether `text` is a Neptune model-version id such as `LULC-SEG-2` (always resolved on Neptune)."""
    return bool(_NEPTUNE_VERSION_ID.match(str(text).strip()))


def is_model_ref(text: str) -> bool:
    """Whether `text` (not a directory) names a registered model: NAME@SELECTOR or a Neptune version id."""
    return "@" in str(text) or is_neptune_version_id(text)


def parse_stage(value: str) -> Stage:
    """A stage name (case-insensitive); empty or unknown values are InputErrors listing the stages."""
    text = (value or "").strip().lower()
    if not text:
        raise InputError("stage", "the stage is empty", f"choose one of {', '.join(STAGES)}")
    if text not in STAGES:
        raise InputError("stage", f"unknown stage {value!r}", f"choose one of {', '.join(STAGES)}")
    return cast(Stage, text)


class RegistrationInfo(BaseModel):
    """What to record with a new version besides the bundle (defaults come from the bundle's lulc.json)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Registered model name (default: the configured name).")
    run_name: str | None = Field(default=None, description="Name of the registration run.")
    description: str | None = Field(default=None, description="Version description.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Extra/overriding test metrics.")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Extra/overriding hyper-parameters.")
    provenance: Provenance | None = Field(default=None, description="Lineage (default: the bundle's).")
    test_set: str | None = Field(default=None, description="Test-set fingerprint (lineage.fingerprint_test_set).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra tags on the version.")
    export_onnx: bool = Field(
        default=True,
        description="Export model.onnx (verified against torch) into the bundle before uploading, so the predictor "
        "serves it with onnxruntime (`registry.export_onnx`; false: torch weights only).",
    )


class ModelVersionInfo(BaseModel):
    """One registered version as the CLI and the gate see it."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="'mlflow' or 'neptune'.")
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Version number.")
    version_id: str = Field(description="Backend id (MLflow: the number; Neptune: e.g. 'PROJ-LULC-3').")
    stage: Stage = Field(default="none", description="Current stage.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing at this version.")
    created_at: str | None = Field(default=None, description="Creation time (ISO 8601).")
    description: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Test metrics.")
    tags: dict[str, str] = Field(default_factory=dict, description="All tags (lineage, gate, stage).")
    run_id: str | None = Field(default=None, description="Registration/training run id.")
    run_url: str | None = Field(default=None, description="Link to the run.")
    source: str = Field(description="Where the registry keeps the bundle (runs:/..., neptune field).")
    uri: str = Field(description="Stable URI of this version (models:/name/3, neptune://...).")
    storage_uri: str | None = Field(
        default=None,
        description="Artifact location of the bundle (KServe storageUri when its scheme is s3://, gs://, ...).",
    )

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version)

    @property
    def test_set(self) -> str | None:
        return self.tags.get(TAG_TEST_SET)

    @property
    def gate_passed(self) -> bool | None:
        value = self.tags.get("lulc.gate.passed")
        return None if value is None else value == "true"


class Registration(BaseModel):
    """A registration resolved against the bundle: everything a backend writes."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str
    bundle_dir: Path
    metadata: BundleMetadata
    run_name: str
    description: str | None
    metrics: dict[str, float]
    params: dict[str, str]
    version_tags: dict[str, str]
    provenance: Provenance
    label_set_yaml: str


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric metrics as a flat dict; nested dicts (per_class) become 'per_class/forest/iou'."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = _METRIC_KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
    return out


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Hyper-parameters as flat strings ('training.learning_rate': '0.0006')."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, f"{name}."))
        else:
            out[name] = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
    return out


def _test_set_of(metadata: BundleMetadata) -> str | None:
    value = metadata.metrics.get("test_set")
    if isinstance(value, str) and value:
        return value
    ids = metadata.metrics.get("test_tile_ids") or metadata.metrics.get("tile_ids")
    if isinstance(ids, list) and ids:
        return fingerprint_test_set(str(i) for i in ids)
    return None


def prepare_registration(bundle_dir: Path, info: RegistrationInfo, default_name: str) -> Registration:
    """Read the bundle at `bundle_dir` and merge it with `info` into what a backend records.

    With `info.export_onnx` (the default), `model.onnx` is exported into the bundle first and verified against
    torch, so the version is served by onnxruntime; a verified export of the same weights already there (the int8
    step's) is kept.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise NotFoundError(f"bundle_dir: {bundle_dir} is not a directory — give a model bundle directory")
    if info.export_onnx:
        from lulc_core.bundle import export_onnx

        export_onnx(bundle_dir, reuse=True)
    metadata = ModelBundle.read_metadata(bundle_dir)
    name = ModelRef.parse(info.name or default_name).name
    metrics = {**flatten_metrics(metadata.metrics), **info.metrics}
    params = flatten_params({**metadata.hyperparameters, **info.hyperparameters})
    params.update({"variant": metadata.variant, "bands": ",".join(metadata.bands)})
    params.update({"resolution": str(metadata.resolution), "chip_size": str(metadata.chip_size)})
    provenance = info.provenance or metadata.provenance
    if info.provenance is not None and provenance.tracking_run is None and metadata.provenance.tracking_run:
        # a registration built from the run configuration still belongs to the run the bundle was trained in
        trained_in = {"tracking_run": metadata.provenance.tracking_run, "run_url": metadata.provenance.run_url}
        provenance = provenance.model_copy(update={k: getattr(provenance, k) or v for k, v in trained_in.items()})
    label_set = metadata.label_set
    tags = {
        TAG_STAGE: "none",
        TAG_LABEL_SET: f"{label_set.name}:{label_set.fingerprint()}",
        TAG_BANDS: ",".join(metadata.bands),
        **lineage_tags(provenance),
        **{TAG_METRIC + k: repr(v) for k, v in metrics.items()},
        **info.tags,
    }
    test_set = info.test_set or _test_set_of(metadata)
    if test_set:
        tags[TAG_TEST_SET] = test_set
    if (bundle_dir / "model.onnx").is_file():
        tags[TAG_ONNX] = "model.onnx"
    int8 = metadata.metrics.get("int8")
    if isinstance(int8, Mapping):  # lulc_core.quantization's figures: the served file, or why fp32 is served
        tags[TAG_INT8] = INT8_FILE if (bundle_dir / INT8_FILE).is_file() else f"rejected: {int8.get('reason')}"
    label_yaml = yaml.safe_dump(
        {"name": label_set.name, "classes": [c.model_dump(mode="json") for c in label_set.classes]}, sort_keys=False
    )
    return Registration(
        name=name,
        bundle_dir=bundle_dir,
        metadata=metadata,
        run_name=info.run_name or f"register-{name}",
        description=info.description,
        metrics=metrics,
        params=params,
        version_tags=tags,
        provenance=provenance,
        label_set_yaml=label_yaml,
    )


def registration_info(cfg: RunConfig, report: Any | None = None, run_url: str | None = None) -> RegistrationInfo:
    """The RegistrationInfo of a model trained with `cfg` and evaluated into `report` (an EvaluationReport).

    Records the run name, the provenance (code version, config hash, label set, AOI, time frames, imagery and
    label sources, run URL) and the test-set fingerprint (the report's `test_set`, else a hash of its tile ids).
    """
    label_set = LabelSet.from_yaml(cfg.labels.label_set)
    test_set = getattr(report, "test_set", None) or None
    tile_ids = getattr(report, "tile_ids", None)
    if test_set is None and tile_ids:
        test_set = fingerprint_test_set(tile_ids)
    metrics: dict[str, float] = {}
    for key in ("miou", "overall_accuracy"):
        value = getattr(report, key, None)
        if isinstance(value, int | float):
            metrics[key] = float(value)
    return RegistrationInfo(
        run_name=cfg.name,
        provenance=build_provenance(cfg, label_set, run_url=run_url),
        test_set=test_set,
        export_onnx=cfg.registry.export_onnx,
        metrics=metrics,
        hyperparameters={"training": cfg.training.model_dump(mode="json"), "model": cfg.model.model_dump(mode="json")},
    )


def metrics_from_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """The `lulc.metric.*` tags as numbers."""
    out: dict[str, float] = {}
    for key, value in tags.items():
        if key.startswith(TAG_METRIC):
            with contextlib.suppress(ValueError):
                out[key.removeprefix(TAG_METRIC)] = float(value)
    return out


class BundleCache:
    """Downloaded bundles under `<root>/<name>/<version>`, reused while their source key is unchanged."""

    MARKER = ".lulc-cache.json"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def lookup(self, name: str, version: int, key: str) -> Path | None:
        """The cached bundle when complete (marker written last) and downloaded from the same `key`."""
        target = self.path(name, version)
        marker = target / self.MARKER
        try:
            recorded = json.loads(marker.read_text()).get("key")
        except (OSError, ValueError):
            return None
        if recorded != key or not (target / METADATA_FILE).is_file():
            return None
        return target

    def mark(self, name: str, version: int, key: str) -> None:
        """Record that the cached copy matches `key` (after an in-place change such as an ONNX export)."""
        (self.path(name, version) / self.MARKER).write_text(json.dumps({"key": key}))

    def fill(self, name: str, version: int, key: str, download: Callable[[Path], Path]) -> Path:
        """Download into a staging directory beside the target, then rename it into place.

        `download(staging_dir)` returns the directory inside `staging_dir` that holds lulc.json.
        """
        target = self.path(name, version)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{version}.{uuid.uuid4().hex[:8]}.partial"
        staging.mkdir()
        try:
            got = download(staging)
            if not (got / METADATA_FILE).is_file():
                raise NotFoundError(f"{name}@{version}: the downloaded artifact holds no {METADATA_FILE}")
            (got / self.MARKER).write_text(json.dumps({"key": key}))
            publish_tree(got)  # bundles registered with 0600 files stay readable by a predictor of another UID
            if target.exists():
                shutil.rmtree(target)
            got.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


class ModelRegistry(ABC):
    """A model registry backend. All methods raise NotFoundError, InputError or UpstreamError on failure."""

    backend: str = "?"

    def __init__(self, model_name: str, cache_dir: Path) -> None:
        self.model_name = ModelRef.parse(model_name).name
        self.cache = BundleCache(cache_dir)

    def ref(self, ref: str | ModelRef) -> ModelRef:
        """Parse `ref`, filling in the configured model name for '@stage' shorthands."""
        return ModelRef.parse(ref, default_name=self.model_name)

    @abstractmethod
    def register(self, bundle_dir: Path, metadata: RegistrationInfo | None = None) -> ModelRef:
        """Store the bundle directory as a new version with metrics, lineage and label set; returns its ref."""

    @abstractmethod
    def get(self, ref: str | ModelRef) -> ModelVersionInfo:
        """The version `ref` points at (NotFoundError when the model, version or alias does not exist)."""

    @abstractmethod
    def list_versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        """All versions of model `name` (default: the configured one), newest first."""

    @abstractmethod
    def list_models(self) -> list[str]:
        """Names of the registered models."""

    @abstractmethod
    def promote(self, ref: str | ModelRef, stage: str) -> ModelVersionInfo:
        """Move the version to `stage` (none/staging/production/archived)."""

    @abstractmethod
    def set_tags(self, ref: str | ModelRef, tags: Mapping[str, str]) -> None:
        """Set string tags on the version."""

    def start_training_run(self, name: str) -> TrainingRun:
        """A run of this backend's tracker for training curves (see `lulc_core.registry.tracking`)."""
        raise InputError("registry.track_training", f"the {self.backend} backend has no tracker", "set it to false")

    def join_training_run(self, run_id: str) -> TrainingRun:
        """The existing tracker run `run_id` (started by another process, e.g. the pipeline's train step)."""
        raise InputError("registry.track_training", f"the {self.backend} backend has no tracker", "set it to false")

    @abstractmethod
    def _download(self, info: ModelVersionInfo, staging: Path) -> Path:
        """Download the version's bundle below `staging`; return the directory holding lulc.json."""

    @abstractmethod
    def _attach(self, info: ModelVersionInfo, file: Path) -> None:
        """Upload `file` into the version's stored bundle (e.g. model.onnx)."""

    def _cache_key(self, info: ModelVersionInfo) -> str:
        return json.dumps([self.backend, info.source, info.run_id, info.tags.get(TAG_ONNX)])

    def resolve(self, ref: str | ModelRef) -> Path:
        """A local directory holding the bundle of `ref` (downloaded once into the cache)."""
        info = self.get(ref)
        key = self._cache_key(info)
        hit = self.cache.lookup(info.name, info.version, key)
        if hit is not None:
            log.info("%s@%d: cached at %s", info.name, info.version, hit)
            return hit
        log.info("%s@%d: downloading %s", info.name, info.version, info.source)
        return self.cache.fill(info.name, info.version, key, lambda staging: self._download(info, staging))

    def pull(self, ref: str | ModelRef, dest: Path) -> Path:
        """Download the version's bundle into `dest` (lulc.json at its top), past the cache: what KServe's storage
        initializer does for /mnt/models. Files already in `dest` with the same names are replaced."""
        info = self.get(ref)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".lulc-pull-", dir=dest) as staging:
            got = self._download(info, Path(staging))
            if not (got / METADATA_FILE).is_file():
                raise NotFoundError(f"{info.name}@{info.version}: the stored bundle holds no {METADATA_FILE}")
            for child in got.iterdir():
                target = dest / child.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                child.replace(target)
        log.info("%s@%d: pulled into %s", info.name, info.version, dest)
        return dest

    def export_onnx(self, ref: str | ModelRef) -> Path:
        """Export the version's model to ONNX, store it in the version's bundle, return the local file."""
        from lulc_core.bundle import export_onnx

        info = self.get(ref)
        bundle_dir = self.resolve(info.ref)
        onnx_file = export_onnx(bundle_dir)
        self._attach(info, onnx_file)
        self.set_tags(info.ref, {TAG_ONNX: onnx_file.name})
        updated = self.get(info.ref)
        self.cache.mark(info.name, info.version, self._cache_key(updated))
        return onnx_file
