"""KServe V1 (`instances`/`predictions`) and V2 (Open Inference Protocol) requests and responses.

A request describes the work either as an area (area_coords, start/end date, threshold, fusion mode; the server
fetches the imagery) or as the client's own image tensor (bands x H x W in the bundle's band order). The
response carries the class raster — as an array, or with `format: geotiff` as a base64 Cloud-Optimised GeoTIFF —
with its georeference, plus probabilities and uncertainty when asked.

V1 instance (`edge_buffer_m` and `tta` default to the server's `serving` settings)::

    {"area_coords": [W, S, E, N], "start_date": "2023-05-01", "end_date": "2023-05-31", "threshold": 0.3,
     "fusion_mode": "only_model", "edge_buffer_m": 100, "tta": true, "outputs": ["classes", "probabilities"],
     "format": "array"}
    {"image": [[[...]]], "outputs": ["classes"], "crs": "EPSG:32632", "transform": [10, 0, x0, 0, -10, y0]}

V2: input `area_coords` (FP64/FP32, shape [4] or [1, 4]) with request parameters `start_date`, `end_date`,
`threshold`, `fusion_mode`, `edge_buffer_m`, `tta`, `outputs` (comma-separated); or input `image` (shape [bands, H, W] or
[1, bands, H, W]). Outputs `classes` (UINT8 [H, W]), `probabilities` (FP32 [N, H, W]), `uncertainty`
(FP32 [2, H, W]: variance, entropy); parameters `crs`, `transform`, `bounds`, `class_names`, `colors` (JSON).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

from lulc_core.errors import InputError, TooLargeError
from lulc_core.inference import Prediction, PredictOptions, write_prediction
from lulc_core.raster import Raster
from serving.service import (
    FIXES,
    AreaJob,
    AreaRequest,
    LulcService,
    encode_file,
    georeference,
    parse_outputs,
    prefixed,
)

MAX_INSTANCES = 8
MAX_ARRAY_PIXELS = 2_000_000  # larger results must be asked for as GeoTIFF (format: geotiff) or POST /segment/
IMAGE_DTYPES = {"FP16", "FP32", "FP64", "INT16", "UINT16", "INT32", "UINT8"}


@dataclass
class ImageJob:
    """A prediction on the client's own imagery."""

    raster: Raster
    options: PredictOptions


@dataclass
class Item:
    """One instance of a batch: the job, the outputs wanted and (after predict) the result."""

    job: AreaJob | ImageJob
    outputs: set[str]
    geotiff: bool = False
    prediction: Prediction | None = None
    cached: bool = False


@dataclass
class Batch:
    """A decoded request: its protocol and items (not a dict, so KServe's payload checks skip it)."""

    protocol: str
    items: list[Item]
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return False


def _check_pixels(job: AreaJob, service: LulcService, geotiff: bool) -> None:
    """413 before any work: the area over `max_pixels`, or a JSON array too large to be useful."""
    tile = service.predictor.request_tile(job.bbox, job.start, job.end)
    service.predictor.check_size(tile, job.options)
    pixels = tile.width * tile.height
    arrays = not geotiff or job.options.probabilities or job.options.uncertainty
    if arrays and pixels > MAX_ARRAY_PIXELS:
        raise TooLargeError(
            "format",
            f"{pixels:,} px are too many for a JSON array (limit {MAX_ARRAY_PIXELS:,})",
            'ask for the classes only with "format": "geotiff" (V1), or use POST /segment/ and /uncertainty/',
        )


