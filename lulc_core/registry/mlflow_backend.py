"""MLflow registry backend (the embedded default: `sqlite:///<work_dir>/mlflow.db`, artifacts in <work_dir>/mlruns).

A registration is an MLflow run (params = hyper-parameters, metrics = test metrics, tags = lineage; the bundle
directory logged under `bundle/`, the label set as `label_set.yaml`) plus a registered model version whose
source is `runs:/<run_id>/bundle`, tagged with metrics, lineage and later the gate decision. Stages
`staging`/`production` are registered-model aliases (`models:/<name>@production`); `archived`/`none` are kept
in the `lulc.stage` version tag.

KServe: `ModelVersionInfo.storage_uri` is the bundle's underlying artifact location (`<run artifact_uri>/bundle`).
KServe's storage initializer fetches it when the artifacts live in an object store: `registry.artifact_root:
s3://bucket/mlflow` (the experiment's artifact location, also with an embedded SQLite store), or a tracking
server started with `--default-artifact-root s3://bucket/mlflow --no-serve-artifacts`, give `s3://.../bundle`
(gs:// and Azure Blob work alike). It cannot fetch `models:/`, `runs:/`, `mlflow-artifacts:/` (proxied
artifacts) or `file://` URIs; `serving.deploy.DeploySpec` refuses those.

Only `MlflowClient` is used (no `mlflow.pyfunc`), and mlflow is imported inside the methods.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from lulc_core.errors import InputError, LulcError, NotFoundError, UpstreamError
from lulc_core.registry.base import (
    ALIAS_STAGES,
    TAG_STAGE,
    ModelRef,
    ModelRegistry,
    ModelVersionInfo,
    RegistrationInfo,
    Stage,
    metrics_from_tags,
    parse_stage,
    prepare_registration,
)
from lulc_core.registry.tracking import TrainingRun

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger
    from mlflow import MlflowClient
    from mlflow.entities import Run
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

EXPERIMENT = "lulc-registry"
REMOTE_ENV_DEFAULTS = {
    # Fail within seconds instead of MLflow's default of 7 retries with exponential backoff (minutes).
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def quiet_mlflow() -> None:
    """Keep MLflow's and alembic's INFO chatter (database migrations) out of the logs."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class MlflowRegistry(ModelRegistry):
    """Model registry on an MLflow tracking/registry server or an embedded SQLite database."""

    backend = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        cache_dir: Path,
        *,
        artifact_root: Path | str | None = None,
        registry_uri: str | None = None,
        experiment: str = EXPERIMENT,
    ) -> None:
        super().__init__(model_name, cache_dir)
        scheme = urlparse(tracking_uri).scheme
        if scheme not in _SCHEMES:
            raise InputError(
                "registry.tracking_uri",
                f"{tracking_uri!r} is not an MLflow tracking URI",
                "use sqlite:///path/mlflow.db, http(s)://host:port or a database URI",
            )
        if scheme == "sqlite":
            db = tracking_uri.removeprefix("sqlite:///")
            if db and db != ":memory:":
                Path(db).parent.mkdir(parents=True, exist_ok=True)
        if scheme in ("http", "https"):
            for key, value in REMOTE_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        quiet_mlflow()
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri or tracking_uri
        self.remote = scheme in ("http", "https", "databricks")
        # a configured URI (s3://...) always applies; the local default only to a local store (a server has its own)
        self._explicit_root = isinstance(artifact_root, str)
        if isinstance(artifact_root, str):
            self.artifact_location: str | None = artifact_root if "://" in artifact_root else _file_uri(artifact_root)
        else:
            self.artifact_location = None if self.remote or artifact_root is None else _file_uri(artifact_root)
        self.experiment = experiment
        self._client: MlflowClient | None = None

    # -- plumbing -------------------------------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            quiet_mlflow()  # after the import: mlflow configures its loggers when first imported
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)
        return self._client

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate MLflow and connection errors into lulc errors naming `what`."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except LulcError:
            raise
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            text = str(getattr(exc, "message", exc))
            if code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFoundError(f"{what}: {text}") from exc
            if _looks_unreachable(text):
                raise self._unreachable(text) from exc
            if code == "INVALID_PARAMETER_VALUE":
                raise InputError(what, text) from exc
            raise UpstreamError("mlflow", f"{what}: {text}") from exc
        except (OSError, ConnectionError) as exc:
            raise self._unreachable(str(exc)) from exc
        except Exception as exc:
            if _looks_unreachable(str(exc)):
                raise self._unreachable(str(exc)) from exc
            raise

    def _unreachable(self, text: str) -> UpstreamError:
        return UpstreamError(
            "mlflow",
            f"cannot reach the tracking server {self.tracking_uri} ({text.splitlines()[0][:300]}) — check "
            "registry.tracking_uri / MLFLOW_TRACKING_URI and that the server runs",
            status_code=503,
        )

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            wanted = self.artifact_location
            if self._explicit_root and wanted and exp.artifact_location.rstrip("/") != wanted.rstrip("/"):
                log.warning(
                    "experiment %r keeps its artifacts at %s, not %s (registry.artifact_root applies when the "
                    "experiment is created) — use a new tracking database or experiment for the new location",
                    self.experiment,
                    exp.artifact_location,
                    wanted,
                )
            return str(exp.experiment_id)
        try:
            return str(self.client.create_experiment(self.experiment, artifact_location=self.artifact_location))
        except MlflowException as exc:  # created concurrently
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise exc from None
            return str(exp.experiment_id)

    def _run_url(self, experiment_id: str, run_id: str) -> str | None:
        if not self.remote:
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    # -- versions -------------------------------------------------------------------------------------------

    def _aliases(self, name: str) -> dict[str, list[str]]:
        """Version -> aliases of model `name` (search results do not carry aliases)."""
        out: dict[str, list[str]] = {}
        for alias, version in (self.client.get_registered_model(name).aliases or {}).items():
            out.setdefault(str(version), []).append(alias)
        return out

    def _to_info(self, mv: ModelVersion, aliases_of: dict[str, list[str]] | None = None) -> ModelVersionInfo:
        tags = dict(mv.tags or {})
        if aliases_of is None:
            aliases_of = self._aliases(mv.name)
        aliases = sorted(aliases_of.get(str(mv.version), []))
        stage: Stage = "none"
        if "production" in aliases:
            stage = "production"
        elif "staging" in aliases:
            stage = "staging"
        elif tags.get(TAG_STAGE) == "archived":
            stage = "archived"
        storage_uri = None
        if mv.run_id:
            with contextlib.suppress(Exception):
                storage_uri = self.client.get_run(mv.run_id).info.artifact_uri.rstrip("/") + "/bundle"
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
        return ModelVersionInfo(
            backend=self.backend,
            name=mv.name,
            version=int(mv.version),
            version_id=str(mv.version),
            stage=stage,
            aliases=aliases,
            created_at=created,
            description=mv.description or None,
            metrics=metrics_from_tags(tags),
            tags=tags,
            run_id=mv.run_id,
            run_url=mv.run_link or None,
            source=mv.source or "",
            uri=f"models:/{mv.name}/{mv.version}",
            storage_uri=storage_uri,
        )

    def _versions(self, name: str) -> list[ModelVersion]:
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted(found, key=lambda mv: int(mv.version), reverse=True)

    def _require_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = ", ".join(self.list_models()) or "none yet"
            raise NotFoundError(
                f"no registered model {name!r} (models: {known}) — register one with `lulc registry register`"
            ) from None

    def _find(self, ref: ModelRef) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        self._require_model(ref.name)
        if ref.version is not None:
            try:
                return self.client.get_model_version(ref.name, str(ref.version))
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                have = ", ".join(str(mv.version) for mv in self._versions(ref.name)[::-1]) or "none"
                raise NotFoundError(f"model {ref.name!r} has no version {ref.version} (versions: {have})") from None
        versions = self._versions(ref.name)
        if ref.is_latest:
            if not versions:
                raise NotFoundError(f"model {ref.name!r} has no versions yet")
            return versions[0]
        aliases_of = self._aliases(ref.name)
        if ref.alias in ("archived", "none"):
            for mv in versions:
                if self._to_info(mv, aliases_of).stage == ref.alias:
                    return mv
        else:
            for version, aliases in aliases_of.items():
                if ref.alias in aliases:
                    return self.client.get_model_version(ref.name, version)
        raise NotFoundError(
            f"model {ref.name!r} has no version in {ref.alias!r} — promote one with "
            f"`lulc registry promote {ref.name}@<version> --stage {ref.alias}`"
        )

    # -- interface ------------------------------------------------------------------------------------------

    def register(self, bundle_dir: Path, metadata: RegistrationInfo | None = None) -> ModelRef:
        """Log the bundle as a run and register it as a new version of the model."""
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        info = metadata or RegistrationInfo()
        reg = prepare_registration(Path(bundle_dir), info, self.model_name)
        with self._errors(f"register {reg.name}"):
            exp_id = self._experiment_id()
            trained_in = self._training_run(reg.provenance.tracking_run)
            if trained_in is None:
                run = self.client.create_run(exp_id, run_name=reg.run_name, tags=reg.version_tags)
                logged: dict[str, str] = {}
            else:  # the run holding the training curves becomes the version's run
                run = trained_in
                logged = dict(run.data.params)
                for key, value in reg.version_tags.items():
                    self.client.set_tag(run.info.run_id, key, value)
            run_id = run.info.run_id
            try:
                now = int(time.time() * 1000)
                metrics = [Metric(k, v, now, 0) for k, v in reg.metrics.items()]
                params = [Param(k, v[:6000]) for k, v in reg.params.items() if k not in logged]
                for i in range(0, max(len(metrics), len(params)), 100):
                    self.client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
                self.client.log_artifacts(run_id, str(reg.bundle_dir), "bundle")
                self.client.log_text(run_id, reg.label_set_yaml, "label_set.yaml")
                self.client.set_terminated(run_id)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(run_id, status="FAILED")
                raise
            try:
                self.client.create_registered_model(reg.name, description="lulc SegFormer land-use/land-cover model")
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise
            run_url = reg.provenance.run_url or self._run_url(exp_id, run_id)
            mv = self.client.create_model_version(
                reg.name,
                source=f"runs:/{run_id}/bundle",
                run_id=run_id,
                tags=reg.version_tags,
                run_link=run_url,
                description=reg.description,
            )
        ref = ModelRef(name=reg.name, version=int(mv.version))
        log.info("registered %s (run %s)", ref, run_id)
        return ref

    def _training_run(self, run_id: str | None) -> Run | None:
        """The training run `run_id` when this store has it (else None: the bundle was trained elsewhere)."""
        from mlflow.exceptions import MlflowException

        if not run_id:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            log.warning("training run %s is not in %s: registering in a new run", run_id, self.tracking_uri)
            return None
        return None if run.info.lifecycle_stage == "deleted" else run

    def start_training_run(self, name: str) -> TrainingRun:
        """A run in the registry's experiment that Lightning's MLFlowLogger logs the training curves into."""
        with self._errors(f"start training run {name}"):
            exp_id = self._experiment_id()
            run = self.client.create_run(exp_id, run_name=name, tags={"lulc.kind": "training"})
        return MlflowTrainingRun(self, run.info.run_id, self._run_url(exp_id, run.info.run_id))

    def join_training_run(self, run_id: str) -> TrainingRun:
        """The run `run_id` of this tracking store (the pipeline step's run, joined by a training job's rank 0)."""
        with self._errors(f"training run {run_id}"):
            run = self.client.get_run(run_id)
        return MlflowTrainingRun(self, run_id, self._run_url(run.info.experiment_id, run_id))

    def get(self, ref: str | ModelRef) -> ModelVersionInfo:
        r = self.ref(ref)
        with self._errors(str(r)):
            return self._to_info(self._find(r))

    def list_versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        model = self.ref(name or self.model_name).name
        with self._errors(f"model {model}"):
            self._require_model(model)
            aliases_of = self._aliases(model)
            return [self._to_info(mv, aliases_of) for mv in self._versions(model)]

    def list_models(self) -> list[str]:
        with self._errors("list models"):
            return sorted(m.name for m in self.client.search_registered_models())

    def set_tags(self, ref: str | ModelRef, tags: Mapping[str, str]) -> None:
        r = self.ref(ref)
        with self._errors(str(r)):
            mv = self._find(r)
            for key, value in tags.items():
                self.client.set_model_version_tag(mv.name, mv.version, key, str(value)[:5000])

    def promote(self, ref: str | ModelRef, stage: str) -> ModelVersionInfo:
        """Move the version to `stage`; the previous holder of staging/production is displaced."""
        target = parse_stage(stage)
        r = self.ref(ref)
        with self._errors(f"promote {r}"):
            mv = self._find(r)
            name, version = mv.name, mv.version
            for alias in self._aliases(name).get(str(version), []):
                if alias in ALIAS_STAGES and alias != target:
                    self.client.delete_registered_model_alias(name, alias)
            if target in ALIAS_STAGES:
                with contextlib.suppress(Exception):
                    previous = self.client.get_model_version_by_alias(name, target)
                    if previous.version != version:
                        displaced = "archived" if target == "production" else "none"
                        self.client.set_model_version_tag(name, previous.version, TAG_STAGE, displaced)
                self.client.set_registered_model_alias(name, target, version)
            self.client.set_model_version_tag(name, version, TAG_STAGE, target)
            log.info("%s@%s is now %s", name, version, target)
            return self._to_info(self.client.get_model_version(name, version))

    def _download(self, info: ModelVersionInfo, staging: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        with self._errors(f"download {info.name}@{info.version}"):
            path = download_artifacts(
                artifact_uri=f"runs:/{info.run_id}/bundle", dst_path=str(staging), tracking_uri=self.tracking_uri
            )
        return Path(path)

    def _attach(self, info: ModelVersionInfo, file: Path) -> None:
        with self._errors(f"upload {file.name} to {info.name}@{info.version}"):
            if not info.run_id:
                raise NotFoundError(f"{info.name}@{info.version} has no run to attach {file.name} to")
            self.client.log_artifact(info.run_id, str(file), "bundle")


class MlflowTrainingRun(TrainingRun):
    """An MLflow run of the registry's experiment; Lightning's MLFlowLogger writes the curves into it."""

    backend = "mlflow"

    def __init__(self, registry: MlflowRegistry, run_id: str, url: str | None) -> None:
        super().__init__(run_id, url)
        self.registry = registry
        # MLFlowLogger sets mlflow's global tracking URI and MLFLOW_TRACKING_URI (inherited by subprocesses):
        # `close` puts back what the process had, so later registries and steps see their own configuration
        self._previous_uri = os.environ.get("MLFLOW_TRACKING_URI")

    def logger(self) -> Logger:
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(
            experiment_name=self.registry.experiment, tracking_uri=self.registry.tracking_uri, run_id=self.run_id
        )

    def close(self, failed: bool = False) -> None:
        import mlflow

        with contextlib.suppress(Exception):
            self.registry.client.set_terminated(str(self.run_id), status="FAILED" if failed else "FINISHED")
        mlflow.set_tracking_uri(self._previous_uri)  # type: ignore[arg-type]  # None unsets it (mlflow 2.x, 3.x)
        if self._previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def _file_uri(path: Path | str) -> str:
    return Path(path).resolve().as_uri()


def _looks_unreachable(text: str) -> bool:
    needles = ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out", "NameResolution")
    return any(n in text for n in needles)
