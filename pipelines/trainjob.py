"""Multi-node training from the pipeline's train step: a Kubeflow Trainer v2 `TrainJob` (or a Training Operator v1
`PyTorchJob`) that runs the project image's `lulc model train` under torchrun on every node.

The train step stages its inputs on the shared PVC (`pipeline.cache_pvc`, mounted at the same path in the step and
in every node), submits the job with the kubernetes client, streams the rank-0 pod's log, waits until the job
succeeds, fails (the failing pod's reason is raised) or the timeout passes, and deletes the job. The job name is
derived from the training inputs, so a retried step finds its job (or its checkpoints) and resumes.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from components._image import resolve_image
from lulc_core.config import RunConfig
from lulc_core.errors import LulcError, UpstreamError
from pipelines.secrets import SECRETS, TRACKER_SECRETS

if TYPE_CHECKING:
    from lulc_core.registry.tracking import TrainingRun

log = logging.getLogger(__name__)

PVC_VOLUME = "lulc-shared"
PATCH_MANAGER = "lulc.dev/train-step"
KINDS: dict[str, tuple[str, str, str, str]] = {
    # launcher: (group, version, plural, kind)
    "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"),
    "pytorchjob": ("kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"),
}
# Label selecting a job's pods: Trainer v2 runs a JobSet of the TrainJob's name; v1 labels the job name.
POD_SELECTORS = {"trainjob": "jobset.sigs.k8s.io/jobset-name", "pytorchjob": "training.kubeflow.org/job-name"}
CONTAINERS = {"trainjob": "node", "pytorchjob": "pytorch"}


class TrainJobError(LulcError):
    """The training job failed, timed out or could not be submitted."""


class JobSpec(BaseModel):
    """What the train step asks the cluster to run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z]([-a-z0-9]{0,50}[a-z0-9])?$", description="Job name (DNS label).")
    namespace: str = Field(default="lulc", description="Kubernetes namespace of the job.")
    launcher: Literal["trainjob", "pytorchjob"] = Field(description="Kubeflow Trainer v2 or Training Operator v1.")
    image: str = Field(description="Project image (pinned), the same as the pipeline's.")
    num_nodes: int = Field(ge=1, description="Nodes (pods).")
    devices: int = Field(ge=1, description="Processes (GPUs) per node.")
    gpu_resource: str | None = Field(default=None, description="e.g. nvidia.com/gpu; None: CPU nodes.")
    pvc: str = Field(description="ReadWriteMany PVC holding the staged inputs, checkpoints and outputs.")
    mount_path: str = Field(description="Where the PVC is mounted (the same path in the step and the nodes).")
    train_args: list[str] = Field(description="Arguments of `lulc model train` (paths under mount_path).")
    runtime: str = Field(default="torch-distributed", description="Trainer v2 ClusterTrainingRuntime name.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels of the training nodes.")
    cpu: str = Field(default="4", description="CPU request/limit per node.")
    memory: str = Field(default="16G", description="Memory request/limit per node.")
    timeout_s: float = Field(gt=0, description="Deadline of the job (also its activeDeadlineSeconds).")
    env: dict[str, str] = Field(
        default_factory=dict, description="Environment of the training containers (e.g. the tracker run to log into)."
    )
    secrets: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="Kubernetes Secrets of the namespace whose keys become environment variables of the training "
        "containers, as optional references: secret name -> {key: variable} (the train step's tracker credentials).",
    )


def _env(spec: JobSpec) -> list[dict[str, Any]]:
    """The containers' env: values, then optional Secret references (as the pipeline's steps get them)."""
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    for secret, keys in sorted(spec.secrets.items()):
        for key, variable in sorted(keys.items()):
            ref = {"name": secret, "key": key, "optional": True}
            env.append({"name": variable, "valueFrom": {"secretKeyRef": ref}})
    return env


