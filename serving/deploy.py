"""The pipeline's deploy step: apply a KServe InferenceService, wait until it is Ready, report its URL.

`build_inference_service(spec)` makes the same object as `manifests/base` (custom predictor container, storage
URI, probes, non-root security context, autoscaling); `deploy(spec)` applies it with the kubernetes client —
server-side apply by default, or create-or-patch — and polls its status until the `Ready` condition of the
current generation is True or the timeout passes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lulc_core.config import format_validation_error
from lulc_core.errors import LulcError, UpstreamError

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
FIELD_MANAGER = "lulc-deploy"
CONFIG_MOUNT = "/etc/lulc"
ISVC_NAME = "lulc"  # the InferenceService of manifests/base and of the pipeline's deploy step
# Deployment mode names: KServe 0.16 renamed Serverless -> Knative and RawDeployment -> Standard (old names
# deprecated; KServe >= 0.16 normalises them). Older controllers know only the old names.
MODE_RENAMED_IN = (0, 16)
NEW_MODE_NAMES = {"Serverless": "Knative", "RawDeployment": "Standard"}
OLD_MODE_NAMES = {new: old for old, new in NEW_MODE_NAMES.items()}
DeploymentMode = Literal["Knative", "Standard", "Serverless", "RawDeployment"]


def mode_annotation(mode: str, kserve_version: str) -> str:
    """The `serving.kserve.io/deploymentMode` value that a KServe of `kserve_version` understands for `mode`."""
    version = tuple(int(p) for p in kserve_version.split(".")[:2])
    if version >= MODE_RENAMED_IN:
        return NEW_MODE_NAMES.get(mode, mode)
    return OLD_MODE_NAMES.get(mode, mode)


# URI schemes KServe's storage initializer fetches, plus neptune:// through the ClusterStorageContainer of
# manifests/cluster/neptune-storage (which runs `lulc registry pull`).
STORAGE_SCHEMES = ("s3://", "gs://", "https://", "http://", "hdfs://", "webhdfs://", "pvc://", "oci://", "hf://")
NEPTUNE_SCHEME = "neptune://"


class DeployError(LulcError):
    """The InferenceService could not be applied or did not become Ready."""


class DeploySpec(BaseModel):
    """What to deploy and how to scale it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default=ISVC_NAME, pattern=r"^[a-z]([-a-z0-9]{0,43}[a-z0-9])?$", description="ISVC name.")
    namespace: str = Field(default="lulc", description="Kubernetes namespace.")
    storage_uri: str = Field(
        min_length=1, description="Model bundle URI (s3://, gs://, pvc://, https://, or neptune:// with its container)."
    )
    image: str = Field(default="ghcr.io/lulc/lulc:0.1.0", description="Project image, pinned tag or digest.")
    model_name: str = Field(default="lulc", description="Model name on the V1/V2 endpoints.")
    service_account: str = Field(default="lulc-predictor", description="Predictor service account.")
    deployment_mode: DeploymentMode = Field(
        default="Knative", description="Knative (serverless) or Standard (Deployment); old names accepted."
    )
    kserve_version: str = Field(
        default="0.16", pattern=r"^\d+\.\d+(\.\d+)?$", description="The cluster's KServe: picks the mode's name."
    )
    min_replicas: int = Field(default=1, ge=0, description="Minimum replicas (0 allows scale to zero).")
    max_replicas: int = Field(default=4, ge=1, description="Maximum replicas.")
    scale_metric: Literal["concurrency", "rps", "cpu", "memory"] = Field(default="concurrency")
    scale_target: int = Field(default=2, ge=1, description="Target value of the scale metric per replica.")
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "3Gi"
    memory_limit: str = "6Gi"
    gpus: int = Field(default=0, ge=0, description="nvidia.com/gpu limit (0 = CPU).")
    node_selector: dict[str, str] = Field(default_factory=dict)
    config_map: str | None = Field(default="lulc-serving-config", description="ConfigMap with run.yaml.")
    credentials_secret: str | None = Field(
        default="lulc-sentinelhub", description="Secret with SH_CLIENT_ID/SH_CLIENT_SECRET (referenced only)."
    )

    @field_validator("storage_uri")
    @classmethod
    def _fetchable(cls, v: str) -> str:
        if not v.startswith((*STORAGE_SCHEMES, NEPTUNE_SCHEME)):
            raise ValueError(
                f"KServe cannot fetch {v!r} — store MLflow artifacts in an object store (registry.artifact_root: "
                "s3://bucket/prefix) or use the Neptune backend with the neptune:// storage container "
                "(manifests/cluster/neptune-storage)"
            )
        return v

    @model_validator(mode="after")
    def _replicas(self) -> DeploySpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})")
        return self


