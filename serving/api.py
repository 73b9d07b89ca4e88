"""The original utility's REST API, mounted on KServe's ModelServer app next to the V1/V2 endpoints.

    POST /segment/               GeoTIFF (COG) of classes with colour map, EPSG:4326 clipped to the requested box
    POST /segment/preview        PNG of the classes with a legend
    GET  /segment/describe       the label set (values, names, colours, descriptions; the original's osm/corine)
    POST /uncertainty/           2-band GeoTIFF: TTA variance (max over classes) and normalised Shannon entropy
    POST /uncertainty/preview    PNG of variance and entropy
    GET  /health                 {"status": "ok"} once the model is loaded, else 503
    GET  /docs, /openapi.json    OpenAPI documentation (links carry the proxy's ROOT_PATH)

These paths take the original's body (`serving.compat.OriginalRequest`): unknown fields are ignored and named in
a `Warning` header, and error bodies carry the original's `detail` beside lulc's `error`/`field`/`fix`.

`install_api(app, model)` also maps lulc's errors to HTTP (4xx for bad input with the field and the fix, 413
for areas and bodies over the limits, 404/502/503/504 for the data sources, with Retry-After when known), limits
the request body size and adds request ids, access logs and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException

from lulc_core.errors import InputError, LulcError, NotCoveredError, NotFoundError, UpstreamError
from lulc_core.inference import (
    FusionMode,
    write_classes,
    write_preview_png,
    write_uncertainty,
    write_uncertainty_preview_png,
)
from lulc_core.redaction import redact
from serving import isolated_argv
from serving.compat import (
    GEOTIFF,
    ORIGINAL_PATHS,
    BadRequestError,
    OriginalRequest,
    ignored_fields,
    ignored_fields_warning,
    on_requested_box,
    original_labels,
    requested_bounds,
)
from serving.observability import RequestContextMiddleware
from serving.service import FIXES as FIELD_FIXES
from serving.service import AreaJob, AreaRequest, LulcService, written_file

log = logging.getLogger(__name__)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
PNG = "image/png"
CHUNK_BYTES = 1024 * 1024
ERRORS: dict[int | str, dict[str, Any]] = {
    422: {"description": "Bad input: the field and the fix are named."},
    413: {"description": "Area or body larger than the configured limit."},
    404: {"description": "No imagery for the area and dates."},
    502: {"description": "A data source failed."},
    503: {"description": "Model not loaded yet, or a data source unavailable (see Retry-After)."},
    504: {"description": "A data source or the prediction timed out."},
}


FIXES = FIELD_FIXES
JSON_FIX = "send a UTF-8 JSON object (finite numbers, no NaN/Infinity, a few levels deep) as documented at /docs"


class ServiceHolder(Protocol):
    """What the router needs from the KServe model: its name, readiness and service."""

    name: str
    ready: bool
    service: LulcService | None


def _error(
    status: int,
    message: str,
    field: str | None = None,
    fix: str | None = None,
    detail: Any = None,
    **headers: str,
) -> Response:
    body = {"error": redact(message), "field": field, "fix": fix}  # an upstream message may echo a credential
    if detail is not None:
        body["detail"] = redact(detail) if isinstance(detail, str) else detail
    return JSONResponse(status_code=status, content={k: v for k, v in body.items() if v is not None}, headers=headers)


def _original(request: Request) -> bool:
    """Whether the request is on one of the original utility's paths (its clients read `detail`)."""
    path = get_route_path(request.scope)
    return path in ORIGINAL_PATHS or f"{path}/" in ORIGINAL_PATHS


def _status_of(exc: LulcError) -> int:
    if isinstance(exc, NotFoundError | NotCoveredError):
        return 404
    status = int(getattr(exc, "status_code", 500))
    return status if 400 <= status < 600 else 500


