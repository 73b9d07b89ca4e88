"""What the KServe predictor and the REST API share: request values, one prediction call, result encoding.

`AreaRequest` is the original utility's request body (area_coords, start_date, end_date, threshold, fusion_mode)
and is validated here once for every protocol. `LulcService` runs predictions off the event loop with bounded
concurrency, a deadline and an idempotency cache (LRU keyed by the normalised request), and counts them in the
Prometheus metrics. The heavy lifting is `lulc_core.inference`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lulc_core.bundle import ModelBundle
from lulc_core.config import ServingConfig, format_validation_error
from lulc_core.errors import InputError, NotCoveredError, UpstreamError
from lulc_core.geo import SENTINEL2_LAUNCH, BBox
from lulc_core.inference import FusionMode, Prediction, PredictOptions, Predictor, predict_raster
from lulc_core.raster import Raster
from serving import observability as obs

log = logging.getLogger(__name__)
T = TypeVar("T")
OUTPUTS = ("classes", "probabilities", "uncertainty")
AREA_FIELDS = ("area_coords", "start_date", "end_date", "threshold", "fusion_mode")
# The fix named in a bad-input answer whose error does not bring its own (keyed by the last named field).
FIXES = {
    "area_coords": "give [west, south, east, north] in EPSG:4326 degrees (west < east, south < north)",
    "bbox": "give [west, south, east, north] in EPSG:4326 degrees (west < east, south < north)",
    "start_date": "write the date as YYYY-MM-DD",
    "end_date": "write the date as YYYY-MM-DD",
    "threshold": "give a number between 0 and 1",
    "fusion_mode": "choose one of " + ", ".join(m.value for m in FusionMode),
    "outputs": f"give a subset of {list(OUTPUTS)}",
    "format": "use 'array' or 'geotiff'",
    "image": "send a [bands][height][width] array of finite numbers in the model's band order (GET /segment/describe)",
    "crs": "give e.g. 'EPSG:32632'",
    "transform": "give [a, b, c, d, e, f] (GDAL order)",
    "instances": 'send {"instances": [{"area_coords": [W, S, E, N], ...}]} (1..8 objects, see GET /docs)',
    "inputs": "send exactly one input: 'area_coords' (FP64 [4]) or 'image' (see GET /docs)",
    "parameters": f"V2 parameters of an area are {list(AREA_FIELDS[1:])} and 'outputs'",
    "body": "send a JSON object as documented at GET /docs",
}


def _field_names(field: str) -> list[str]:
    """`instances[0].area_coords.0` -> ['instances', 'area_coords', '0']."""
    return [part.split("[", 1)[0] for part in field.split(".")]


def with_fix(exc: InputError) -> InputError:
    """`exc`, or a copy naming a fix when it has none (unknown fields: remove them; else by the field's name)."""
    if exc.fix:
        return exc
    names = _field_names(exc.field)
    if "Extra inputs are not permitted" in exc.message or "is not a field" in exc.message:
        fix = f"remove `{names[-1]}` (check its spelling); see GET /docs for the fields"
    else:
        fix = next((FIXES[n] for n in reversed(names) if n in FIXES), FIXES["body"])
    return type(exc)(exc.field, exc.message, fix)


def prefixed(exc: InputError, prefix: str) -> InputError:
    """`exc` with its field placed under `prefix` (e.g. `instances[0]`), and a fix."""
    if prefix and not exc.field.startswith(prefix):
        exc = type(exc)(f"{prefix}.{exc.field}", exc.message, exc.fix)
    return with_fix(exc)


def no_bool(value: Any) -> Any:
    """JSON true/false are not numbers (pydantic would read them as 1.0/0.0)."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, bool) for v in items):
        raise ValueError("true/false is not a number")
    return value


def _report_abandoned(task: asyncio.Future[Any]) -> None:
    """Work answered with 504 that ended later: its outcome in one log line (never an unretrieved traceback)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("a request answered 504 (deadline) ended later with: %s", exc)


class AreaRequest(BaseModel):
    """An area and time range to segment (the original utility's request body)."""

    model_config = ConfigDict(extra="forbid")

    area_coords: list[float] = Field(
        description="Bounding box [west, south, east, north] in EPSG:4326 degrees.",
        examples=[[9.835, 57.222, 9.850, 57.230]],
    )
    start_date: date | None = Field(default=None, description="First day of imagery (default: end_date - 7 days).")
    end_date: date | None = Field(default=None, description="Last day of imagery (default: today).")
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Below this confidence a pixel is unknown (0..1; default: server's)."
    )
    fusion_mode: FusionMode = Field(default=FusionMode.ONLY_MODEL, description="How model and OSM are combined.")
    edge_buffer_m: float | None = Field(
        default=None, ge=0, description="Margin (m) predicted around the area, then cropped (default: server's)."
    )
    tta: bool | None = Field(
        default=None, description="Classes averaged over test-time augmentations (default: server's serving.tta)."
    )

    @field_validator("area_coords", "threshold", "edge_buffer_m", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return no_bool(v)

    @field_validator("area_coords")
    @classmethod
    def _bbox(cls, v: list[float]) -> list[float]:
        BBox.from_sequence(v, "area_coords")
        return v

    @classmethod
    def parse(cls, values: Any, prefix: str = "") -> AreaRequest:
        """Validate a mapping; an error names the field (with `prefix`) and the fix."""
        if not isinstance(values, dict):
            raise with_fix(InputError(prefix or "body", f"expected a JSON object, got {type(values).__name__}"))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise with_fix(format_validation_error(exc, prefix)) from exc
        except InputError as exc:  # raised inside a validator (BBox): not wrapped by pydantic
            raise prefixed(exc, prefix) from exc

    def bbox(self) -> BBox:
        return BBox.from_sequence(self.area_coords, "area_coords")

    def dates(self, today: date | None = None) -> tuple[date, date]:
        """(start, end) with defaults applied; the range must lie between Sentinel-2's launch and today."""
        today = today or date.today()
        end = self.end_date or today
        start = self.start_date or end - timedelta(days=7)
        if end > today:
            raise InputError("end_date", f"{end} is in the future", f"use a date up to today ({today})")
        if start > end:
            raise InputError("start_date", f"{start} is after end_date {end}", "swap the dates")
        if start < SENTINEL2_LAUNCH:
            raise InputError(
                "start_date", f"{start} is before the Sentinel-2 mission start", f"use {SENTINEL2_LAUNCH} or later"
            )
        return start, end


@dataclass(frozen=True)
class AreaJob:
    """One area prediction: the validated request and the outputs wanted."""

    bbox: BBox
    start: date
    end: date
    options: PredictOptions

    @classmethod
    def from_request(cls, request: AreaRequest, *, probabilities: bool = False, uncertainty: bool = False) -> AreaJob:
        start, end = request.dates()
        options = PredictOptions.build(
            threshold=request.threshold,
            fusion_mode=request.fusion_mode,
            probabilities=probabilities,
            uncertainty=uncertainty,
            edge_buffer_m=request.edge_buffer_m,
            tta=request.tta,
        )
        return cls(request.bbox(), start, end, options)

    def key(self) -> str:
        """The normalised request: equal for requests that must give the same prediction."""
        payload = {
            "bbox": [round(v, 7) for v in self.bbox.as_tuple()],
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "options": self.options.model_dump(mode="json"),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_outputs(value: Any, field: str = "outputs") -> set[str]:
    """The outputs a V1/V2 client asks for: a subset of classes, probabilities, uncertainty."""
    if value is None:
        return {"classes"}
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise InputError(field, f"{value!r} is not a list of names", f"give a subset of {list(OUTPUTS)}")
    unknown = sorted(set(items) - set(OUTPUTS))
    if unknown:
        raise InputError(field, f"unknown outputs {unknown}", f"choose from {list(OUTPUTS)}")
    return set(items) | {"classes"}


class PredictionCache:
    """A thread-safe LRU of recent predictions, bounded by the bytes their arrays hold (and by an entry count).

    A 16 Mpx prediction with per-class probabilities holds hundreds of MB, so a count alone cannot keep the pod
    inside its memory limit; a prediction larger than `max_bytes` is not cached at all.
    """

    def __init__(self, size: int, max_bytes: int = 256 * 2**20) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[str, Prediction] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Prediction | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: str, prediction: Prediction) -> None:
        size = prediction.nbytes
        if self.size <= 0 or size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self.nbytes -= 0 if old is None else old.nbytes
            self._items[key] = prediction
            self.nbytes += size
            while len(self._items) > self.size or self.nbytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)


class LulcService:
    """Predictions for the predictor and the API: off the event loop, bounded, cached, measured."""

    def __init__(
        self,
        predictor: Predictor,
        bundle: ModelBundle,
        settings: ServingConfig | None = None,
        *,
        max_concurrency: int = 1,
        timeout_s: float = 600.0,
    ) -> None:
        self.predictor = predictor
        self.bundle = bundle
        self.settings = settings or ServingConfig()
        self.timeout_s = timeout_s
        self.cache = PredictionCache(self.settings.cache_size, self.settings.cache_max_bytes)
        self._slots = asyncio.Semaphore(max_concurrency)

    @property
    def label_set(self) -> Any:
        return self.bundle.metadata.label_set

    async def _run(self, fn: Callable[[], T], *, bounded_wait: bool = False) -> T:
        """`fn()` in a worker thread; its slot is held until the thread ends, even past the deadline (504).

        With `bounded_wait` the wait for a free slot counts against the same deadline: a request queued behind work
        that outlives its own deadline (a hung data source) is answered in time — 503 with Retry-After — instead
        of waiting for that work to end.
        """
        with obs.IN_FLIGHT.track_inprogress():  # waiting for a slot counts: it is load the replicas cannot take
            return await self._run_in_slot(fn, bounded_wait)

    async def _run_in_slot(self, fn: Callable[[], T], bounded_wait: bool) -> T:
        loop = asyncio.get_running_loop()
        started = loop.time()
        if bounded_wait:
            try:
                await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
            except TimeoutError:
                raise UpstreamError(
                    "lulc",
                    f"busy: no prediction slot became free within {self.timeout_s:g} s (earlier requests still run)",
                    retry_after=min(self.timeout_s, 30.0),
                    status_code=503,
                ) from None
        else:
            await self._slots.acquire()
            started = loop.time()
        task = asyncio.ensure_future(asyncio.to_thread(fn))
        task.add_done_callback(lambda _: self._slots.release())
        remaining = max(self.timeout_s - (loop.time() - started), 0.0)
        try:
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except TimeoutError:
            task.add_done_callback(_report_abandoned)
            raise UpstreamError(
                "lulc", f"prediction did not finish within {self.timeout_s:g} s", status_code=504
            ) from None

    async def predict_area(self, job: AreaJob) -> tuple[Prediction, bool]:
        """The prediction of `job` and whether it came from the cache."""
        key = job.key()
        cached = self.cache.get(key)
        if cached is not None:
            obs.CACHE_HITS.inc()
            return cached, True
        try:
            prediction = await self._run(
                lambda: self.predictor.predict(job.bbox, job.start, job.end, job.options), bounded_wait=True
            )
        except (UpstreamError, NotCoveredError) as exc:
            obs.UPSTREAM_ERRORS.labels(service=getattr(exc, "service", "imagery")).inc()
            raise
        obs.PIXELS.inc(prediction.classes.height * prediction.classes.width)
        self.cache.put(key, prediction)
        return prediction, False

    async def predict_image(self, raster: Raster, options: PredictOptions) -> Prediction:
        """The prediction of a client's own imagery (bands in the bundle's order)."""
        s = self.settings
        threshold = s.threshold if options.threshold is None else options.threshold
        prediction = await self._run(
            lambda: predict_raster(
                self.bundle,
                raster,
                window=s.window,
                overlap=s.overlap,
                batch_size=s.batch_size,
                threshold=threshold,
                return_probabilities=options.probabilities,
                uncertainty=options.uncertainty,
                tta=s.tta if options.tta is None else options.tta,
                tta_variants=options.tta_variants,
                progress=False,
            ),
            bounded_wait=True,
        )
        obs.PIXELS.inc(raster.height * raster.width)
        return prediction

    def warm_up(self) -> float:
        """One forward pass on a blank window (so the first request is not slow); returns seconds."""
        started = time.monotonic()
        meta = self.bundle.metadata
        size = min(self.settings.window, 64)
        blank = np.zeros((len(meta.bands), size, size), np.float32)
        from affine import Affine
        from rasterio.crs import CRS

        raster = Raster(blank, Affine(meta.resolution, 0, 0, 0, -meta.resolution, 0), CRS.from_epsg(3857), meta.bands)
        predict_raster(self.bundle, raster, window=size, overlap=0, batch_size=1, progress=False)
        return time.monotonic() - started

    def describe(self) -> dict[str, Any]:
        """The label set, the model's inputs and the CORINE legend when CORINE is served (GET /segment/describe).

        The original utility's keys `osm` and `corine` are added by the route (`serving.compat.original_labels`).
        """
        meta = self.bundle.metadata
        corine = None
        if self.predictor.corine is not None:
            from lulc_core.corine import CLC_CLASSES

            corine = {
                "source": repr(self.predictor.corine),
                "classes": [{"value": c.index, "code": c.code, "name": c.name, "color": c.color} for c in CLC_CLASSES],
                "attribution": "CORINE Land Cover, (c) European Union, Copernicus Land Monitoring Service, EEA",
            }
        return {
            "label_set": meta.label_set.name,
            "classes": [
                {"value": 0, "name": "unknown", "color": "#000000", "description": "No data or below the threshold."}
            ]
            + [
                {
                    "value": i,
                    "name": c.name,
                    "color": c.color,
                    "description": c.description,
                    "osm_filter": c.osm_filter,
                    "corine_codes": c.corine_codes,
                }
                for i, c in enumerate(meta.label_set.classes, start=1)
            ],
            "bands": meta.bands,
            "resolution_m": meta.resolution,
            "fusion_modes": [m.value for m in FusionMode],
            "max_pixels": self.settings.max_pixels,
            "corine_legend": corine,  # `corine` is the original utility's key (serving.compat.original_labels)
        }


def georeference(raster: Raster) -> dict[str, Any]:
    """CRS, affine transform (GDAL order a, b, c, d, e, f), size and bounds of a raster."""
    t = raster.transform
    return {
        "crs": raster.crs.to_string() if raster.crs else None,
        "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
        "width": raster.width,
        "height": raster.height,
        "bounds": list(raster.bounds),
    }


def written_file(write: Callable[[Path], object], suffix: str) -> BinaryIO:
    """A file written by `write(path)` into a temporary directory, open for reading, the directory already deleted.

    Nothing is left on disk whatever happens next (an error in `write`, a client gone mid-answer): the bytes live
    until the returned file is closed.
    """
    with tempfile.TemporaryDirectory(prefix="lulc-") as tmp:
        path = Path(tmp) / f"out{suffix}"
        write(path)
        return path.open("rb")


def encode_file(write: Callable[[Path], object], suffix: str) -> bytes:
    """Bytes of a file written by `write(path)` (for answers that carry them inline, e.g. base64 in JSON)."""
    with written_file(write, suffix) as file:
        return file.read()
