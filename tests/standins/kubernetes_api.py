"""A stand-in of the Kubernetes API server for custom resources, on 127.0.0.1.

It speaks the real wire protocol the `kubernetes` Python client uses for namespaced custom objects::

    GET    /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}
    POST   /apis/{group}/{version}/namespaces/{ns}/{plural}              (create; 409 if it exists)
    PATCH  /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}       (server-side apply with
           application/apply-patch+yaml and ?fieldManager=..., or application/merge-patch+json)
    DELETE /apis/{group}/{version}/namespaces/{ns}/{plural}/{name}

Errors are `Status` objects as the real server sends them. A controller is simulated: an object's status gets
`Ready=True` (and a URL) after `ready_after_polls` reads of the current generation, unless `never_ready`.
Faults: `forbidden_verbs` answers 403 for those verbs (get, create, patch), `fail_next` answers a given status
for the next N requests.

Training jobs (Kubeflow Trainer v2 `trainjobs`, Training Operator v1 `pytorchjobs`) play their lifecycle, driven by
`job_script` (a `JobScript`): created -> running (pods appear, `on_running` is called once with the job, e.g. to
run its command for real) -> succeeded or failed (a pod terminated with an exit code, reason and message), or
stay running forever (`outcome="hang"`, for timeouts). Pods and their logs are served from the core API::

    GET /api/v1/namespaces/{ns}/pods?labelSelector=key=value
    GET /api/v1/namespaces/{ns}/pods/{name}/log?container=...      (text/plain)
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from standins import JsonApiStandIn


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


JOB_PLURALS = {
    "trainjobs": ("Complete", "jobset.sigs.k8s.io/jobset-name"),
    "pytorchjobs": ("Succeeded", "training.kubeflow.org/job-name"),
}


@dataclass
class JobScript:
    """How the simulated training operator plays a job: reads until running, reads until the end, the outcome."""

    outcome: str = "succeeded"  # succeeded | failed | hang
    running_after_polls: int = 1
    finish_after_polls: int = 3
    logs: list[str] = field(default_factory=lambda: ["epoch 1/2", "epoch 2/2", "bundle written"])
    exit_code: int = 1
    reason: str = "Error"
    message: str = "RuntimeError: CUDA out of memory"
    on_running: Callable[[dict[str, Any]], None] | None = None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeApiStandIn(JsonApiStandIn):
    """A threaded HTTP server holding custom objects in memory."""

    def __init__(self, ready_after_polls: int = 2, never_ready: bool = False) -> None:
        self.ready_after_polls = ready_after_polls
        self.never_ready = never_ready
        self.forbidden_verbs: set[str] = set()
        self.fail_next: list[int] = []
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.polls: dict[tuple[str, str, str], int] = {}
        self.requests: list[dict[str, Any]] = []
        self.job_script = JobScript()
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.deleted: list[tuple[str, str, str]] = []
        self.runs: dict[tuple[str, str, str], threading.Thread] = {}
        self.run_errors: dict[tuple[str, str, str], str] = {}
        self._lock = threading.Lock()
        super().__init__()

    # --- the simulated API server -------------------------------------------------------------------------

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig whose current context points at this stand-in (bearer token `t`)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}],
            "current-context": "standin",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any] | str]:
        ctype = headers.get("content-type", "")
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "content_type": ctype, "body": body})
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, _status(code, "InternalError", f"injected fault {code}")
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "v1"] and method == "GET":
                return self._core(parts, query)
            if len(parts) not in (6, 7) or parts[0] != "apis" or parts[3] != "namespaces":
                return 404, _status(404, "NotFound", f"the server could not find the requested resource {path}")
            _, group, _version, _, ns, plural, *rest = parts
            verb = {"GET": "get", "POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(method, method)
            if verb in self.forbidden_verbs:
                user = "system:serviceaccount:lulc:lulc-pipeline"
                msg = (
                    f'{plural}.{group} is forbidden: User "{user}" cannot {verb} resource "{plural}" '
                    f'in API group "{group}" in the namespace "{ns}"'
                )
                return 403, _status(403, "Forbidden", msg)
            if method == "POST" and not rest:
                return self._create(ns, plural, body)
            if not rest:
                return 405, _status(405, "MethodNotAllowed", "only create is supported on collections")
            key = (ns, plural, rest[0])
            if method == "GET":
                return self._get(key)
            if method == "PATCH":
                return self._patch(key, query, ctype, body)
            if method == "DELETE":
                if self.objects.pop(key, None) is None:
                    return 404, _status(404, "NotFound", f'{plural} "{key[2]}" not found')
                self.deleted.append(key)
                self.pods = {k: p for k, p in self.pods.items() if p["metadata"].get("ownerJob") != key}
                return 200, _status(200, "", "deleted") | {"status": "Success"}
            return 405, _status(405, "MethodNotAllowed", f"{method} is not allowed")

    def _create(self, ns: str, plural: str, body: bytes) -> tuple[int, dict[str, Any]]:
        obj = json.loads(body)
        name = obj.get("metadata", {}).get("name")
        if not name:
            return 422, _status(422, "Invalid", "metadata.name: Required value")
        key = (ns, plural, name)
        if key in self.objects:
            return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        self._store(key, obj, created=True)
        return 201, copy.deepcopy(self.objects[key])

    def _get(self, key: tuple[str, str, str]) -> tuple[int, dict[str, Any]]:
        obj = self.objects.get(key)
        if obj is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[2]}" not found')
        self.polls[key] = self.polls.get(key, 0) + 1
        if key[1] in JOB_PLURALS:
            return 200, self._job_status(key, obj)
        generation = obj["metadata"]["generation"]
        ready = not self.never_ready and self.polls[key] >= self.ready_after_polls
        condition = {
            "type": "Ready",
            "status": "True" if ready else "False",
            "lastTransitionTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if not ready:
            condition |= {"reason": "RevisionMissing", "message": "Revision is not ready: waiting for the pod"}
        obj["status"] = {
            "observedGeneration": generation,
            "conditions": [{**condition, "type": "PredictorReady"}, condition],
        }
        if ready:
            obj["status"]["url"] = f"http://{key[2]}.{key[0]}.example.com"
        return 200, copy.deepcopy(obj)

    def _patch(
        self, key: tuple[str, str, str], query: dict[str, list[str]], ctype: str, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        existing = self.objects.get(key)
        if ctype.startswith("application/apply-patch+yaml"):
            if not query.get("fieldManager"):
                return 400, _status(400, "BadRequest", "PATCH with apply requires the fieldManager parameter")
            applied = yaml.safe_load(body)
            if existing is None:
                self._store(key, applied, created=True)
                return 201, copy.deepcopy(self.objects[key])
            merged = merge_patch(existing, applied)
        elif ctype.startswith("application/merge-patch+json"):
            if existing is None:
                return 404, _status(404, "NotFound", f'{key[1]} "{key[2]}" not found')
            merged = merge_patch(existing, json.loads(body))
        else:
            return 415, _status(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format {ctype}"
            )
        self._store(key, merged, created=False)
        return 200, copy.deepcopy(self.objects[key])

    def _store(self, key: tuple[str, str, str], obj: dict[str, Any], created: bool) -> None:
        meta = obj.setdefault("metadata", {})
        old = self.objects.get(key)
        if created or old is None:
            meta.update(
                uid=str(uuid.uuid4()),
                generation=1,
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                namespace=key[0],
            )
        else:
            changed = old.get("spec") != obj.get("spec")
            meta["generation"] = old["metadata"]["generation"] + (1 if changed else 0)
            if changed:
                obj.pop("status", None)
        meta["resourceVersion"] = str(len(self.requests))
        self.objects[key] = obj
        self.polls[key] = 0

    # --- the simulated training operator ------------------------------------------------------------------

    def _job_status(self, key: tuple[str, str, str], obj: dict[str, Any]) -> dict[str, Any]:
        script, polls = self.job_script, self.polls[key]
        done_type, _ = JOB_PLURALS[key[1]]
        conditions = [{"type": "Created", "status": "True", "reason": "Created", "lastTransitionTime": _now()}]
        if polls >= script.running_after_polls:
            if not any(p["metadata"].get("ownerJob") == key for p in self.pods.values()):
                self._start_pods(key, obj)
            run = self.runs.get(key)
            finished = script.outcome != "hang" and polls >= script.finish_after_polls
            finished = finished and (run is None or not run.is_alive())
            outcome, message = script.outcome, script.message
            if key in self.run_errors:
                outcome, message = "failed", self.run_errors[key]
            state: dict[str, Any] = {"running": {"startedAt": _now()}}
            if finished and outcome == "succeeded":
                state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
                conditions.append(
                    {"type": done_type, "status": "True", "reason": "Succeeded", "lastTransitionTime": _now()}
                )
            elif finished:
                state = {"terminated": {"exitCode": script.exit_code, "reason": script.reason, "message": message}}
                conditions.append(
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "Failed",
                        "message": "a pod failed",
                        "lastTransitionTime": _now(),
                    }
                )
            elif key[1] == "pytorchjobs":
                conditions.append(
                    {"type": "Running", "status": "True", "reason": "Running", "lastTransitionTime": _now()}
                )
            phase = "Running" if "running" in state else ("Failed" if state["terminated"]["exitCode"] else "Succeeded")
            for pod in self.pods.values():
                if pod["metadata"].get("ownerJob") == key:
                    pod["status"]["phase"] = phase
                    pod["status"]["containerStatuses"][0]["state"] = state
        obj["status"] = {"conditions": conditions}
        return copy.deepcopy(obj)

    def _start_pods(self, key: tuple[str, str, str], obj: dict[str, Any]) -> None:
        ns, plural, name = key
        _, selector = JOB_PLURALS[plural]
        if plural == "trainjobs":
            nodes, container = int(obj["spec"]["trainer"].get("numNodes", 1)), "node"
            names = [f"{name}-node-0-{i}" for i in range(nodes)]
        else:
            specs = obj["spec"]["pytorchReplicaSpecs"]
            container = "pytorch"
            names = [f"{name}-master-0"] + [
                f"{name}-worker-{i}" for i in range(specs.get("Worker", {}).get("replicas", 0))
            ]
        for pod_name in names:
            status = {
                "name": container,
                "ready": True,
                "restartCount": 0,
                "image": "lulc",
                "imageID": "lulc",
                "state": {},
            }
            self.pods[(ns, pod_name)] = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "labels": {selector: name}, "ownerJob": key},
                "spec": {"containers": [{"name": container, "image": "lulc"}]},
                "status": {"phase": "Running", "containerStatuses": [status]},
            }
        callback = self.job_script.on_running
        if callback is not None:  # the pods' work, in the background: the job ends when it has returned
            job = copy.deepcopy(obj)

            def work() -> None:
                try:
                    callback(job)
                except Exception as exc:  # the pod failed
                    self.run_errors[key] = f"{type(exc).__name__}: {exc}"

            self.runs[key] = threading.Thread(target=work, daemon=True, name=f"job-{name}")
            self.runs[key].start()

    def _core(self, parts: list[str], query: dict[str, list[str]]) -> tuple[int, dict[str, Any] | str]:
        if len(parts) == 5 and parts[2] == "namespaces" and parts[4] == "pods":
            ns = parts[3]
            wanted = dict(kv.split("=", 1) for kv in ",".join(query.get("labelSelector", [])).split(",") if "=" in kv)
            items = []
            for (pod_ns, _), pod in sorted(self.pods.items()):
                labels = pod["metadata"]["labels"]
                if pod_ns == ns and all(labels.get(k) == v for k, v in wanted.items()):
                    shown = copy.deepcopy(pod)
                    shown["metadata"].pop("ownerJob")
                    items.append(shown)
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}
        if len(parts) == 7 and parts[4] == "pods" and parts[6] == "log":
            pod = self.pods.get((parts[3], parts[5]))
            if pod is None:
                return 404, _status(404, "NotFound", f'pods "{parts[5]}" not found')
            state = pod["status"]["containerStatuses"][0]["state"]
            done = "terminated" in state
            lines = self.job_script.logs if done else self.job_script.logs[: max(1, len(self.job_script.logs) // 2)]
            if done and state["terminated"]["exitCode"]:
                lines = [*lines, state["terminated"]["message"]]
            return 200, "".join(f"{line}\n" for line in lines)
        return 404, _status(404, "NotFound", f"the server could not find the requested resource /{'/'.join(parts)}")