def _torchrun(spec: JobSpec) -> list[str]:
    """The node command: torchrun starting `devices` copies of `lulc model train` (Lightning sees torchelastic)."""
    if spec.launcher == "trainjob":  # the torch runtime injects PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, ...
        rdzv: list[str] = []
    else:  # the Training Operator sets RANK (the pod's), MASTER_ADDR and MASTER_PORT; $(VAR) is expanded by kubelet
        rdzv = ["--node-rank=$(RANK)", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"]
    return [
        "torchrun",
        f"--nnodes={spec.num_nodes}",
        f"--nproc-per-node={spec.devices}",
        *rdzv,
        "-m",
        "lulc.cli",
        "model",
        "train",
        *spec.train_args,
    ]


def _resources(spec: JobSpec) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpu_resource:
        limits[spec.gpu_resource] = str(spec.devices)
    return {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits}


def _pod_extras(spec: JobSpec) -> dict[str, Any]:
    extras: dict[str, Any] = {"volumes": [{"name": PVC_VOLUME, "persistentVolumeClaim": {"claimName": spec.pvc}}]}
    if spec.node_selector:
        extras["nodeSelector"] = dict(spec.node_selector)
    if spec.gpu_resource:
        extras["tolerations"] = [{"key": spec.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return extras


def _metadata(spec: JobSpec) -> dict[str, Any]:
    labels = {
        "app.kubernetes.io/name": "lulc",
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": "lulc",
        "app.kubernetes.io/managed-by": "lulc-train-step",
    }
    return {"name": spec.name, "namespace": spec.namespace, "labels": labels}


def build_trainjob(spec: JobSpec) -> dict[str, Any]:
    """A `trainer.kubeflow.org/v1alpha1` TrainJob on the torch runtime; the PVC is added by a runtime patch."""
    command = _torchrun(spec)
    mount = {"name": PVC_VOLUME, "mountPath": spec.mount_path}
    pod = {"containers": [{"name": CONTAINERS["trainjob"], "volumeMounts": [mount]}], **_pod_extras(spec)}
    node_job = {"name": "node", "template": {"spec": {"template": {"spec": pod}}}}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": _metadata(spec),
        "spec": {
            "runtimeRef": {"name": spec.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "activeDeadlineSeconds": int(spec.timeout_s),
            "trainer": {
                "image": spec.image,
                "command": command[:1],
                "args": command[1:],
                "numNodes": spec.num_nodes,
                "numProcPerNode": spec.devices,  # here, not under mlPolicy.torch (the CRD rejects that)
                "resourcesPerNode": _resources(spec),
                **({"env": _env(spec)} if spec.env or spec.secrets else {}),
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [node_job]}}},
                }
            ],
        },
    }