async def lulc_error_handler(request: Request, exc: Exception) -> Response:
    """LulcError -> its HTTP status, naming the field and the fix for bad input."""
    assert isinstance(exc, LulcError)
    status = _status_of(exc)
    detail = str(exc) if _original(request) else None
    if isinstance(exc, InputError):
        return _error(status, str(exc), exc.field, exc.fix, detail)
    headers = {}
    if isinstance(exc, UpstreamError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if status >= 500:
        log.warning("request failed: %s", exc)
    return _error(status, str(exc), detail=detail, **headers)


async def validation_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI/pydantic body validation -> 422 naming the first bad field."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"] or ["body"]
    if loc[0] == "area_coords" and len(loc) == 2 and loc[1] in "0123":  # the original's tuple: name the corner
        loc[1] = ("west", "south", "east", "north")[int(loc[1])]
    msg = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    field = ".".join(loc)
    message = msg if msg.startswith(f"{field}:") else f"{field}: {msg}"
    fix = FIXES.get(loc[0], FIXES["body"])
    if first.get("type") == "extra_forbidden":
        fix = f"remove `{loc[-1]}` (check its spelling); the fields are {', '.join(AreaRequest.model_fields)}"
    if first.get("type") == "json_invalid":
        message, field = "the body is not valid JSON", "body"
    # FastAPI's list, as the original answered; without `input`, which may hold NaN (not JSON)
    detail = [{k: e.get(k) for k in ("type", "loc", "msg")} for e in errors] if _original(request) else None
    return _error(422, message, field, fix, detail)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette HTTPException (404 route, 405 method, 413 body size) as JSON with a fix."""
    assert isinstance(exc, HTTPException)
    detail = str(exc.detail) if _original(request) else None
    if exc.status_code == 413:
        return _error(413, str(exc.detail), "body", "send a smaller body: an area, or a smaller image tensor", detail)
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):  # FastAPI: undecodable or too deep
        return _error(400, "the body is not a readable JSON document", "body", JSON_FIX, detail)
    return _error(exc.status_code, str(exc.detail), detail=detail, **dict(exc.headers or {}))


async def invalid_input_handler(_: Request, exc: Exception) -> Response:
    """KServe's InvalidInput (V1/V2 bad requests) -> 400 naming the field and the fix, without a traceback log."""
    message = str(exc)
    field, fix = getattr(exc, "field", None), getattr(exc, "fix", None)
    if field is None:  # raised by KServe itself while decoding the request
        if "inference-header-content-length" in message:
            message = "the body is not JSON (Content-Type) and not a binary tensor request either"
            field, fix = "Content-Type", "send the request as JSON with Content-Type: application/json"
        elif "request format" in message or "JSON" in message:
            field, fix = "body", JSON_FIX
        else:
            field, fix = "body", FIXES["body"]
    log.info("bad request: %s", message)
    return _error(400, message, field, fix)


async def recursion_error_handler(_: Request, exc: Exception) -> Response:
    """Absurdly nested JSON is a bad request, not a server error."""
    return _error(400, "the JSON body is nested too deeply", "body", "send a flat JSON object")


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    """The bytes of `file` in chunks; the file is closed at the end (or with the generator, on a disconnect)."""
    with file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk


