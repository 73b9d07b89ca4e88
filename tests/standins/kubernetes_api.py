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
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
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
    ) -> tuple[int, dict[str, Any]]:
        ctype = headers.get("content-type", "")
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "content_type": ctype, "body": body})
            if self.fail_next:
                code = self.fail_next.pop(0)
                return code, _status(code, "InternalError", f"injected fault {code}")
            parts = path.strip("/").split("/")
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
