"""Neptune registry backend (neptune client 1.x): a Neptune *model* with one *model version* per registration.

Status: Neptune announced the shutdown of its hosted service (app.neptune.ai) on 3 December 2025. This backend
keeps working against a self-hosted Neptune server (the token's `api_address` points at it) and in offline mode
(`NEPTUNE_MODE=offline`, data under `./.neptune/` for a later `neptune sync` to such a server). MLflow is the
default backend.

Configuration: `NEPTUNE_API_TOKEN`, `NEPTUNE_PROJECT` (or `registry.neptune_project`), `NEPTUNE_MODE` (async -
the default - and sync register synchronously; offline; read-only). The model key is `registry.neptune_model_key`
(1-10 upper-case letters/digits); the model id is `<PROJECT_KEY>-<KEY>`, versions `<PROJECT_KEY>-<KEY>-<n>`.

A version holds: `bundle` (file set: the bundle directory), `metrics/*`, `hyperparameters/*`, `provenance/*`,
`label_set/{name,fingerprint,yaml}`, `run_url`, `sys/stage` (none/staging/production/archived, changed with
`change_stage`), and `lulc/<tag>` strings mirroring the MLflow version tags (gate decision, lineage, test set).
`lulc/lulc.registration` is "in progress" from a version's creation until its bundle is uploaded ("complete"):
Neptune shows a version as soon as it exists, so `@latest` and the stages skip one that is still being registered.

Offline mode: the neptune client cannot create models or versions offline, so a registration is stored as an
offline *run* tagged `lulc-model-candidate` with the same fields and the bundle (copied to
`.neptune/lulc-bundles/`, because offline file sets only reference paths); after `neptune sync`, register the
bundle online. Reads (`list`, `resolve`, `promote`) need a server.

KServe: a version's `storage_uri` is `neptune://<workspace>/<project>/<version id>`. KServe fetches it through the
ClusterStorageContainer of `manifests/cluster/neptune-storage`, whose init container runs `lulc registry pull
<uri> /mnt/models` with NEPTUNE_API_TOKEN from a Secret (`pull_storage_uri`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lulc_core.bundle import METADATA_FILE
from lulc_core.config import RegistryConfig
from lulc_core.errors import InputError, LulcError, NotFoundError, UpstreamError
from lulc_core.registry.base import (
    ALIAS_STAGES,
    STAGES,
    TAG_STAGE,
    ModelRef,
    ModelRegistry,
    ModelVersionInfo,
    Registration,
    RegistrationInfo,
    Stage,
    metrics_from_tags,
    parse_stage,
    prepare_registration,
)
from lulc_core.registry.tracking import TrainingRun

if TYPE_CHECKING:
    from lulc_core.registry.neptune_logger import NeptuneRunLogger

log = logging.getLogger(__name__)

MODES = ("async", "sync", "offline", "read-only", "debug")
CREDENTIALS_FIX = (
    "export NEPTUNE_API_TOKEN=<API token from your Neptune server> and NEPTUNE_PROJECT=<workspace>/<project> "
    "(or set registry.neptune_project), or use NEPTUNE_MODE=offline to store locally for `neptune sync`"
)
SCHEME = "neptune://"
# Runs record what lulc logs, not the process's console, hardware, sources or git state.
QUIET_RUN: dict[str, Any] = {
    "capture_stdout": False,
    "capture_stderr": False,
    "capture_hardware_metrics": False,
    "source_files": [],
    "git_ref": False,
}
_KEY = re.compile(r"^[A-Z0-9]{1,10}$")
_VERSION_ID = re.compile(r"^(?P<model>[A-Z0-9]+-[A-Z0-9]+)-(?P<n>\d+)$")
# Connection retries of the neptune client (read once, when neptune is first imported): seconds, not minutes.
NEPTUNE_ENV_DEFAULTS = {"NEPTUNE_RETRIES_TIMEOUT": "15", "NEPTUNE_REQUEST_TIMEOUT": "60"}


def _neptune() -> Any:
    for key, value in NEPTUNE_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import neptune

    for name in ("neptune", "neptune-client", "neptune.new"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return neptune


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: Exception) -> str:
    """The first line of a neptune client error that says something: without its colour codes and its
    "----ExceptionName----" banner."""
    name = type(exc).__name__
    for line in _ANSI.sub("", str(exc)).splitlines():
        text = line.strip(" -")
        if text and text != name:
            return text
    return name


def _tag_path(key: str) -> str:
    return "lulc/" + key.replace("/", "__")


def _tag_key(path: str) -> str:
    return path.removeprefix("lulc/").replace("__", "/")


TAG_REGISTRATION = "lulc.registration"
"""Written "in progress" as a version's first field and "complete" after its bundle is uploaded: `@latest` and the
stages skip a version another process is still registering (or whose registration failed), whose bundle is not
there yet. Versions without it (written by other tools) count as complete."""
REGISTRATION_IN_PROGRESS, REGISTRATION_COMPLETE = "in progress", "complete"


def _registration_complete(info: ModelVersionInfo) -> bool:
    return info.tags.get(TAG_REGISTRATION, REGISTRATION_COMPLETE) == REGISTRATION_COMPLETE


class NeptuneRegistry(ModelRegistry):
    """Model registry on a (self-hosted) Neptune server, through the neptune 1.x client."""

    backend = "neptune"

    def __init__(
        self,
        project: str | None,
        api_token: str | None,
        model_key: str,
        cache_dir: Path,
        *,
        mode: str = "async",
        model_name: str | None = None,
    ) -> None:
        if not _KEY.match(model_key):
            raise InputError(
                "registry.neptune_model_key", f"{model_key!r} is not a Neptune model key", "use 1-10 A-Z/0-9"
            )
        super().__init__(model_key, cache_dir)
        if mode not in MODES:
            raise InputError("NEPTUNE_MODE", f"unknown mode {mode!r}", f"choose one of {', '.join(MODES)}")
        if mode not in ("offline", "debug"):
            if not api_token:
                raise InputError("NEPTUNE_API_TOKEN", "is not set", CREDENTIALS_FIX)
            if not project:
                raise InputError("NEPTUNE_PROJECT", "is not set", CREDENTIALS_FIX)
        self.project = project
        self.api_token = api_token
        self.mode = mode
        self.model_key = model_key
        self.aliases = {model_key, *([model_name] if model_name else [])}
        self._project_key: str | None = None

    @classmethod
    def from_env(cls, cfg: RegistryConfig, cache_dir: Path) -> NeptuneRegistry:
        """Project from `cfg.neptune_project` or NEPTUNE_PROJECT; token and mode from the environment."""
        return cls(
            cfg.neptune_project or os.environ.get("NEPTUNE_PROJECT"),
            os.environ.get("NEPTUNE_API_TOKEN"),
            cfg.neptune_model_key,
            cache_dir,
            mode=os.environ.get("NEPTUNE_MODE", "async") or "async",
            model_name=cfg.model_name,
        )

    # -- plumbing -------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate neptune client errors into lulc errors naming `what`."""
        _neptune()
        from neptune.common.exceptions import (
            Forbidden,
            NeptuneConnectionLostException,
            NeptuneException,
            NeptuneInvalidApiTokenException,
            Unauthorized,
        )
        from neptune.exceptions import (
            CannotResolveHostname,
            FetchAttributeNotFoundException,
            MetadataContainerNotFound,
            NeptuneMissingApiTokenException,
            NeptuneMissingProjectNameException,
            ProjectNotFound,
        )

        try:
            yield
        except LulcError:
            raise
        except (NeptuneMissingApiTokenException, NeptuneInvalidApiTokenException) as exc:
            raise InputError(
                "NEPTUNE_API_TOKEN", "is missing or not a valid Neptune API token", CREDENTIALS_FIX
            ) from exc
        except (Unauthorized, Forbidden) as exc:
            raise InputError("NEPTUNE_API_TOKEN", f"the server refused access ({what})", CREDENTIALS_FIX) from exc
        except (NeptuneMissingProjectNameException, ProjectNotFound) as exc:
            raise InputError("NEPTUNE_PROJECT", f"project {self.project!r} not found", CREDENTIALS_FIX) from exc
        except (MetadataContainerNotFound, FetchAttributeNotFoundException) as exc:
            raise NotFoundError(f"{what}: not found in Neptune project {self.project}") from exc
        except (NeptuneConnectionLostException, CannotResolveHostname, ConnectionError) as exc:
            raise UpstreamError(
                "neptune",
                f"cannot reach the Neptune server of NEPTUNE_API_TOKEN ({what}) — check that the self-hosted server "
                "runs and the token's api_address",
                status_code=503,
            ) from exc
        except NeptuneException as exc:
            first = _first_line(exc)
            raise UpstreamError("neptune", f"{what}: {first}") from exc

    def _kwargs(self, mode: str) -> dict[str, Any]:
        return {"project": self.project, "api_token": self.api_token, "mode": mode}

    def _online_mode(self) -> str:
        if self.mode in ("offline", "debug"):
            raise InputError(
                "NEPTUNE_MODE",
                f"{self.mode} mode cannot read or change model versions",
                "unset NEPTUNE_MODE (or set async) with NEPTUNE_API_TOKEN/NEPTUNE_PROJECT of a Neptune server",
            )
        return "sync"

    def _key_of(self, name: str) -> str:
        if name in self.aliases:
            return self.model_key
        if _KEY.match(name):
            return name
        if "-" in name and _KEY.match(name.rsplit("-", 1)[-1]):
            return name.rsplit("-", 1)[-1]
        raise InputError("ref", f"{name!r} is not a Neptune model key or id", "use the model key, e.g. LULC@3")

    def project_key(self) -> str:
        """The project's key (prefix of model ids), read from the server once."""
        if self._project_key is None:
            neptune = _neptune()
            with self._errors(f"project {self.project}"):
                project = neptune.init_project(project=self.project, api_token=self.api_token, mode="read-only")
                try:
                    self._project_key = str(project["sys/id"].fetch())
                finally:
                    project.stop()
        return self._project_key

    def model_id(self, key: str) -> str:
        return f"{self.project_key()}-{key}"

    def _uri(self, version_id: str) -> str:
        return f"{SCHEME}{self.project}/{version_id}"

    # -- reads ----------------------------------------------------------------------------------------------

    def _table(self, key: str) -> list[dict[str, Any]]:
        """All versions of model `key` as dicts of field path -> value (one leaderboard search)."""
        neptune = _neptune()
        model_id = self.model_id(key)
        with self._errors(f"model {key}"):
            try:
                model = neptune.init_model(with_id=model_id, **self._kwargs("read-only"))
            except Exception as exc:
                from neptune.exceptions import ModelNotFound

                if isinstance(exc, ModelNotFound):
                    raise NotFoundError(
                        f"no Neptune model {model_id!r} in {self.project} — register one with `lulc registry register`"
                    ) from None
                raise
            try:
                frame = model.fetch_model_versions_table(progress_bar=False).to_pandas()
            finally:
                model.stop()
        rows = []
        for record in frame.to_dict(orient="records"):
            rows.append({k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))})
        return rows

    def _to_info(self, key: str, row: Mapping[str, Any]) -> ModelVersionInfo:
        version_id = str(row["sys/id"])
        m = _VERSION_ID.match(version_id)
        number = int(m["n"]) if m else 0
        tags = {_tag_key(k): str(v) for k, v in row.items() if k.startswith("lulc/")}
        stage = str(row.get("sys/stage", "none"))
        tags[TAG_STAGE] = stage
        created = row.get("sys/creation_time")
        return ModelVersionInfo(
            backend=self.backend,
            name=key,
            version=number,
            version_id=version_id,
            stage=stage if stage in STAGES else "none",  # type: ignore[arg-type]
            aliases=[stage] if stage in ALIAS_STAGES else [],
            created_at=str(created.isoformat()) if created is not None and hasattr(created, "isoformat") else None,
            description=row.get("sys/description") or None,
            metrics=metrics_from_tags(tags),
            tags=tags,
            run_id=version_id,
            run_url=row.get("run_url") or None,
            source=f"{self._uri(version_id)}/bundle",
            uri=self._uri(version_id),
            storage_uri=self._uri(version_id),
        )

    def list_versions(self, name: str | None = None) -> list[ModelVersionInfo]:
        self._online_mode()
        key = self._key_of(name or self.model_key)
        infos = [self._to_info(key, row) for row in self._table(key)]
        return sorted(infos, key=lambda v: v.version, reverse=True)

    def list_models(self) -> list[str]:
        self._online_mode()
        neptune = _neptune()
        with self._errors("list models"):
            project = neptune.init_project(project=self.project, api_token=self.api_token, mode="read-only")
            try:
                frame = project.fetch_models_table(columns=["sys/id"], progress_bar=False).to_pandas()
            finally:
                project.stop()
        prefix = self.project_key() + "-"
        return sorted(str(i).removeprefix(prefix) for i in frame.get("sys/id", []))

    def get(self, ref: str | ModelRef) -> ModelVersionInfo:
        self._online_mode()
        r = self.ref(ref)
        key = self._key_of(r.name)
        prefix = r.name.rsplit("-", 1)[0] if "-" in r.name and r.name not in self.aliases else None
        if prefix is not None and prefix != self.project_key():
            raise NotFoundError(
                f"{r.name} belongs to the Neptune project with key {prefix!r}; {self.project} has key "
                f"{self.project_key()!r} — set NEPTUNE_PROJECT to the model's project"
            )
        if r.alias is not None and r.alias not in STAGES:
            raise InputError("ref", f"Neptune has no alias {r.alias!r}", f"use a version number or a stage {STAGES}")
        versions = self.list_versions(key)
        if r.version is not None:
            for v in versions:
                if v.version != r.version:
                    continue
                if not _registration_complete(v):
                    raise NotFoundError(
                        f"{v.version_id} is still being registered, or its registration failed (its "
                        f"{TAG_REGISTRATION} is {v.tags[TAG_REGISTRATION]!r}): use another version"
                    )
                return v
            have = ", ".join(str(v.version) for v in versions[::-1]) or "none"
            raise NotFoundError(f"model {key!r} has no version {r.version} (versions: {have})")
        pending = [v.version for v in versions if not _registration_complete(v)]
        versions = [v for v in versions if _registration_complete(v)]
        if r.is_latest:
            if not versions:
                raise NotFoundError(
                    f"model {key!r} has no versions yet"
                    + (f" (versions {pending} are still being registered)" if pending else "")
                )
            return versions[0]
        for v in versions:
            if v.stage == r.alias:
                return v
        raise NotFoundError(
            f"model {key!r} has no version in stage {r.alias!r} — promote one with "
            f"`lulc registry promote {key}@<version> --stage {r.alias}`"
        )

    # -- writes ---------------------------------------------------------------------------------------------

    def _write_fields(self, obj: Any, reg: Registration) -> None:
        obj["metrics"] = dict(reg.metrics)
        obj["hyperparameters"] = dict(reg.params)
        obj["provenance"] = {
            k: ";".join(v) if isinstance(v, list) else v
            for k, v in reg.provenance.model_dump(mode="json").items()
            if v not in (None, [])
        }
        label_set = reg.metadata.label_set
        obj["label_set"] = {"name": label_set.name, "fingerprint": label_set.fingerprint(), "yaml": reg.label_set_yaml}
        if reg.provenance.run_url:
            obj["run_url"] = reg.provenance.run_url
        if reg.description:
            obj["sys/description"] = reg.description
        for key, value in reg.version_tags.items():
            obj[_tag_path(key)] = value

    def register(self, bundle_dir: Path, metadata: RegistrationInfo | None = None) -> ModelRef:
        """Create the model if missing and a new version holding the bundle and its metadata."""
        info = metadata or RegistrationInfo()
        reg = prepare_registration(Path(bundle_dir), info, self.model_key)
        key = self._key_of(reg.name)
        if self.mode in ("offline", "debug"):
            return self._register_offline(key, reg)
        if self.mode == "read-only":
            raise InputError("NEPTUNE_MODE", "read-only mode cannot register", "unset NEPTUNE_MODE or set async")
        neptune = _neptune()
        model_id = self.model_id(key)
        with self._errors(f"register {model_id}"):
            from neptune.exceptions import ModelNotFound

            try:
                model = neptune.init_model(with_id=model_id, **self._kwargs("sync"))
            except ModelNotFound:
                model = neptune.init_model(key=key, name="lulc SegFormer", **self._kwargs("sync"))
            model.stop()
            version = neptune.init_model_version(model=model_id, name=reg.run_name, **self._kwargs("sync"))
            try:
                version[_tag_path(TAG_REGISTRATION)] = REGISTRATION_IN_PROGRESS
                self._write_fields(version, reg)
                version["bundle"].upload_files(str(reg.bundle_dir), wait=True)
                version_id = str(version["sys/id"].fetch())
                if not reg.provenance.run_url:
                    version["run_url"] = version.get_url()
                if reg.provenance.tracking_run:
                    version["training_run"] = reg.provenance.tracking_run
                version[_tag_path(TAG_REGISTRATION)] = REGISTRATION_COMPLETE
                version.wait()
            finally:
                version.stop()
        if reg.provenance.tracking_run:
            self._link_training_run(reg.provenance.tracking_run, version_id)
        m = _VERSION_ID.match(version_id)
        ref = ModelRef(name=key, version=int(m["n"]) if m else None)
        log.info("registered %s (%s)", ref, version_id)
        return ref

    def start_training_run(self, name: str) -> TrainingRun:
        """A Neptune run for the training curves (offline mode: stored under .neptune/ for `neptune sync`)."""
        if self.mode == "read-only":
            raise InputError("NEPTUNE_MODE", "read-only mode cannot log training", "unset NEPTUNE_MODE or set async")
        neptune = _neptune()
        with self._errors("start training run"):
            run = neptune.init_run(
                project=self.project,
                api_token=self.api_token,
                mode=self.mode,
                name=name,
                tags=["lulc-training"],
                **QUIET_RUN,
            )
            online = self.mode not in ("offline", "debug")
            run_id = str(run["sys/id"].fetch()) if online else None
            url = run.get_url() if online else None
        return NeptuneTrainingRun(run, run_id, url, self)

    def join_training_run(self, run_id: str) -> TrainingRun:
        """The Neptune run `run_id` (the pipeline step's run, joined by a training job's rank 0)."""
        with self._errors(f"training run {run_id}"):
            run = _neptune().init_run(with_id=run_id, **self._kwargs(self.mode), **QUIET_RUN)
            url = run.get_url() if self.mode not in ("offline", "debug") else None
        return NeptuneTrainingRun(run, run_id, url, self)

    def _link_training_run(self, run_id: str, version_id: str) -> None:
        """Record the registered version in the training run (the version already records the run)."""
        try:
            with self._errors(f"training run {run_id}"):
                run = _neptune().init_run(with_id=run_id, **self._kwargs("sync"), **QUIET_RUN)
                try:
                    run["model_version"] = version_id
                    run.wait()
                finally:
                    run.stop()
        except LulcError as exc:
            log.warning("%s is registered, but its training run %s was not updated: %s", version_id, run_id, exc)

    def _register_offline(self, key: str, reg: Registration) -> ModelRef:
        """Store the registration as an offline run (bundle copied beside it) for `neptune sync`."""
        neptune = _neptune()
        with self._errors("offline registration"):
            run = neptune.init_run(
                project=self.project,
                mode=self.mode,
                name=reg.run_name,
                tags=["lulc-model-candidate", f"model:{key}"],
                capture_stdout=False,
                capture_stderr=False,
                capture_hardware_metrics=False,
                source_files=[],
                git_ref=False,
            )
            try:
                self._write_fields(run, reg)
                run["model_key"] = key
                kept = Path(".neptune") / "lulc-bundles" / uuid.uuid4().hex
                shutil.copytree(reg.bundle_dir, kept, dirs_exist_ok=True)
                run["bundle"].upload_files(str(kept.resolve()))
            finally:
                run.stop()
        log.warning(
            "Neptune %s mode: registration stored as a run under .neptune/ (models cannot be created offline); "
            "run `neptune sync --project <workspace/project>` and then `lulc registry register` online",
            self.mode,
        )
        return ModelRef(name=key, alias="offline")

    def _open_version(self, info: ModelVersionInfo, mode: str) -> Any:
        return _neptune().init_model_version(with_id=info.version_id, **self._kwargs(mode))

    def set_tags(self, ref: str | ModelRef, tags: Mapping[str, str]) -> None:
        info = self.get(ref)
        with self._errors(f"tag {info.version_id}"):
            version = self._open_version(info, self._online_mode())
            try:
                for key, value in tags.items():
                    version[_tag_path(key)] = str(value)
                version.wait()
            finally:
                version.stop()

    def promote(self, ref: str | ModelRef, stage: str) -> ModelVersionInfo:
        """`change_stage` on the version; the previous holder of staging/production is displaced."""
        target: Stage = parse_stage(stage)
        mode = self._online_mode()
        info = self.get(ref)
        displaced: Stage = "archived" if target == "production" else "none"
        with self._errors(f"promote {info.version_id}"):
            if target in ALIAS_STAGES:
                for other in self.list_versions(info.name):
                    if other.stage == target and other.version != info.version:
                        self._change_stage(other, displaced, mode)
            self._change_stage(info, target, mode)
        log.info("%s is now %s", info.version_id, target)
        return self.get(ModelRef(name=info.name, version=info.version))

    def _change_stage(self, info: ModelVersionInfo, stage: Stage, mode: str) -> None:
        version = self._open_version(info, mode)
        try:
            version.change_stage(stage)
            version[_tag_path(TAG_STAGE)] = stage
            version.wait()
        finally:
            version.stop()

    def _download(self, info: ModelVersionInfo, staging: Path) -> Path:
        archive = staging / "bundle.zip"
        with self._errors(f"download {info.version_id}"):
            version = self._open_version(info, "read-only")
            try:
                version["bundle"].download(destination=str(archive), progress_bar=False)
            finally:
                version.stop()
        target = staging / "bundle"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                resolved = (target / member).resolve()
                if not resolved.is_relative_to(target.resolve()):
                    raise UpstreamError("neptune", f"{info.version_id}: unsafe path {member!r} in the bundle archive")
            zf.extractall(target)
        archive.unlink()
        # neptune stores file-set paths relative to the current directory when the files lie below it, so the
        # bundle may sit under a prefix (e.g. .lulc/out/bundle/): take the shallowest directory with lulc.json.
        found = sorted(target.rglob(METADATA_FILE), key=lambda p: len(p.parts))
        if not found:
            raise NotFoundError(f"{info.version_id}: the stored bundle holds no {METADATA_FILE}")
        return found[0].parent

    def _attach(self, info: ModelVersionInfo, file: Path) -> None:
        with self._errors(f"upload {file.name} to {info.version_id}"):
            version = self._open_version(info, self._online_mode())
            try:
                version["bundle"].upload_files([str(file)], wait=True)
                version.wait()
            finally:
                version.stop()

    def _cache_key(self, info: ModelVersionInfo) -> str:
        return f'["neptune", "{self._uri(info.version_id)}", "{info.tags.get("lulc.onnx")}"]'