def build_pytorchjob(spec: JobSpec) -> dict[str, Any]:
    """A `kubeflow.org/v1` PyTorchJob: one Master and num_nodes - 1 Workers running the same command."""
    command = _torchrun(spec)
    container = {
        "name": CONTAINERS["pytorchjob"],
        "image": spec.image,
        "command": command[:1],
        "args": command[1:],
        "resources": _resources(spec),
        "volumeMounts": [{"name": PVC_VOLUME, "mountPath": spec.mount_path}],
        **({"env": _env(spec)} if spec.env or spec.secrets else {}),
    }
    template = {"spec": {"containers": [container], **_pod_extras(spec)}}
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if spec.num_nodes > 1:
        replicas["Worker"] = {"replicas": spec.num_nodes - 1, "restartPolicy": "OnFailure", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(spec),
        "spec": {
            "nprocPerNode": str(spec.devices),
            "runPolicy": {"cleanPodPolicy": "None", "activeDeadlineSeconds": int(spec.timeout_s)},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build_job(spec: JobSpec) -> dict[str, Any]:
    """The job object of `spec.launcher`."""
    return build_trainjob(spec) if spec.launcher == "trainjob" else build_pytorchjob(spec)


# --------------------------------------------------------------------------------------------------- running


def _phase(launcher: str, obj: dict[str, Any]) -> str:
    """'succeeded', 'failed' or 'running' from the job's status conditions."""
    conditions = {c.get("type"): c for c in (obj.get("status") or {}).get("conditions") or []}
    done = ("Complete",) if launcher == "trainjob" else ("Succeeded",)
    if any(conditions.get(t, {}).get("status") == "True" for t in done):
        return "succeeded"
    if conditions.get("Failed", {}).get("status") == "True":
        return "failed"
    return "running"


def _condition_message(obj: dict[str, Any]) -> str:
    conditions = (obj.get("status") or {}).get("conditions") or []
    failed = [c for c in conditions if c.get("type") == "Failed"]
    return "; ".join(f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ") for c in failed)


class JobRunner:
    """Submits one job, follows its pods' logs, waits for the end and cleans up."""

    def __init__(self, spec: JobSpec, api_client: Any = None, poll_interval_s: float = 5.0) -> None:
        from kubernetes import client

        from serving.deploy import default_api_client

        self.spec = spec
        self.group, self.version, self.plural, self.kind = KINDS[spec.launcher]
        api = api_client or default_api_client()
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.poll_interval_s = poll_interval_s
        self._log_lines: dict[str, int] = {}

    def _coords(self) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "namespace": self.spec.namespace, "plural": self.plural}

    def _explain(self, exc: Any, verb: str) -> LulcError:
        status = int(getattr(exc, "status", 0) or 0)
        where = f"{self.plural}.{self.group} {self.spec.namespace}/{self.spec.name}"
        if status == 403:
            return TrainJobError(
                f"forbidden to {verb} {where} — grant the pipeline's service account create, get, delete on "
                f"{self.plural}.{self.group} and get, list on pods and pods/log"
            )
        if status == 404 and verb == "create":
            return TrainJobError(
                f"cannot create {where}: the {self.kind} CRD is not installed — install Kubeflow Trainer or set "
                "training.launcher to the one the cluster has ('trainjob' or 'pytorchjob')"
            )
        if status == 0 or status >= 500:
            return UpstreamError("kubernetes", f"{verb} {where} failed: {getattr(exc, 'reason', exc)}", status_code=503)
        return TrainJobError(f"cannot {verb} {where} (HTTP {status}): {getattr(exc, 'body', exc)}")

    def submit(self) -> bool:
        """Create the job; an existing job of the same name (a retried step) is followed instead. True if created."""
        from kubernetes.client.rest import ApiException

        try:
            self.custom.create_namespaced_custom_object(body=build_job(self.spec), **self._coords())
        except ApiException as exc:
            if exc.status == 409:
                log.info("%s %s exists (a retried step): following it", self.kind, self.spec.name)
                return False
            raise self._explain(exc, "create") from exc
        log.info("submitted %s %s/%s", self.kind, self.spec.namespace, self.spec.name)
        return True

    def pods(self) -> list[Any]:
        selector = f"{POD_SELECTORS[self.spec.launcher]}={self.spec.name}"
        return list(self.core.list_namespaced_pod(self.spec.namespace, label_selector=selector).items)

    def stream_logs(self) -> None:
        """Log the lines each pod wrote since the last call."""
        from kubernetes.client.rest import ApiException

        for pod in self.pods():
            name = pod.metadata.name
            try:
                text = self.core.read_namespaced_pod_log(
                    name, self.spec.namespace, container=CONTAINERS[self.spec.launcher]
                )
            except ApiException:
                continue  # not started yet
            lines = str(text).splitlines()
            for line in lines[self._log_lines.get(name, 0) :]:
                log.info("[%s] %s", name, line)
            self._log_lines[name] = len(lines)

    def failure_reason(self) -> str:
        """The first failing pod and why (terminated exit code, waiting reason such as ImagePullBackOff)."""
        reasons = []
        for pod in self.pods():
            for cs in (pod.status.container_statuses or []) if pod.status else []:
                state = cs.state
                if state and state.terminated and state.terminated.exit_code:
                    t = state.terminated
                    msg = f" — {t.message.strip()}" if t.message else ""
                    reasons.append(f"pod {pod.metadata.name}: {t.reason or 'Error'} (exit code {t.exit_code}){msg}")
                elif state and state.waiting and state.waiting.reason not in (None, "ContainerCreating"):
                    reasons.append(f"pod {pod.metadata.name}: {state.waiting.reason} {state.waiting.message or ''}")
            if pod.status and pod.status.phase == "Failed" and pod.status.reason and not reasons:
                reasons.append(f"pod {pod.metadata.name}: {pod.status.reason} {pod.status.message or ''}".strip())
        return "; ".join(r.strip() for r in reasons)

    def wait(self) -> None:
        """Poll until the job ends; stream logs meanwhile; raise with the failing pod's reason or on timeout."""
        from kubernetes.client.rest import ApiException

        deadline = time.monotonic() + self.spec.timeout_s
        while True:
            try:
                obj = self.custom.get_namespaced_custom_object(name=self.spec.name, **self._coords())
            except ApiException as exc:
                raise self._explain(exc, "get") from exc
            self.stream_logs()
            phase = _phase(self.spec.launcher, obj)
            if phase == "succeeded":
                log.info("%s %s succeeded", self.kind, self.spec.name)
                return
            if phase == "failed":
                why = self.failure_reason() or _condition_message(obj) or "no reason reported"
                raise TrainJobError(f"{self.kind} {self.spec.namespace}/{self.spec.name} failed: {why}")
            if time.monotonic() >= deadline:
                raise TrainJobError(
                    f"{self.kind} {self.spec.namespace}/{self.spec.name} did not finish in {self.spec.timeout_s:g} s "
                    f"({self.failure_reason() or 'pods still running'}) — raise training.launcher_timeout_minutes; "
                    "checkpoints are kept, a new run resumes"
                )
            time.sleep(self.poll_interval_s)

    def delete(self) -> None:
        """Delete the job and its pods (foreground propagation); a missing job is fine."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                name=self.spec.name, body=client.V1DeleteOptions(propagation_policy="Foreground"), **self._coords()
            )
            log.info("deleted %s %s", self.kind, self.spec.name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("could not delete %s %s: %s", self.kind, self.spec.name, exc.reason)

    def run(self) -> None:
        """Submit (or follow), wait, and always clean up."""
        self.submit()
        try:
            self.wait()
        finally:
            self.delete()


def train_on_cluster(
    cfg: RunConfig,
    imagery: Path,
    labels: Path,
    stats: Path,
    split: Path,
    shared_root: Path,
    key: str,
    *,
    image: str | None = None,
    tracking: TrainingRun | None = None,
    namespace: str = "lulc",
    api_client: Any = None,
    poll_interval_s: float = 5.0,
) -> Path:
    """Stage the inputs on the shared PVC, run the job, return the bundle directory (on the PVC).

    Args:
        cfg: the run configuration (training.launcher, devices, num_nodes; pipeline.cache_pvc and node settings).
        imagery: directory of tile imagery.
        labels: directory of tile labels.
        stats: DatasetStats JSON.
        split: TileSplit JSON.
        shared_root: where the shared PVC is mounted in this step (and in every node).
        key: the training inputs' fingerprint: names the job and its directory (checkpoints survive retries).
        image: the project image the nodes run (default: the pipeline's, `LULC_IMAGE` or `pipeline.image`).
        tracking: the tracker run (started by the step) that the job's rank 0 logs the curves into: its id goes to
            `lulc model train` as LULC_TRACKING_RUN, an MLflow store's URI into the staged configuration.
        namespace: Kubernetes namespace of the job.
        api_client: a kubernetes ApiClient (default: in-cluster, else kubeconfig).
        poll_interval_s: seconds between status reads.
    """
    tc, pc = cfg.training, cfg.pipeline
    assert tc.launcher != "none" and pc.cache_pvc, "validated by RunConfig"
    root = shared_root / "trainjobs" / key
    staged = root / "inputs"
    for name, path in {"imagery": imagery, "labels": labels, "stats": stats, "split": split}.items():
        target = staged / (name if path.is_dir() else f"{name}.json")
        if target.exists():
            continue
        if path.is_dir():
            shutil.copytree(path, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    node_cfg = cfg.model_copy(deep=True)
    node_cfg.training.checkpoint_dir = root / "checkpoints"
    tracking_uri = getattr(getattr(tracking, "registry", None), "tracking_uri", None)
    if isinstance(tracking_uri, str):  # MLflow: the nodes log into the step's store, not an embedded one of theirs
        node_cfg.registry.tracking_uri = tracking_uri
    (staged / "run.json").write_text(node_cfg.model_dump_json())
    out = root / "out"
    args = ["-c", str(staged / "run.json"), "-i", str(staged / "imagery"), "-l", str(staged / "labels")]
    args += ["-s", str(staged / "stats.json"), "--split", str(staged / "split.json"), "-o", str(out)]
    spec = JobSpec(
        name=f"lulc-train-{key[:16]}",
        namespace=namespace,
        launcher=tc.launcher,  # type: ignore[arg-type]
        image=image or resolve_image(None, pc.image),
        num_nodes=tc.num_nodes,
        devices=tc.devices,
        gpu_resource=pc.accelerator_type if tc.accelerator != "cpu" else None,
        pvc=pc.cache_pvc,
        mount_path=str(shared_root),
        train_args=[*args, "--resume", "--no-progress"],
        node_selector=pc.node_selector,
        cpu=pc.cpu_limit,
        memory=pc.memory_limit,
        timeout_s=tc.launcher_timeout_minutes * 60,
        env={"LULC_TRACKING_RUN": tracking.run_id} if tracking and tracking.run_id else {},
        secrets={name: SECRETS[name] for name in TRACKER_SECRETS},
    )
    JobRunner(spec, api_client=api_client, poll_interval_s=poll_interval_s).run()
    bundle = out / "bundle"
    if not (bundle / "lulc.json").is_file():
        raise TrainJobError(f"the {spec.launcher} succeeded but wrote no bundle at {bundle}")
    return bundle