def _image_raster(data: np.ndarray, service: LulcService, field_name: str, crs: Any, transform: Any) -> Raster:
    bands = service.bundle.metadata.bands
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise InputError(field_name, f"shape {list(data.shape)} is not [bands, height, width]", f"bands are {bands}")
    if data.shape[0] != len(bands):
        raise InputError(
            field_name, f"{data.shape[0]} bands given, the model needs {len(bands)}", f"send bands {bands} in order"
        )
    if min(data.shape[1:]) < 1:
        raise InputError(
            field_name, f"image of {data.shape[1]} x {data.shape[2]} px has no pixels", "send 1..2,000,000 px"
        )
    if data.shape[1] * data.shape[2] > MAX_ARRAY_PIXELS:
        raise TooLargeError(field_name, f"image of {data.shape[1]} x {data.shape[2]} px", "send 1..2,000,000 px")
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        raise InputError(field_name, "contains NaN or infinite values", "send finite numbers (mask nodata as 0)")
    try:
        crs_obj = CRS.from_user_input(crs) if crs else CRS.from_epsg(3857)
    except CRSError as exc:
        raise InputError("crs", f"{crs!r} is not a CRS", "give e.g. 'EPSG:32632'") from exc
    res = service.bundle.metadata.resolution
    if transform is None:
        affine = Affine(res, 0, 0, 0, -res, 0)
    else:
        if isinstance(transform, str):
            transform = json.loads(transform)
        if not isinstance(transform, list) or len(transform) != 6 or not all(math.isfinite(v) for v in transform):
            raise InputError("transform", f"{transform!r} is not 6 numbers", "give [a, b, c, d, e, f] (GDAL order)")
        affine = Affine(*transform)
    return Raster(data, affine, crs_obj, list(bands))


def _options(values: dict[str, Any], outputs: set[str], prefix: str) -> PredictOptions:
    try:
        return PredictOptions.build(
            threshold=values.get("threshold"),
            tta=values.get("tta"),
            probabilities="probabilities" in outputs,
            uncertainty="uncertainty" in outputs,
        )
    except InputError as exc:
        raise InputError(f"{prefix}{exc.field.removeprefix('options.')}", exc.message, exc.fix) from exc