class NeptuneTrainingRun(TrainingRun):
    """A Neptune run; `NeptuneRunLogger` appends the curves to its `training/*` series."""

    backend = "neptune"

    def __init__(self, run: Any, run_id: str | None, url: str | None, registry: NeptuneRegistry) -> None:
        super().__init__(run_id, url)
        self.run = run
        self.registry = registry

    def logger(self) -> NeptuneRunLogger:
        from lulc_core.registry.neptune_logger import NeptuneRunLogger

        return NeptuneRunLogger(self.run)

    def close(self, failed: bool = False) -> None:
        with contextlib.suppress(Exception), self.registry._errors(f"close training run {self.run_id}"):
            if failed:
                self.run["sys/failed"] = True
            self.run.stop()


def parse_storage_uri(uri: str) -> tuple[str, str]:
    """`neptune://<workspace>/<project>/<version id>` -> (project, version id)."""
    body = uri.removeprefix(SCHEME)
    project, _, version_id = body.rpartition("/")
    if not uri.startswith(SCHEME) or project.count("/") != 1 or not _VERSION_ID.match(version_id):
        raise InputError(
            "storage_uri",
            f"{uri!r} is not a Neptune model version URI",
            "write neptune://<workspace>/<project>/<PROJECT_KEY>-<MODEL_KEY>-<n>, as `lulc registry show` prints it",
        )
    return project, version_id


