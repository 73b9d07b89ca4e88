"""A stand-in for the parts of the Neptune server API that neptune-client 1.x calls for models and versions.

The real `neptune` client talks to the host named in its API token (base64 JSON with `api_address`/`api_url`)
through bravado, with swagger specs it downloads from the server (`/api/backend/swagger.json`,
`/api/leaderboard/swagger.json`). This server publishes a reduced swagger 2.0 spec of its own holding only the
operations the client uses for models, model versions, attributes, file sets and leaderboard search. Paths,
operation ids, parameter names and response field names follow the public Neptune spec (neptune-ai/neptune-api,
codegen/swagger); the definitions keep only the fields the client reads. Behaviour (ids, `sys/*` attributes,
stages, NQL filtering, tar/multipart uploads, zip downloads) is written from the client's source.

Series values are kept (`Container.series`) but cannot be read back over the API. Not covered: artifacts,
images, notebooks, websockets, OAuth refresh (tokens live one hour).
Use::

    with NeptuneStandIn() as server:
        os.environ["NEPTUNE_API_TOKEN"] = server.api_token
        os.environ["NEPTUNE_PROJECT"] = server.project
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import posixpath
import re
import tarfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

STAGES = ("none", "staging", "production", "archived")


# --------------------------------------------------------------------------------------------- swagger specs
def _q(name: str, typ: str = "string", required: bool = False, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "type": typ, "required": required, **extra}


def _h(name: str, typ: str = "string") -> dict[str, Any]:
    return {"name": name, "in": "header", "type": typ, "required": False}


def _body(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "body", "required": False, "schema": schema}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/definitions/{name}"}


def _op(op_id: str, params: list[dict[str, Any]], schema: dict[str, Any] | None) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "OK"}}
    if schema is not None:
        responses["200"]["schema"] = schema
    for code in ("400", "401", "403", "404", "409", "422", "429"):
        responses[code] = {"description": code}
    return {"operationId": op_id, "produces": ["application/json"], "parameters": params, "responses": responses}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


S, B, I, N = {"type": "string"}, {"type": "boolean"}, {"type": "integer"}, {"type": "number"}  # noqa: E741
DT = {"type": "string", "format": "date-time"}
HOLDER = [_q("experimentId"), _q("holderIdentifier"), _q("holderType")]
ATTR = [_q("attribute", required=True), *HOLDER]


def backend_spec(host: str) -> dict[str, Any]:
    """Swagger 2.0 spec of the backend API operations the client calls."""
    paths = {
        "/api/backend/v1/clients/config": {
            "get": _op("getClientConfig", [_h("X-Neptune-Api-Token"), _q("alpha")], _ref("ClientConfig"))
        },
        "/api/backend/v1/authorization/oauth-token": {
            "get": _op("exchangeApiToken", [_h("X-Neptune-Api-Token")], _ref("NeptuneOauthToken"))
        },
        "/api/backend/v1/projects/get": {
            "get": _op("getProject", [_q("projectIdentifier", required=True)], _ref("ProjectDTO"))
        },
        "/api/backend/v1/projects": {
            "get": _op(
                "listProjects",
                [
                    _q("organizationIdentifier"),
                    _q("userRelation"),
                    _q("searchTerm"),
                    _q("sortBy", "array", items=S, collectionFormat="multi"),
                    _q("sortDirection", "array", items=S, collectionFormat="multi"),
                    _q("offset", "integer"),
                    _q("limit", "integer"),
                ],
                _ref("ProjectListDTO"),
            )
        },
        "/api/backend/v1/myOrganizations": {
            "get": _op("listOrganizations", [], {"type": "array", "items": _ref("OrganizationDTO")})
        },
    }
    definitions = {
        "ClientConfig": _obj(
            apiUrl=S,
            applicationUrl=S,
            pyLibVersions=_ref("ClientVersionsConfigDTO"),
            multiPartUpload=_ref("MultipartUploadConfigDTO"),
            artifacts=_ref("ArtifactsConfigDTO"),
        ),
        "ClientVersionsConfigDTO": _obj(minRecommendedVersion=S, minCompatibleVersion=S, maxCompatibleVersion=S),
        "MultipartUploadConfigDTO": _obj(
            enabled=B, minChunkSize=I, maxChunkSize=I, maxChunkCount=I, maxSinglePartSize=I
        ),
        "ArtifactsConfigDTO": _obj(enabled=B, apiVersion=I),
        "NeptuneOauthToken": _obj(accessToken=S, refreshToken=S, username=S),
        "ProjectDTO": _obj(id=S, name=S, organizationName=S, organizationId=S, projectKey=S, version=I),
        "ProjectListDTO": _obj(entries={"type": "array", "items": _ref("ProjectDTO")}, matchingItemCount=I),
        "OrganizationDTO": _obj(id=S, name=S),
    }
    return _spec(host, "Neptune Backend API (stand-in)", paths, definitions)


def leaderboard_spec(host: str) -> dict[str, Any]:
    """Swagger 2.0 spec of the leaderboard API operations the client calls for models and versions."""
    errors = _ref("OperationErrorsListDTO")
    fileset = [_q("attribute"), _q("experimentIdentifier"), _q("subPath")]
    paths = {
        "/api/leaderboard/v1/experiments": {
            "get": _op("getExperiment", [_q("experimentId", required=True)], _ref("Experiment")),
            "post": _op(
                "createExperiment",
                [
                    _h("User-Agent"),
                    _h("X-Neptune-CliVersion"),
                    _h("X-Neptune-LegacyClient", "boolean"),
                    _body("experimentCreationParams", _ref("ExperimentCreationParams")),
                ],
                _ref("Experiment"),
            ),
        },
        "/api/leaderboard/v1/attributes": {
            "get": _op("getExperimentAttributes", [_q("experimentId", required=True)], _ref("ExperimentAttributesDTO"))
        },
        "/api/leaderboard/v1/attributes/operations": {
            "post": _op(
                "executeOperations",
                [_h("User-Agent"), *HOLDER, _body("operations", {"type": "array", "items": _ref("Operation")})],
                {"type": "array", "items": _ref("OperationError")},
            )
        },
        "/api/leaderboard/v1/attributes/strings": {"get": _op("getStringAttribute", ATTR, _ref("StringAttributeDTO"))},
        "/api/leaderboard/v1/attributes/floats": {"get": _op("getFloatAttribute", ATTR, _ref("FloatAttributeDTO"))},
        "/api/leaderboard/v1/attributes/integers": {"get": _op("getIntAttribute", ATTR, _ref("IntAttributeDTO"))},
        "/api/leaderboard/v1/attributes/booleans": {"get": _op("getBoolAttribute", ATTR, _ref("BoolAttributeDTO"))},
        "/api/leaderboard/v1/attributes/datetimes": {
            "get": _op("getDatetimeAttribute", ATTR, _ref("DatetimeAttributeDTO"))
        },
        "/api/leaderboard/v1/attributes/stringSets": {
            "get": _op("getStringSetAttribute", ATTR, _ref("StringSetAttributeDTO"))
        },
        "/api/leaderboard/v1/attributes/ls": {
            "get": _op("lsFileSetAttribute", [*ATTR, _q("path")], {"type": "array", "items": _ref("FileEntry")})
        },
        "/api/leaderboard/v1/attributes/ping": {"post": _op("ping", [_q("experimentId")], None)},
        "/api/leaderboard/v1/attributes/downloadFileSetZipRequest": {
            "post": _op("prepareForDownloadFileSetAttributeZip", ATTR, _ref("DownloadPrepareRequest"))
        },
        "/api/leaderboard/v1/download/downloadRequest": {
            "get": _op("getDownloadPrepareRequest", [_q("id", required=True)], _ref("DownloadPrepareRequest"))
        },
        "/api/leaderboard/v1/attributes/uploadFileSetTar": {
            "post": _op(
                "uploadFileSetAttributeTar", [_q("attribute"), _q("experimentId"), _q("reset", "boolean")], None
            )
        },
        "/api/leaderboard/v1/attributes/storage/fileset/upload": {"post": _op("fileSetFileUpload", fileset, errors)},
        "/api/leaderboard/v1/attributes/storage/fileset/upload/start": {
            "post": _op(
                "fileSetFileMultipartUploadStart", [*fileset, _q("totalLength", "integer")], _ref("UploadMetadataDTO")
            )
        },
        "/api/leaderboard/v1/attributes/storage/fileset/upload/part": {
            "post": _op(
                "fileSetFileMultipartUploadPart", [*fileset, _q("uploadId"), _q("uploadPartIdx", "integer")], errors
            )
        },
        "/api/leaderboard/v1/attributes/storage/fileset/upload/finish": {
            "post": _op("fileSetFileMultipartUploadFinish", [*fileset, _q("uploadId")], errors)
        },
        "/api/leaderboard/v1/leaderboard/entries/search": {
            "post": _op(
                "searchLeaderboardEntries",
                [
                    _q("projectIdentifier", required=True),
                    _q("type", "array", items=S, collectionFormat="multi"),
                    _body("params", _obj()),
                ],
                _obj(matchingItemCount=I),
            )
        },
        "/api/leaderboard/v1/leaderboard/attributes/search": {
            "post": _op(
                "searchLeaderboardAttributes",
                [
                    _q("projectIdentifier", required=True),
                    _q("search"),
                    _q("type", "array", items=S, collectionFormat="multi"),
                    _q("attributeType", "array", items=S, collectionFormat="multi"),
                    _q("limit", "integer"),
                    _body("params", _obj()),
                ],
                _ref("AttributesSearchResultDTO"),
            )
        },
    }
    atom = {"attributeName": S, "attributeType": S}
    definitions = {
        "Experiment": _obj(
            id=S,
            type=S,
            shortId=S,
            organizationId=S,
            organizationName=S,
            projectId=S,
            projectName=S,
            parentId=S,
            trashed=B,
            customId=S,
        ),
        "ExperimentCreationParams": _obj(projectIdentifier=S, parentId=S, type=S, key=S, customId=S),
        "ExperimentAttributesDTO": _obj(
            id=S,
            organizationName=S,
            projectName=S,
            trashed=B,
            attributes={"type": "array", "items": _ref("AttributeDTO")},
        ),
        "AttributeDTO": _obj(
            name=S,
            type=S,
            floatProperties=_ref("FloatAttributeDTO"),
            intProperties=_ref("IntAttributeDTO"),
            boolProperties=_ref("BoolAttributeDTO"),
            stringProperties=_ref("StringAttributeDTO"),
            datetimeProperties=_ref("DatetimeAttributeDTO"),
            stringSetProperties=_ref("StringSetAttributeDTO"),
            fileSetProperties=_ref("FileSetAttributeDTO"),
            floatSeriesProperties=_ref("FloatSeriesAttributeDTO"),
            stringSeriesProperties=_ref("StringSeriesAttributeDTO"),
        ),
        "FloatAttributeDTO": _obj(**atom, value=N),
        "IntAttributeDTO": _obj(**atom, value=I),
        "BoolAttributeDTO": _obj(**atom, value=B),
        "StringAttributeDTO": _obj(**atom, value=S),
        "DatetimeAttributeDTO": _obj(**atom, value=DT),
        "StringSetAttributeDTO": _obj(**atom, values={"type": "array", "items": S}),
        "FileSetAttributeDTO": _obj(**atom, size=I),
        "FloatSeriesAttributeDTO": _obj(**atom, last=N, lastStep=N),
        "StringSeriesAttributeDTO": _obj(**atom, last=S, lastStep=N),
        "Operation": _obj(path=S),
        "OperationError": _obj(errorDescription=S, errorType=S),
        "OperationErrorsListDTO": _obj(errors={"type": "array", "items": _ref("OperationError")}),
        "UploadMetadataDTO": _obj(errors={"type": "array", "items": _ref("OperationError")}, uploadId=S),
        "DownloadPrepareRequest": _obj(id=S, downloadUrl=S),
        "FileEntry": _obj(name=S, size=I, mtime=DT, fileType=S),
        "AttributesSearchResultDTO": _obj(entries={"type": "array", "items": _ref("AttributeDefinitionDTO")}),
        "AttributeDefinitionDTO": _obj(name=S, type=S),
    }
    return _spec(host, "Neptune Leaderboard API (stand-in)", paths, definitions)


def _spec(host: str, title: str, paths: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    return {
        "swagger": "2.0",
        "info": {"title": title, "version": "1.0.0"},
        "host": host,
        "basePath": "/",
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": paths,
        "definitions": definitions,
    }


# --------------------------------------------------------------------------------------------- state
def _file_set_path(path: str) -> str:
    """A file-set member path as the server stores it: normalised, no leading './' (the client sends both
    forms depending on whether it uploads a tar or single files)."""
    return posixpath.normpath(path).lstrip("/")


@dataclass
class Attribute:
    type: str
    value: Any


@dataclass
class Container:
    id: str
    type: str  # run | model | modelVersion
    short_id: str
    parent_id: str
    attrs: dict[str, Attribute] = field(default_factory=dict)
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # file set attribute -> path -> bytes
    series: dict[str, list[tuple[float | None, Any]]] = field(default_factory=dict)  # path -> [(step, value)]


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class ApiError(Exception):
    """An error answer: status, title and (as the real server sends) an errorType code."""

    def __init__(self, status: int, title: str, error_type: str | None = None) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.error_type = error_type


# --------------------------------------------------------------------------------------------- NQL
_TOKEN = re.compile(r'\s*(\(|\)|AND\b|OR\b|NOT\b|`[^`]*`(?::\w+)?|"(?:[^"\\]|\\.)*"|[^\s()]+)')


def _nql_tokens(text: str) -> list[str]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ApiError(400, "Syntax error")
        out.append(m.group(1))
        pos = m.end()
    return out


def _nql_eval(tokens: list[str], attrs: dict[str, Attribute]) -> bool:
    """Evaluate a tokenised NQL expression (AND/OR/NOT, atoms `(name:type OP value)`) against `attrs`."""
    pos = 0

    def expr() -> bool:
        nonlocal pos
        value = term()
        while pos < len(tokens) and tokens[pos] == "OR":
            pos += 1
            value = term() or value
        return value

    def term() -> bool:
        nonlocal pos
        value = factor()
        while pos < len(tokens) and tokens[pos] == "AND":
            pos += 1
            value = factor() and value
        return value

    def factor() -> bool:
        nonlocal pos
        if tokens[pos] == "NOT":
            pos += 1
            return not factor()
        if tokens[pos] != "(":
            raise ApiError(400, "Syntax error")
        pos += 1
        value = expr() if tokens[pos] in ("(", "NOT") else atom()
        if pos >= len(tokens) or tokens[pos] != ")":
            raise ApiError(400, "Syntax error")
        pos += 1
        return value

    def atom() -> bool:
        nonlocal pos
        name_type, op, raw = tokens[pos], tokens[pos + 1], tokens[pos + 2]
        pos += 3
        name, _, _typ = name_type.rpartition(":")
        name = name.strip("`")
        literal = json.loads(raw) if raw.startswith('"') else raw
        attr = attrs.get(name)
        current = None if attr is None else attr.value
        if op == "CONTAINS":
            return current is not None and str(literal) in (
                current if isinstance(current, list | set) else str(current)
            )
        if isinstance(current, bool):
            literal = str(literal).lower() == "true"
        elif isinstance(current, int | float):
            literal = float(literal)
        elif isinstance(current, datetime):
            current = _iso(current)
        if op == "=":
            return current == literal
        if op == "!=":
            return current != literal
        if current is None:
            return False
        if op == ">":
            return current > literal  # type: ignore[no-any-return]
        if op == "<":
            return current < literal  # type: ignore[no-any-return]
        raise ApiError(400, "Syntax error")

    if not tokens:
        return True
    result = expr()
    if pos != len(tokens):
        raise ApiError(400, "Syntax error")
    return result


# --------------------------------------------------------------------------------------------- server
class NeptuneStandIn:
    """A threaded HTTP server on 127.0.0.1 holding one workspace/project with models and versions."""

    def __init__(self, workspace: str = "lulc-team", project: str = "registry", project_key: str = "LREG") -> None:
        self.workspace = workspace
        self.project_name = project
        self.project_key = project_key
        self.project_id = str(uuid.uuid4())
        self.org_id = str(uuid.uuid4())
        self.containers: dict[str, Container] = {}
        self.requests: list[tuple[str, str]] = []
        self.faults: dict[str, list[int]] = {}  # operation path -> statuses to answer first
        self._uploads: dict[str, dict[str, Any]] = {}
        self._downloads: dict[str, bytes] = {}
        self._lock = threading.RLock()
        project_container = Container(id=self.project_id, type="project", short_id=project_key, parent_id=self.org_id)
        project_container.attrs.update(
            {
                "sys/id": Attribute("string", project_key),
                "sys/name": Attribute("string", project),
                "sys/creation_time": Attribute("datetime", _now()),
            }
        )
        self.containers[self.project_id] = project_container
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def project(self) -> str:
        return f"{self.workspace}/{self.project_name}"

    @property
    def api_token(self) -> str:
        payload = {"api_address": self.url, "api_url": self.url, "api_key": "stand-in-key"}
        return base64.b64encode(json.dumps(payload).encode()).decode()

    def client_env(self) -> dict[str, str]:
        """What the neptune client needs to reach this server (plain http on 127.0.0.1 included)."""
        return {
            "NEPTUNE_API_TOKEN": self.api_token,
            "NEPTUNE_PROJECT": self.project,
            "OAUTHLIB_INSECURE_TRANSPORT": "1",
        }

    def start(self) -> NeptuneStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> NeptuneStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for tests
    def find(self, short_id: str) -> Container:
        for c in self.containers.values():
            if c.short_id == short_id:
                return c
        raise KeyError(short_id)

    def called(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    # -- domain
    def _container(self, ident: str) -> Container:
        if ident in self.containers:
            return self.containers[ident]
        if ident == self.project:
            return self.containers[self.project_id]
        short = ident.rsplit("/", 1)[-1]
        prefix = ident.rsplit("/", 1)[0] if "/" in ident else self.project
        if prefix != self.project:
            raise ApiError(404, f"project {prefix} not found")
        for c in self.containers.values():
            if c.short_id == short:
                return c
        raise ApiError(404, f"experiment {ident} not found", "EXPERIMENT_NOT_FOUND")

    def _experiment_json(self, c: Container) -> dict[str, Any]:
        return {
            "id": c.id,
            "type": c.type,
            "shortId": c.short_id,
            "organizationId": self.org_id,
            "organizationName": self.workspace,
            "projectId": self.project_id,
            "projectName": self.project_name,
            "parentId": c.parent_id,
            "trashed": bool(c.attrs.get("sys/trashed", Attribute("bool", False)).value),
        }

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        ident = params.get("projectIdentifier")
        if ident not in (self.project_id, self.project):
            raise ApiError(404, f"project {ident} not found")
        typ = params.get("type")
        now = _now()
        if typ == "model":
            key = str(params.get("key") or "")
            if not re.fullmatch(r"[A-Z0-9]{1,10}", key):
                raise ApiError(400, f"invalid model key {key!r}")
            short = f"{self.project_key}-{key}"
            if any(c.short_id == short for c in self.containers.values()):
                raise ApiError(409, f"model key {key} already exists")
            parent = self.project_id
            extra: dict[str, Attribute] = {}
        elif typ == "modelVersion":
            model = self._container(str(params.get("parentId")))
            if model.type != "model":
                raise ApiError(400, "parentId must be a model")
            n = 1 + sum(1 for c in self.containers.values() if c.parent_id == model.id)
            short = f"{model.short_id}-{n}"
            parent = model.id
            extra = {"sys/stage": Attribute("string", "none"), "sys/model_id": Attribute("string", model.short_id)}
        elif typ == "run":
            short = f"{self.project_key}-{1 + sum(1 for c in self.containers.values() if c.type == 'run')}"
            parent = self.project_id
            extra = {}
        else:
            raise ApiError(400, f"unsupported experiment type {typ!r}")
        c = Container(id=str(uuid.uuid4()), type=typ, short_id=short, parent_id=parent)
        c.attrs.update(
            {
                "sys/id": Attribute("string", short),
                "sys/name": Attribute("string", ""),
                "sys/owner": Attribute("string", "stand-in-user"),
                "sys/creation_time": Attribute("datetime", now),
                "sys/modification_time": Attribute("datetime", now),
                "sys/ping_time": Attribute("datetime", now),
                "sys/size": Attribute("float", 0.0),
                "sys/trashed": Attribute("bool", False),
                "sys/failed": Attribute("bool", False),
                "sys/tags": Attribute("stringSet", []),
                **extra,
            }
        )
        self.containers[c.id] = c
        return self._experiment_json(c)

    def _attribute_json(self, name: str, a: Attribute) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "type": a.type}
        base = {"attributeName": name, "attributeType": a.type}
        if a.type == "stringSet":
            out["stringSetProperties"] = {**base, "values": sorted(a.value)}
        elif a.type == "fileSet":
            out["fileSetProperties"] = {**base, "size": a.value}
        elif a.type in ("floatSeries", "stringSeries"):
            out[f"{a.type}Properties"] = {**base, "last": a.value, "lastStep": 0}
        elif a.type == "datetime":
            out["datetimeProperties"] = {**base, "value": _iso(a.value)}
        else:
            out[f"{a.type}Properties"] = {**base, "value": a.value}
        return out

    def _assign(self, c: Container, op: dict[str, Any]) -> str | None:
        """Apply one operation; return an error description or None."""
        path = op.get("path", "")
        kinds = {"assignFloat": "float", "assignInt": "int", "assignBool": "bool", "assignString": "string"}
        for name, typ in kinds.items():
            if name in op:
                current = c.attrs.get(path)
                if current is not None and current.type != typ:
                    return f"{path}: cannot assign {typ} to a {current.type} field"
                value = op[name]["value"]
                if path == "sys/stage" and value not in STAGES:
                    return f"sys/stage: unknown stage {value!r}"
                writable = ("sys/stage", "sys/name", "sys/description", "sys/failed", "sys/hostname")
                if path.startswith("sys/") and path not in writable:
                    return f"{path}: system field is read-only"
                c.attrs[path] = Attribute(typ, value)
                return None
        if "assignDatetime" in op:
            ms = op["assignDatetime"]["valueMilliseconds"]
            c.attrs[path] = Attribute("datetime", datetime.fromtimestamp(ms / 1000, UTC))
            return None
        if "insertStrings" in op or "removeStrings" in op or "clearStringSet" in op:
            current = c.attrs.setdefault(path, Attribute("stringSet", []))
            values = set(current.value)
            if "insertStrings" in op:
                values |= set(op["insertStrings"]["values"])
            elif "removeStrings" in op:
                values -= set(op["removeStrings"]["values"])
            else:
                values = set()
            current.value = sorted(values)
            return None
        if "logFloats" in op or "logStrings" in op:
            key = "logFloats" if "logFloats" in op else "logStrings"
            entries = op[key]["entries"]
            c.series.setdefault(path, []).extend((e.get("step"), e["value"]) for e in entries)
            if entries:
                c.attrs[path] = Attribute("floatSeries" if key == "logFloats" else "stringSeries", entries[-1]["value"])
            return None
        if "configFloatSeries" in op:
            c.attrs.setdefault(path, Attribute("floatSeries", None))
            return None
        if "deleteAttribute" in op:
            c.attrs.pop(path, None)
            c.files.pop(path, None)
            return None
        if "deleteFiles" in op:
            for p in op["deleteFiles"]["filePaths"]:
                c.files.get(path, {}).pop(p, None)
            return None
        return f"{path}: operation {sorted(k for k in op if k != 'path')} is not supported by the stand-in"

    def _touch_fileset(self, c: Container, attribute: str) -> None:
        files = c.files.setdefault(attribute, {})
        c.attrs[attribute] = Attribute("fileSet", sum(len(v) for v in files.values()))

    def _search(self, query: dict[str, list[str]], body: dict[str, Any]) -> dict[str, Any]:
        if query.get("projectIdentifier", [""])[0] not in (self.project_id, self.project):
            raise ApiError(404, "project not found")
        types = set(query.get("type", [])) or {"run", "model", "modelVersion"}
        nql = ((body.get("query") or {}).get("query")) or ""
        tokens = _nql_tokens(nql)
        rows = [c for c in self.containers.values() if c.type in types and _nql_eval(tokens, c.attrs)]
        sorting = body.get("sorting") or {}
        sort_name = (sorting.get("sortBy") or {}).get("name", "sys/creation_time")

        def key(c: Container) -> Any:
            a = c.attrs.get(sort_name)
            return (a is None, "" if a is None else a.value)

        rows.sort(key=key, reverse=sorting.get("dir") == "descending")
        page = body.get("pagination") or {}
        offset, limit = int(page.get("offset", 0)), int(page.get("limit", 100))
        wanted = {f["path"] for f in body.get("attributeFilters") or []}
        entries = []
        for c in rows[offset : offset + limit]:
            attrs = [
                self._attribute_json(n, a)
                for n, a in sorted(c.attrs.items())
                if (not wanted or n in wanted) and a.value is not None
            ]
            entries.append({"experimentId": c.id, "type": c.type, "attributes": attrs})
        return {"matchingItemCount": len(rows), "entries": entries}

    # -- HTTP
    def _route(self, method: str, path: str, q: dict[str, list[str]], body: bytes, headers: Any) -> Any:
        host = self.url.removeprefix("http://")
        one = {k: v[0] for k, v in q.items()}
        if path == "/api/backend/swagger.json":
            return backend_spec(host)
        if path == "/api/leaderboard/swagger.json":
            return leaderboard_spec(host)
        if path == "/api/backend/v1/clients/config":
            return {
                "apiUrl": self.url,
                "applicationUrl": self.url,
                "pyLibVersions": {"minRecommendedVersion": "1.0.0", "minCompatibleVersion": "1.0.0"},
                "multiPartUpload": {"enabled": False},
                "artifacts": {"enabled": False, "apiVersion": 2},
            }
        if path == "/api/backend/v1/authorization/oauth-token":
            token = headers.get("X-Neptune-Api-Token")
            if token != self.api_token:
                raise ApiError(401, "invalid API token")
            return {"accessToken": _jwt(self.url), "refreshToken": "stand-in-refresh", "username": "stand-in-user"}
        if path == "/auth/realms/neptune/protocol/openid-connect/token":
            form = parse_qs(body.decode())
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != ["stand-in-refresh"]:
                raise ApiError(400, "invalid_grant")
            return {
                "access_token": _jwt(self.url),
                "refresh_token": "stand-in-refresh",
                "expires_in": 3600,
                "token_type": "Bearer",
            }
        if path.startswith("/api/leaderboard/") and not (headers.get("Authorization") or "").startswith("Bearer "):
            raise ApiError(401, "missing bearer token")
        if path == "/api/backend/v1/projects/get":
            if one.get("projectIdentifier") not in (self.project, self.project_id):
                raise ApiError(404, "project not found")
            return self._project_json()
        if path == "/api/backend/v1/projects":
            return {"entries": [self._project_json()], "matchingItemCount": 1}
        if path == "/api/backend/v1/myOrganizations":
            return [{"id": self.org_id, "name": self.workspace}]
        if path == "/api/leaderboard/v1/experiments" and method == "GET":
            return self._experiment_json(self._container(one["experimentId"]))
        if path == "/api/leaderboard/v1/experiments" and method == "POST":
            return self._create(json.loads(body or b"{}"))
        if path == "/api/leaderboard/v1/attributes":
            c = self._container(one["experimentId"])
            return {
                **self._experiment_json(c),
                "attributes": [self._attribute_json(n, a) for n, a in sorted(c.attrs.items()) if a.value is not None],
            }
        if path == "/api/leaderboard/v1/attributes/operations":
            c = self._container(one["experimentId"])
            errors = [self._assign(c, op) for op in json.loads(body or b"[]")]
            c.attrs["sys/modification_time"] = Attribute("datetime", _now())
            return [{"errorDescription": e, "errorType": "metadata_inconsistency"} for e in errors if e]
        typed = {
            "/api/leaderboard/v1/attributes/strings": "string",
            "/api/leaderboard/v1/attributes/floats": "float",
            "/api/leaderboard/v1/attributes/integers": "int",
            "/api/leaderboard/v1/attributes/booleans": "bool",
            "/api/leaderboard/v1/attributes/datetimes": "datetime",
            "/api/leaderboard/v1/attributes/stringSets": "stringSet",
        }
        if path in typed:
            c = self._container(one["experimentId"])
            a = c.attrs.get(one["attribute"])
            if a is None or a.type != typed[path]:
                raise ApiError(404, f"attribute {one['attribute']} not found")
            return {
                k: v for k, v in self._attribute_json(one["attribute"], a).items() if k.endswith("Properties")
            }.popitem()[1]
        if path == "/api/leaderboard/v1/attributes/ping":
            self._container(one["experimentId"]).attrs["sys/ping_time"] = Attribute("datetime", _now())
            return None
        if path == "/api/leaderboard/v1/attributes/ls":
            c = self._container(one["experimentId"])
            files = c.files.get(one["attribute"], {})
            return [
                {"name": n, "size": len(b), "mtime": _iso(_now()), "fileType": "file"} for n, b in sorted(files.items())
            ]
        if path == "/api/leaderboard/v1/attributes/uploadFileSetTar":
            c = self._container(one["experimentId"])
            files = c.files.setdefault(one["attribute"], {})
            if one.get("reset", "false").lower() == "true":
                files.clear()
            with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        extracted = tar.extractfile(member)
                        files[_file_set_path(member.name)] = extracted.read() if extracted else b""
            self._touch_fileset(c, one["attribute"])
            return {"errors": []}
        if path == "/api/leaderboard/v1/attributes/storage/fileset/upload":
            c = self._container(one["experimentIdentifier"])
            c.files.setdefault(one["attribute"], {})[_file_set_path(one["subPath"])] = body
            self._touch_fileset(c, one["attribute"])
            return {"errors": []}
        if path == "/api/leaderboard/v1/attributes/storage/fileset/upload/start":
            self._container(one["experimentIdentifier"])
            upload_id = str(uuid.uuid4())
            self._uploads[upload_id] = {"length": int(one["totalLength"]), "data": bytearray(), **one}
            return {"errors": [], "uploadId": upload_id}
        if path == "/api/leaderboard/v1/attributes/storage/fileset/upload/part":
            up = self._uploads[one["uploadId"]]
            start = int(headers.get("X-Range", "bytes=0-0").split("=")[1].split("-")[0])
            if start != len(up["data"]):
                raise ApiError(400, f"part starts at {start}, expected {len(up['data'])}")
            up["data"] += body
            return {"errors": []}
        if path == "/api/leaderboard/v1/attributes/storage/fileset/upload/finish":
            up = self._uploads.pop(one["uploadId"])
            if len(up["data"]) != up["length"]:
                raise ApiError(400, f"upload incomplete: {len(up['data'])}/{up['length']} bytes")
            c = self._container(up["experimentIdentifier"])
            c.files.setdefault(up["attribute"], {})[_file_set_path(up["subPath"])] = bytes(up["data"])
            self._touch_fileset(c, up["attribute"])
            return {"errors": []}
        if path == "/api/leaderboard/v1/attributes/downloadFileSetZipRequest":
            c = self._container(one["experimentId"])
            files = c.files.get(one["attribute"])
            if files is None:
                raise ApiError(404, f"file set {one['attribute']} not found")
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w") as zf:
                for name, data in sorted(files.items()):
                    zf.writestr(name, data)
            download_id = str(uuid.uuid4())
            self._downloads[download_id] = buf.getvalue()
            return {"id": download_id}  # the URL appears on the next poll, as on the real server
        if path == "/api/leaderboard/v1/download/downloadRequest":
            if one["id"] not in self._downloads:
                raise ApiError(404, "download request not found")
            return {"id": one["id"], "downloadUrl": f"{self.url}/stand-in/downloads/{one['id']}.zip"}
        if path == "/api/leaderboard/v1/leaderboard/entries/search":
            return self._search(q, json.loads(body or b"{}"))
        if path == "/api/leaderboard/v1/leaderboard/attributes/search":
            needle = one.get("search", "")
            types = set(q.get("type", [])) or {"run", "model", "modelVersion"}
            seen = {
                (n, a.type)
                for c in self.containers.values()
                if c.type in types
                for n, a in c.attrs.items()
                if needle in n
            }
            return {"entries": [{"name": n, "type": t} for n, t in sorted(seen)]}
        raise ApiError(404, f"no route {method} {path}")

    def _project_json(self) -> dict[str, Any]:
        return {
            "id": self.project_id,
            "name": self.project_name,
            "organizationName": self.workspace,
            "organizationId": self.org_id,
            "projectKey": self.project_key,
            "version": 2,
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # keep-alive, headers and body in two writes: no 40 ms delayed-ACK stalls

            def log_message(self, *args: Any) -> None:
                return None

            def _serve(self, method: str) -> None:
                parsed = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with server._lock:
                    server.requests.append((method, parsed.path))
                    faults = server.faults.get(parsed.path)
                    fault = faults.pop(0) if faults else None
                if fault is not None:
                    self._send(fault, {"title": f"injected fault {fault}"}, extra={"Retry-After": "0"})
                    return
                if parsed.path.startswith("/stand-in/downloads/"):
                    data = server._downloads.get(parsed.path.rsplit("/", 1)[-1].removesuffix(".zip"))
                    if data is None:
                        self._send(404, {"title": "no such download"})
                        return
                    self._raw(200, data, "application/zip", 'attachment; filename="download.zip"')
                    return
                try:
                    with server._lock:
                        result = server._route(method, parsed.path, parse_qs(parsed.query), body, self.headers)
                except ApiError as exc:
                    payload = {"title": exc.title, "status": exc.status}
                    if exc.error_type:
                        payload["errorType"] = exc.error_type
                    self._send(exc.status, payload)
                    return
                except (KeyError, ValueError) as exc:
                    self._send(400, {"title": f"bad request: {exc}", "status": 400})
                    return
                self._send(200, result)

            def _send(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
                self._raw(status, json.dumps(payload).encode(), "application/json", None, extra)

            def _raw(
                self,
                status: int,
                data: bytes,
                ctype: str,
                disposition: str | None,
                extra: dict[str, str] | None = None,
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                if disposition:
                    self.send_header("Content-Disposition", disposition)
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

        return Handler


def _jwt(issuer_base: str) -> str:
    """An unsigned-looking HS256 JWT with the claims the client decodes (exp, azp, iss)."""
    import jwt

    claims = {"exp": int(time.time()) + 3600, "azp": "neptune-cli", "iss": f"{issuer_base}/auth/realms/neptune"}
    return jwt.encode(claims, "stand-in-secret-key-for-hs256-signing-0123", algorithm="HS256")


def main() -> None:
    """`PYTHONPATH=tests .venv/bin/python -m standins.neptune_api` — a stand-in to point the CLI at."""
    import signal

    server = NeptuneStandIn().start()
    print(f"neptune-standin on {server.url}")
    print("export OAUTHLIB_INSECURE_TRANSPORT=1  # plain http on 127.0.0.1")
    print(f"export NEPTUNE_API_TOKEN={server.api_token} NEPTUNE_PROJECT={server.project}")
    print("registry.backend: neptune")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