def build_router(model: ServiceHolder) -> APIRouter:
    """The original API's routes, answering from `model.service`."""
    router = APIRouter(tags=["lulc"], responses=ERRORS)

    def service() -> LulcService:
        if not model.ready or model.service is None:
            raise _not_ready()
        return model.service

    async def run(body: OriginalRequest, uncertainty: bool = False) -> tuple[Any, bool]:
        job = AreaJob.from_request(body.area_request(), uncertainty=uncertainty)
        return await service().predict_area(job)

    async def file(write: Callable[[Path], object], media: str, name: str, cached: bool, request: Request) -> Response:
        """The file `write(path)` writes, streamed from disk (never whole in memory; deleted before the answer)."""
        handle = await asyncio.to_thread(written_file, write, Path(name).suffix)  # warping/encoding off the loop
        try:
            headers = {
                "Content-Disposition": f'attachment; filename="{name}"',
                "Content-Length": str(os.fstat(handle.fileno()).st_size),
                "X-Cache": "hit" if cached else "miss",
            }
            ignored = ignored_fields(await request.json())
            if ignored:
                headers["Warning"] = ignored_fields_warning(ignored)
        except BaseException:
            handle.close()
            raise
        return StreamingResponse(_chunks(handle), media_type=media, headers=headers)

    def check_uncertainty(body: OriginalRequest) -> None:
        if body.fusion_mode != FusionMode.ONLY_MODEL:
            raise BadRequestError(
                "fusion_mode",
                f"fusion mode {body.fusion_mode.value} does not support an uncertainty calculation",
                "leave fusion_mode out or send only_model: uncertainty is the model's own",
            )

    tiff: dict[int | str, dict[str, Any]] = {200: {"content": {GEOTIFF: {}}}}

    @router.post("/segment/", response_class=Response, responses=tiff)
    @router.post("/segment", include_in_schema=False)
    async def segment(body: OriginalRequest, request: Request) -> Response:
        """Segment an area: a Cloud-Optimised GeoTIFF of classes with the label set's colour map (EPSG:4326 clipped
        to the box; `grid: "utm"` for lulc's UTM grid)."""
        prediction, cached = await run(body)

        def write(path: Path) -> None:
            write_classes(prediction, path, requested_bounds(body))  # warped straight into the file

        return await file(write, GEOTIFF, "segmentation.tif", cached, request)

    @router.post("/segment/preview", response_class=Response, responses={200: {"content": {PNG: {}}}})
    async def segment_preview(body: OriginalRequest, request: Request) -> Response:
        """Segment an area: a PNG preview with a legend (class names, colours, shares)."""
        prediction, cached = await run(body)
        return await file(lambda p: write_preview_png(prediction, p), PNG, "segmentation.png", cached, request)

    @router.get("/segment/describe")
    async def describe() -> dict[str, Any]:
        """The label set: value, name, colour and description of every class, the model's inputs, and the
        original's `osm` and `corine` label dictionaries."""
        svc = service()
        return svc.describe() | original_labels(svc.label_set)

    @router.post("/uncertainty/", response_class=Response, responses=tiff)
    @router.post("/uncertainty", include_in_schema=False)
    async def uncertainty(body: OriginalRequest, request: Request) -> Response:
        """Test-time-augmentation uncertainty: a 2-band GeoTIFF (variance: the largest per-class variance across
        the 8 flips/rotations; entropy: Shannon entropy of the mean probabilities / ln(classes))."""
        check_uncertainty(body)
        prediction, cached = await run(body, uncertainty=True)

        def write(path: Path) -> None:
            write_uncertainty(on_requested_box(prediction, body), path)

        return await file(write, GEOTIFF, "uncertainty.tif", cached, request)

    @router.post("/uncertainty/preview", response_class=Response, responses={200: {"content": {PNG: {}}}})
    async def uncertainty_preview(body: OriginalRequest, request: Request) -> Response:
        """Test-time-augmentation uncertainty: a PNG of variance and entropy with colour bars."""
        check_uncertainty(body)
        prediction, cached = await run(body, uncertainty=True)
        write = lambda p: write_uncertainty_preview_png(prediction, p)  # noqa: E731
        return await file(write, PNG, "uncertainty.png", cached, request)

    @router.get("/health", responses={503: {"description": "Model not loaded yet."}})
    async def health() -> Response:
        """Liveness and readiness of the original API: 200 `{"status": "ok"}` once the model is loaded."""
        ready = bool(model.ready and model.service is not None)
        return JSONResponse(status_code=200 if ready else 503, content={"status": "ok" if ready else "loading"})

    return router


def _not_ready() -> UpstreamError:
    return UpstreamError("lulc", "the model is not loaded yet", retry_after=5, status_code=503)


def install_api(
    app: FastAPI, model: ServiceHolder, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, root_path: str = ""
) -> None:
    """Mount the original API, error handlers, body limit, request ids and docs on KServe's app (before start).

    `root_path` is the prefix a proxy in front adds (FastAPI's root_path): OpenAPI `servers` and /docs carry it.
    """
    app.root_path = root_path
    app.title = "lulc — land-use/land-cover segmentation"
    app.description = (
        "SegFormer land-use/land-cover predictions for any bounding box. The original utility's API "
        "(/segment, /uncertainty) beside KServe's V1 (/v1/models/{name}:predict) and V2 "
        "(/v2/models/{name}/infer) protocols."
    )
    app.add_middleware(RequestContextMiddleware, max_body_bytes=max_body_bytes)
    app.include_router(build_router(model))
    app.add_exception_handler(LulcError, lulc_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(HTTPException, http_error_handler)
    app.add_exception_handler(RecursionError, recursion_error_handler)
    with isolated_argv():
        from kserve.errors import InvalidInput

    app.add_exception_handler(InvalidInput, invalid_input_handler)
    if not any(getattr(r, "path", None) == "/docs" for r in app.routes):

        @app.get("/docs", include_in_schema=False)
        async def docs(request: Request) -> HTMLResponse:
            prefix = str(request.scope.get("root_path", "")).rstrip("/")
            return get_swagger_ui_html(openapi_url=prefix + (app.openapi_url or "/openapi.json"), title=app.title)