def pull_storage_uri(uri: str, dest: Path, cache_dir: Path) -> Path:
    """Download the bundle of the version `uri` names into `dest` (NEPTUNE_API_TOKEN and NEPTUNE_MODE from the
    environment; the project comes from the URI)."""
    project, version_id = parse_storage_uri(uri)
    m = _VERSION_ID.match(version_id)
    assert m is not None
    key = m["model"].rsplit("-", 1)[-1]
    mode = os.environ.get("NEPTUNE_MODE", "async") or "async"
    registry = NeptuneRegistry(project, os.environ.get("NEPTUNE_API_TOKEN"), key, cache_dir, mode=mode)
    info = registry.get(ModelRef(name=key, version=int(m["n"])))
    if info.version_id != version_id:
        raise NotFoundError(f"{uri}: no model version {version_id} in {project} (found {info.version_id})")
    return registry.pull(info.ref, dest)


def sync_offline(project: str | None, path: Path = Path()) -> None:
    """Upload the offline data under `<path>/.neptune` to the server of NEPTUNE_API_TOKEN (`neptune sync`).

    Calls the neptune client's own `sync` command (its `neptune` console script needs `pkg_resources`, which
    recent setuptools no longer ship).
    """
    if not os.environ.get("NEPTUNE_API_TOKEN"):
        raise InputError("NEPTUNE_API_TOKEN", "is not set", CREDENTIALS_FIX)
    if not project:
        raise InputError("NEPTUNE_PROJECT", "is not set", "pass --project <workspace>/<project>")
    if not (Path(path) / ".neptune").is_dir():
        raise NotFoundError(f"{Path(path).resolve()}/.neptune does not exist — nothing was stored offline here")
    _neptune()
    from neptune.cli.commands import sync

    registry = NeptuneRegistry(project, os.environ["NEPTUNE_API_TOKEN"], "LULC", Path(path), mode="sync")
    with registry._errors("neptune sync"):
        sync.main(["--path", str(path), "--project", project, "--offline-only"], standalone_mode=False)
