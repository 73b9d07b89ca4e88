"""A stand-in of the Kubeflow Pipelines v2 REST API (v2beta1), on 127.0.0.1.

It answers the requests `kfp.Client` (kfp 2.17, through kfp_server_api) sends, with the real paths and JSON
field names (snake_case, as the KFP API server's grpc-gateway emits them)::

    GET  /apis/v2beta1/healthz
    GET  /apis/v2beta1/experiments?filter=<json predicates>&namespace=...   POST /apis/v2beta1/experiments
    GET  /apis/v2beta1/experiments/{id}
    POST /apis/v2beta1/pipelines/upload?name=...&description=...   (multipart/form-data, file field `uploadfile`)
    GET  /apis/v2beta1/pipelines/{id}/versions
    POST /apis/v2beta1/runs        GET /apis/v2beta1/runs/{id}
    POST /apis/v2beta1/recurringruns

Like the real server it parses the submitted pipeline and platform specs into the protobuf messages
(PipelineSpec / PlatformSpec) and rejects runtime parameters the pipeline does not declare (HTTP 400).
Errors are grpc-gateway bodies `{"code": <grpc code>, "message": ..., "details": []}`.
A run reports RUNNING for `running_polls` reads, then `final_state`. With `token` set every request needs
`Authorization: Bearer <token>`, else 401.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from standins import JsonApiStandIn

PREFIX = "/apis/v2beta1/"
GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13, 503: 14}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"code": GRPC_CODES.get(status, 2), "message": message, "details": []}


def _predicate_name(query: dict[str, list[str]]) -> str | None:
    """The display_name EQUALS value of a KFP list filter, if any."""
    raw = (query.get("filter") or [""])[0]
    if not raw:
        return None
    for pred in json.loads(raw).get("predicates", []):
        if pred.get("key") == "display_name" and pred.get("operation") in ("EQUALS", 1):
            return str(pred.get("string_value") or pred.get("stringValue"))
    return None


def parse_pipeline(spec: dict[str, Any]) -> tuple[pipeline_spec_pb2.PipelineSpec, pipeline_spec_pb2.PlatformSpec]:
    """The submitted pipeline_spec struct (plain, or {pipeline_spec, platform_spec}) as protobuf messages."""
    if "pipeline_spec" in spec:
        pipeline, platform = spec["pipeline_spec"], spec.get("platform_spec") or {}
    else:
        pipeline, platform = spec, {}
    return (
        json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec()),
        json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec()),
    )


class KfpApiStandIn(JsonApiStandIn):
    """A threaded HTTP server keeping experiments, pipelines, runs and recurring runs in memory."""

    def __init__(self, token: str | None = None, running_polls: int = 1, final_state: str = "SUCCEEDED") -> None:
        self.token = token
        self.running_polls = running_polls
        self.final_state = final_state
        self.experiments: dict[str, dict[str, Any]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, list[dict[str, Any]]] = {}
        self.uploads: dict[str, bytes] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.polls: dict[str, int] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        super().__init__()

    def paths(self) -> list[str]:
        """'METHOD /path' of every request so far."""
        return [f"{r['method']} {r['path']}" for r in self.requests]

    # --- the simulated API server -------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "headers": headers, "body": body})
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return _error(401, "Unauthenticated: Request header error: there is no user identity header.")
            if not path.startswith(PREFIX):
                return _error(404, f"Not Found: {path}")
            parts = path[len(PREFIX) :].strip("/").split("/")
            route = (method, parts[0], len(parts))
            if route == ("GET", "healthz", 1):
                return 200, {"commit_sha": "standin", "tag_name": "2.5.0", "multi_user": False}
            if route == ("GET", "experiments", 1):
                return self._list_experiments(query)
            if route == ("POST", "experiments", 1):
                return self._create_experiment(json.loads(body or b"{}"))
            if route == ("GET", "experiments", 2):
                exp = self.experiments.get(parts[1])
                return (200, exp) if exp else _error(404, f"Experiment {parts[1]} not found")
            if method == "POST" and parts == ["pipelines", "upload"]:
                return self._upload(query, headers.get("content-type", ""), body)
            if route == ("GET", "pipelines", 3) and parts[2] == "versions":
                if parts[1] not in self.pipelines:
                    return _error(404, f"Pipeline {parts[1]} not found")
                versions = self.versions.get(parts[1], [])
                return 200, {"pipeline_versions": versions, "total_size": len(versions)}
            if route == ("POST", "runs", 1):
                return self._create_run(json.loads(body or b"{}"))
            if route == ("GET", "runs", 2):
                return self._get_run(parts[1])
            if route == ("POST", "recurringruns", 1):
                return self._create_recurring_run(json.loads(body or b"{}"))
            return _error(404, f"Not Found: {method} {path}")

    def _list_experiments(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        name = _predicate_name(query)
        found = [e for e in self.experiments.values() if name is None or e["display_name"] == name]
        return 200, ({"experiments": found, "total_size": len(found)} if found else {})

    def _create_experiment(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        name = body.get("display_name")
        if not name:
            return _error(400, "Invalid input error: Experiment name is empty. Please specify a valid experiment name.")
        if any(e["display_name"] == name for e in self.experiments.values()):
            return _error(409, f"Already exist error: Experiment with name {name} already exists")
        exp = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": name,
            "description": body.get("description") or "",
            "created_at": _now(),
            "namespace": body.get("namespace") or "",
            "storage_state": "AVAILABLE",
        }
        self.experiments[exp["experiment_id"]] = exp
        return 200, exp

    def _upload(self, query: dict[str, list[str]], ctype: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if not ctype.startswith("multipart/form-data"):
            return _error(400, f"Invalid input error: Failed to read pipeline from the request (content type {ctype})")
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + body)
        files = {
            p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in message.iter_parts()
        }
        data = files.get("uploadfile")
        if not data:
            return _error(400, "Invalid input error: Failed to read pipeline from the request: no uploadfile")
        try:
            parse_pipeline(next(iter(yaml.safe_load_all(data))))
        except (json_format.ParseError, yaml.YAMLError, StopIteration) as exc:
            return _error(400, f"Invalid input error: invalid pipeline spec: {exc}")
        name = (query.get("name") or query.get("display_name") or ["pipeline"])[0]
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return _error(409, f"Already exist error: Pipeline with name {name} already exists")
        pid, vid = str(uuid.uuid4()), str(uuid.uuid4())
        pipe = {"pipeline_id": pid, "display_name": name, "created_at": _now(), "namespace": ""}
        pipe["description"] = (query.get("description") or [""])[0]
        self.pipelines[pid] = pipe
        self.uploads[vid] = data
        self.versions[pid] = [
            {"pipeline_id": pid, "pipeline_version_id": vid, "display_name": name, "created_at": _now()}
        ]
        return 200, pipe

    def _pipeline_of(self, body: dict[str, Any]) -> tuple[pipeline_spec_pb2.PipelineSpec | None, str | None]:
        """The run's pipeline: its inline spec or the referenced uploaded version."""
        if body.get("pipeline_spec"):
            return parse_pipeline(body["pipeline_spec"])[0], None
        ref = body.get("pipeline_version_reference") or {}
        vid = ref.get("pipeline_version_id")
        if vid not in self.uploads:
            return None, f"Pipeline version {vid} not found"
        return parse_pipeline(next(iter(yaml.safe_load_all(self.uploads[vid]))))[0], None

    def _check_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        if not body.get("display_name"):
            return _error(400, "Invalid input error: The run name is empty. Please specify a valid name.")
        if body.get("experiment_id") not in self.experiments:
            return _error(404, f"Experiment {body.get('experiment_id')} not found")
        try:
            spec, missing = self._pipeline_of(body)
        except json_format.ParseError as exc:
            return _error(400, f"Invalid input error: failed to parse the pipeline spec: {exc}")
        if spec is None:
            return _error(404, missing or "no pipeline")
        declared = set(spec.root.input_definitions.parameters)
        unknown = sorted(set((body.get("runtime_config") or {}).get("parameters") or {}) - declared)
        if unknown:
            return _error(400, f"Invalid input error: unrecognized input parameters: {unknown}")
        return None

    def _create_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problem = self._check_run(body)
        if problem:
            return problem
        run = copy.deepcopy(body) | {"run_id": str(uuid.uuid4()), "created_at": _now(), "state": "PENDING"}
        run["storage_state"] = "AVAILABLE"
        self.runs[run["run_id"]] = run
        self.polls[run["run_id"]] = 0
        return 200, run

    def _get_run(self, run_id: str) -> tuple[int, dict[str, Any]]:
        run = self.runs.get(run_id)
        if run is None:
            return _error(404, f"Run {run_id} not found")
        self.polls[run_id] += 1
        run["state"] = "RUNNING" if self.polls[run_id] <= self.running_polls else self.final_state
        if run["state"] != "RUNNING":
            run["finished_at"] = run.get("finished_at") or _now()
        return 200, copy.deepcopy(run)

    def _create_recurring_run(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        problem = self._check_run(body)
        if problem:
            return problem
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron", "")
        if len(cron.split()) != 6:
            return _error(400, f"Invalid input error: invalid cron {cron!r}: expected 6 fields (seconds first)")
        job = copy.deepcopy(body) | {"recurring_run_id": str(uuid.uuid4()), "created_at": _now(), "status": "ENABLED"}
        self.recurring_runs[job["recurring_run_id"]] = job
        return 200, job