def parse_v1(payload: Any, service: LulcService) -> Batch:
    """A V1 body `{"instances": [...]}` as a Batch."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InputError("instances", "the V1 body must be a JSON object with a list `instances`", FIXES["instances"])
    instances = payload["instances"]
    if not isinstance(instances, list) or not 1 <= len(instances) <= MAX_INSTANCES:
        raise InputError("instances", f"expected a list of 1..{MAX_INSTANCES} objects", "send one area per instance")
    items = []
    for i, raw in enumerate(instances):
        prefix = f"instances[{i}]."
        if not isinstance(raw, dict):
            raise InputError(f"instances[{i}]", f"expected an object, got {type(raw).__name__}")
        values = dict(raw)
        outputs = parse_outputs(values.pop("outputs", None), f"{prefix}outputs")
        fmt = values.pop("format", "array")
        if fmt not in ("array", "geotiff"):
            raise InputError(f"{prefix}format", f"{fmt!r} is not a format", "use 'array' or 'geotiff'")
        if "image" in values:
            unknown = sorted(set(values) - {"image", "threshold", "tta", "crs", "transform"})
            if unknown:
                raise InputError(f"{prefix}{unknown[0]}", "is not a field of an image instance")
            try:
                data = np.asarray(values["image"], dtype=np.float32)
            except (ValueError, TypeError) as exc:
                raise InputError(f"{prefix}image", "is not a numeric [bands][height][width] array") from exc
            raster = _image_raster(data, service, f"{prefix}image", values.get("crs"), values.get("transform"))
            job: AreaJob | ImageJob = ImageJob(raster, _options(values, outputs, prefix))
        else:
            request = AreaRequest.parse(values, prefix.rstrip("."))
            try:
                job = AreaJob.from_request(
                    request, probabilities="probabilities" in outputs, uncertainty="uncertainty" in outputs
                )
            except InputError as exc:
                raise prefixed(exc, prefix.rstrip(".")) from exc
            _check_pixels(job, service, fmt == "geotiff")
        items.append(Item(job, outputs, geotiff=fmt == "geotiff"))
    return Batch("v1", items)


def parse_v2(request: Any, service: LulcService) -> Batch:
    """A V2 InferRequest as a Batch of one item."""
    params = dict(request.parameters or {})
    params = {k: getattr(v, "value", v) for k, v in params.items()}
    inputs = {i.name: i for i in request.inputs}
    unknown = sorted(set(inputs) - {"area_coords", "image"})
    if unknown or len(inputs) != 1:
        raise InputError("inputs", f"got {sorted(inputs)}", "send exactly one input: 'area_coords' or 'image'")
    raw_outputs = params.pop("outputs", None)
    outputs = parse_outputs(raw_outputs.split(",") if isinstance(raw_outputs, str) else raw_outputs)
    ((name, tensor),) = inputs.items()
    expected = {"area_coords": {"FP32", "FP64"}, "image": IMAGE_DTYPES}[name]
    if tensor.datatype not in expected:
        raise InputError(f"inputs.{name}.datatype", f"{tensor.datatype} is not allowed", f"use {sorted(expected)}")
    shape = list(tensor.shape)
    try:
        array = tensor.as_numpy()
    except Exception as exc:
        raise InputError(
            f"inputs.{name}", f"data does not match shape {shape}: {exc}", "send prod(shape) values"
        ) from exc
    if name == "image":
        unknown_params = sorted(set(params) - {"threshold", "tta", "crs", "transform"})
        if unknown_params:
            raise InputError(f"parameters.{unknown_params[0]}", "is not a parameter of an image request")
        raster = _image_raster(array, service, "inputs.image", params.get("crs"), params.get("transform"))
        return Batch("v2", [Item(ImageJob(raster, _options(params, outputs, "parameters.")), outputs)], request.id)
    if shape not in ([4], [1, 4]):
        raise InputError("inputs.area_coords.shape", f"{shape} is not [4] or [1, 4]", "send [west, south, east, north]")
    values = {"area_coords": [float(v) for v in array.reshape(-1)], **params}
    try:
        area = AreaRequest.parse(values)
    except InputError as exc:  # the area is the input tensor; the rest are request parameters
        raise prefixed(exc, "inputs" if exc.field.startswith("area_coords") else "parameters") from exc
    try:
        job = AreaJob.from_request(area, probabilities="probabilities" in outputs, uncertainty="uncertainty" in outputs)
    except InputError as exc:
        raise prefixed(exc, "parameters") from exc
    _check_pixels(job, service, geotiff=False)
    return Batch("v2", [Item(job, outputs)], request.id)


def _describe(prediction: Prediction) -> dict[str, Any]:
    ls = prediction.label_set
    return {**georeference(prediction.classes), "class_names": ls.names, "colors": ls.colors}


def encode_v1(batch: Batch) -> dict[str, Any]:
    """`{"predictions": [...]}`: per item the class raster (array or base64 GeoTIFF) with its georeference."""
    predictions = []
    for item in batch.items:
        p = item.prediction
        assert p is not None
        out: dict[str, Any] = _describe(p) | {"cached": item.cached}
        if item.geotiff:
            tif = encode_file(lambda path, p=p: write_prediction(p, path), ".tif")  # type: ignore[misc]
            out["classes_geotiff"] = base64.b64encode(tif).decode()
        else:
            out["classes"] = p.classes.data[0].tolist()
        if "probabilities" in item.outputs and p.probabilities is not None:
            out["probabilities"] = np.round(p.probabilities.data.astype(np.float32), 4).tolist()
        if "uncertainty" in item.outputs and p.uncertainty is not None:
            out["uncertainty"] = {
                n: np.round(b, 5).tolist() for n, b in zip(p.uncertainty.band_names, p.uncertainty.data, strict=True)
            }
        predictions.append(out)
    return {"predictions": predictions}


def encode_v2(batch: Batch, model_name: str) -> Any:
    """An InferResponse with outputs classes[, probabilities][, uncertainty] and georeference parameters."""
    from kserve.protocol.infer_type import InferOutput, InferResponse

    (item,) = batch.items
    p = item.prediction
    assert p is not None
    arrays = {"classes": ("UINT8", p.classes.data[0])}
    if "probabilities" in item.outputs and p.probabilities is not None:
        arrays["probabilities"] = ("FP32", p.probabilities.data.astype(np.float32))
    if "uncertainty" in item.outputs and p.uncertainty is not None:
        arrays["uncertainty"] = ("FP32", p.uncertainty.data.astype(np.float32))
    outputs = []
    for name, (dtype, array) in arrays.items():
        out = InferOutput(name=name, shape=list(array.shape), datatype=dtype)
        out.set_data_from_numpy(np.ascontiguousarray(array), binary_data=False)
        outputs.append(out)
    params = {k: json.dumps(v) if isinstance(v, list) else v for k, v in _describe(p).items()}
    params["cached"] = item.cached
    if isinstance(item.job, AreaJob):
        params |= {"start_date": item.job.start.isoformat(), "end_date": item.job.end.isoformat()}
    return InferResponse(
        response_id=batch.request_id or "", model_name=model_name, infer_outputs=outputs, parameters=params
    )
