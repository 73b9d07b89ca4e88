"""The KServe custom predictor: one `kserve.Model` serving a lulc model bundle.

`load()` runs once: resolve the bundle (a directory such as KServe's /mnt/models, or a registry reference such as
`lulc-segformer@production`), load it, build the imagery store, the label source and CORINE (when configured)
from the run configuration, warm up with one forward pass, then set `ready`. `preprocess` decodes V1 `instances` or a V2 InferRequest (bad
requests raise `InvalidInput`), `predict` runs `lulc_core.inference` through the shared `LulcService`, and
`postprocess` encodes the V1 dict or V2 InferResponse.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from lulc_core.bundle import ModelBundle
from lulc_core.config import RunConfig, ServingConfig
from lulc_core.errors import InputError, TooLargeError
from lulc_core.model_source import resolve_source
from serving.protocol import AreaJob, Batch, encode_v1, encode_v2, parse_v1, parse_v2
from serving.service import LulcService, with_fix

log = logging.getLogger(__name__)


class BadRequest(InvalidInput):
    """KServe's InvalidInput (HTTP 400) that keeps the bad field and its fix (serving.api answers with both)."""

    def __init__(self, error: InputError) -> None:
        super().__init__(str(error))
        self.field = error.field
        self.fix = error.fix


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class LulcModel(Model):
    """A lulc model bundle behind KServe's V1/V2 endpoints (and the original REST API, see serving.api)."""

    def __init__(
        self,
        name: str,
        source: str | Path,
        config: RunConfig | None = None,
        *,
        device: str = "auto",
        max_concurrency: int = 1,
        timeout_s: float = 600.0,
    ) -> None:
        super().__init__(name)
        self.source = source
        self.config = config
        self.device = device
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.service: LulcService | None = None
        self.root_path = ""  # the run configuration's serving.root_path, known once loaded
        self.serving_config: ServingConfig | None = None  # the run configuration's serving section, once loaded

    def load(self) -> bool:
        """Load the bundle and data sources once, warm up, then become ready."""
        from lulc_core.imagery import build_imagery_store
        from lulc_core.inference import Predictor
        from lulc_core.inference.fusion import build_fusion_sources

        bundle_dir, cfg = resolve_source(self.source, self.config)
        cache_dir = cfg.work_dir / "cache"
        label_set = ModelBundle.read_metadata(bundle_dir).label_set
        labels, corine = build_fusion_sources(cfg, label_set, cache_dir)  # a config mistake before the weights load
        bundle = ModelBundle.load(bundle_dir, device=_device(self.device))
        store = build_imagery_store(cfg.imagery, cache_dir=cfg.imagery.cache_dir or cache_dir)
        predictor = Predictor(bundle, store, labels, cfg.serving, corine=corine)
        self.root_path = cfg.serving.root_path
        self.serving_config = cfg.serving
        self.service = LulcService(
            predictor, bundle, cfg.serving, max_concurrency=self.max_concurrency, timeout_s=self.timeout_s
        )
        seconds = self.service.warm_up()
        log.info("model %s loaded from %s (warm-up %.2f s)", self.name, bundle_dir, seconds)
        self.ready = True
        return self.ready

    def _service(self) -> LulcService:
        if self.service is None:
            raise RuntimeError("the model is not loaded")
        return self.service

    async def preprocess(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None) -> Any:
        """Decode and validate the request; every bad value is an InvalidInput (400) naming the field."""
        try:
            if isinstance(payload, InferRequest):
                batch = parse_v2(payload, self._service())
            else:
                batch = parse_v1(payload, self._service())
        except TooLargeError:
            raise  # 413, mapped by serving.api's error handlers
        except InputError as exc:
            raise BadRequest(with_fix(exc)) from exc
        batch.request_id = batch.request_id or (headers or {}).get("x-request-id")
        return batch

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        """Run every item of the batch (area requests through the idempotency cache)."""
        service = self._service()
        batch: Batch = payload
        for item in batch.items:
            if isinstance(item.job, AreaJob):
                item.prediction, item.cached = await service.predict_area(item.job)
            else:
                item.prediction = await service.predict_image(item.job.raster, item.job.options)
        return batch

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> Any:
        """The V1 dict or the V2 InferResponse of the batch."""
        batch: Batch = result
        if batch.protocol == "v2":
            return encode_v2(batch, self.name)
        return await asyncio.to_thread(encode_v1, batch)  # may write a COG: off the event loop