class DeployResult(BaseModel):
    """Outcome of a deployment."""

    name: str
    namespace: str
    url: str
    action: Literal["created", "updated"]
    generation: int
    seconds: float


def labels_for(spec: DeploySpec) -> dict[str, str]:
    """The recommended app.kubernetes.io labels."""
    return {
        "app.kubernetes.io/name": "lulc",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "predictor",
        "app.kubernetes.io/part-of": "lulc",
        "app.kubernetes.io/managed-by": FIELD_MANAGER,
        "app.kubernetes.io/version": spec.image.rsplit(":", 1)[-1].replace("@", "-")[:63],
    }


def build_inference_service(spec: DeploySpec) -> dict[str, Any]:
    """The InferenceService object of `spec` (serving.kserve.io/v1beta1)."""
    resources: dict[str, Any] = {
        "requests": {"cpu": spec.cpu_request, "memory": spec.memory_request},
        "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit},
    }
    if spec.gpus:
        resources["limits"]["nvidia.com/gpu"] = str(spec.gpus)
    env: list[dict[str, Any]] = [
        {"name": "STORAGE_URI", "value": spec.storage_uri},
    ]
    if spec.credentials_secret:
        for key in ("SH_CLIENT_ID", "SH_CLIENT_SECRET"):
            ref = {"name": spec.credentials_secret, "key": key, "optional": True}
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    args = ["--model-dir", "/mnt/models", "--model-name", spec.model_name, "--host", "0.0.0.0"]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}]
    if spec.config_map:
        args += ["--config", f"{CONFIG_MOUNT}/run.yaml"]
        mounts.append({"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True})
        volumes.append({"name": "config", "configMap": {"name": spec.config_map}})
    probe = {"httpGet": {"path": f"/v1/models/{spec.model_name}", "port": 8080}, "periodSeconds": 10}
    container = {
        "name": "kserve-container",
        "image": spec.image,
        "command": ["python", "-m", "serving"],
        "args": args,
        "ports": [{"containerPort": 8080, "name": "http1", "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "readinessProbe": probe | {"failureThreshold": 3},
        # loading the bundle and the warm-up pass: up to 5 min before liveness starts (no fixed initial delay)
        "startupProbe": {
            "httpGet": {"path": "/v2/health/live", "port": 8080},
            "periodSeconds": 5,
            "failureThreshold": 60,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": 8080},
            "periodSeconds": 20,
            "failureThreshold": 3,
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    predictor: dict[str, Any] = {
        "labels": {"app.kubernetes.io/name": "lulc", "app.kubernetes.io/component": "predictor"},
        "serviceAccountName": spec.service_account,
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "scaleMetric": spec.scale_metric,
        "scaleTarget": spec.scale_target,
        "timeout": 600,
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        predictor["nodeSelector"] = dict(spec.node_selector)
    if spec.gpus:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "labels": labels_for(spec),
            "annotations": {
                "serving.kserve.io/deploymentMode": mode_annotation(spec.deployment_mode, spec.kserve_version),
                "serving.kserve.io/enable-prometheus-scraping": "true",
            },
        },
        "spec": {"predictor": predictor},
    }


def default_api_client() -> Any:
    """An ApiClient from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise DeployError(f"no Kubernetes credentials: {exc} — run in a pod or set KUBECONFIG") from exc
    return client.ApiClient()


def _explain(exc: Any, verb: str, spec: DeploySpec) -> LulcError:
    """A clear error for an ApiException from the API server."""
    status = int(getattr(exc, "status", 0) or 0)
    message = getattr(exc, "body", None) or str(exc)
    try:
        import json

        message = json.loads(message).get("message", message)
    except (ValueError, TypeError, AttributeError):
        pass
    where = f"{PLURAL}.{GROUP} {spec.namespace}/{spec.name}"
    if status == 403:
        return DeployError(
            f"forbidden to {verb} {where}: {message} — bind the deploy step's service account to the Role "
            f"'lulc-deployer' of manifests/base/rbac.yaml (get, create, patch on inferenceservices)"
        )
    if status == 401:
        return DeployError(f"unauthorized to {verb} {where}: check the service account token or kubeconfig")
    if status == 404 and verb != "get":
        return DeployError(f"cannot {verb} {where}: {message} — is KServe installed (CRD {PLURAL}.{GROUP})?")
    if status == 0 or status >= 500:
        return UpstreamError("kubernetes", f"{verb} {where} failed: {message}", status_code=503)
    return DeployError(f"cannot {verb} {where} (HTTP {status}): {message}")


def deploy(
    spec: DeploySpec | dict[str, Any],
    *,
    api_client: Any = None,
    timeout_s: float = 600.0,
    poll_interval_s: float = 2.0,
    server_side_apply: bool = True,
) -> DeployResult:
    """Apply the InferenceService of `spec` and wait until it is Ready; return its URL.

    Args:
        spec: a DeploySpec or its dict form.
        api_client: a `kubernetes.client.ApiClient` (default: in-cluster config, else kubeconfig).
        timeout_s: how long to wait for the Ready condition.
        poll_interval_s: seconds between status reads.
        server_side_apply: PATCH with application/apply-patch+yaml; else create, or merge-patch if it exists.

    Raises:
        InputError: the spec is invalid. DeployError: forbidden, not installed, or not Ready in time.
    """
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    if isinstance(spec, dict):
        try:
            spec = DeploySpec.model_validate(spec)
        except ValidationError as exc:
            raise format_validation_error(exc, "deploy") from exc
    api = client.CustomObjectsApi(api_client or default_api_client())
    body = build_inference_service(spec)
    started = time.monotonic()
    coords = {"group": GROUP, "version": VERSION, "namespace": spec.namespace, "plural": PLURAL}
    try:
        if server_side_apply:
            path = f"/apis/{GROUP}/{VERSION}/namespaces/{spec.namespace}/{PLURAL}/{spec.name}"
            obj, code, _ = api.api_client.call_api(
                path,
                "PATCH",
                query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                header_params={"Content-Type": "application/apply-patch+yaml", "Accept": "application/json"},
                body=body,
                response_type="object",
                auth_settings=["BearerToken"],
                _return_http_data_only=False,
            )
            action: Literal["created", "updated"] = "created" if code == 201 else "updated"
        else:
            obj, action = _create_or_patch(api, coords, spec, body)
    except ApiException as exc:
        raise _explain(exc, "apply" if server_side_apply else "create or patch", spec) from exc
    generation = int(obj.get("metadata", {}).get("generation", 1))
    log.info("%s InferenceService %s/%s (generation %d)", action, spec.namespace, spec.name, generation)
    url = wait_until_ready(api, spec, generation, timeout_s=timeout_s, poll_interval_s=poll_interval_s)
    return DeployResult(
        name=spec.name,
        namespace=spec.namespace,
        url=url,
        action=action,
        generation=generation,
        seconds=round(time.monotonic() - started, 3),
    )


def _create_or_patch(
    api: Any, coords: dict[str, str], spec: DeploySpec, body: dict[str, Any]
) -> tuple[dict[str, Any], Literal["created", "updated"]]:
    from kubernetes.client.rest import ApiException

    try:
        return api.create_namespaced_custom_object(body=body, **coords), "created"
    except ApiException as exc:
        if exc.status != 409:
            raise
    log.info("InferenceService %s/%s exists: patching", spec.namespace, spec.name)
    return api.patch_namespaced_custom_object(name=spec.name, body=body, **coords), "updated"


def wait_until_ready(api: Any, spec: DeploySpec, generation: int, *, timeout_s: float, poll_interval_s: float) -> str:
    """Poll until the Ready condition of `generation` is True; return status.url."""
    from kubernetes.client.rest import ApiException

    deadline = time.monotonic() + timeout_s
    last = "no status yet"
    while True:
        try:
            obj = api.get_namespaced_custom_object(
                group=GROUP, version=VERSION, namespace=spec.namespace, plural=PLURAL, name=spec.name
            )
        except ApiException as exc:
            raise _explain(exc, "get", spec) from exc
        status = obj.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = conditions.get("Ready", {})
        observed = int(status.get("observedGeneration") or 0)
        if ready.get("status") == "True" and observed >= generation and status.get("url"):
            return str(status["url"])
        not_ready = [f"{t}: {c.get('reason', '')} {c.get('message', '')}".strip() for t, c in conditions.items()]
        last = "; ".join(not_ready) or last
        if time.monotonic() >= deadline:
            raise DeployError(
                f"InferenceService {spec.namespace}/{spec.name} not Ready after {timeout_s:g} s ({last}) — "
                f"check `kubectl -n {spec.namespace} describe inferenceservice {spec.name}` and the predictor logs"
            )
        time.sleep(poll_interval_s)
