"""Start KServe's ModelServer with the lulc model and the original API, on a chosen host and port.

`ModelServer.start` binds 0.0.0.0; `LulcModelServer` binds the given host (127.0.0.1 for `lulc serve`, 0.0.0.0
in the container) and runs only the REST server (no gRPC port). SIGTERM/SIGINT stop it gracefully: uvicorn
stops accepting connections and lets requests in flight finish within `grace_period_s`.

KServe has no public way to choose the bind address or the InvalidInput handler, so `LulcModelServer` overrides
`ModelServer.start` and uses members of KServe's server that are not public API. They exist, with these
signatures, from KServe 0.18 on (read in kserve's source at the tags v0.14.0 … v0.20.0 and in the installed
0.21: 0.14 lacks the model-readiness check and `RESTServer._add_exception_handlers`, 0.15 to 0.17 lack
`ModelServer.timeout_keep_alive`), hence `kserve>=0.18,<0.22` in pyproject.toml; `check_kserve()` refuses any
other version at start-up in one line, and tests/test_serving_units.py checks both bounds and every member used.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model import BaseKServeModel
from kserve.protocol.rest.server import RESTServer

from lulc_core.config import ServingConfig
from lulc_core.redaction import install_redaction
from serving.api import DEFAULT_MAX_BODY_BYTES, install_api, invalid_input_handler
from serving.predictor import LulcModel

log = logging.getLogger(__name__)

GDAL_CACHE_MB = 64
"""GDAL's block cache in the predictor, unless the operator sets GDAL_CACHEMAX. GDAL's default, 5 % of the
machine's memory, lets the decoded blocks of the imagery read and of the GeoTIFF answers written grow the
resident memory with the area (+150 MB for a 10,000² px answer); the arrays of a request are numpy's, so the
cache only needs GDAL's working set."""
KSERVE_RANGE = ((0, 18), (0, 22))  # [lower, upper) of the kserve versions whose server members are used here
# ModelServer / RESTServer members used below that are not KServe's public API (checked by the tests).
PRIVATE_MEMBERS = {
    "ModelServer": ("_register_and_check_atleast_one_model_is_ready", "_serve", "timeout_keep_alive", "event_loop"),
    "RESTServer": ("_add_exception_handlers",),
}


def check_kserve(version: str | None = None) -> None:
    """Refuse a kserve whose server this module does not fit (the range pinned in pyproject.toml)."""
    from importlib.metadata import version as installed

    text = version or installed("kserve")
    parts = tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
    low, high = KSERVE_RANGE
    if not low <= parts < high:
        raise RuntimeError(
            f"kserve {text} is not supported by serving/server.py (needs >={low[0]}.{low[1]},<{high[0]}.{high[1]}): "
            "install the range pyproject.toml pins"
        )


class LulcRESTServer(RESTServer):
    """KServe's REST server; its InvalidInput handler is replaced by lulc's (field + fix, no traceback log)."""

    def _add_exception_handlers(self, app: Any) -> None:
        from kserve.errors import InvalidInput

        super()._add_exception_handlers(app)  # KServe registers its handlers when the server starts
        app.add_exception_handler(InvalidInput, invalid_input_handler)


class LulcModelServer(ModelServer):
    """ModelServer whose REST server binds `host` (kserve's own binds every interface)."""

    def __init__(self, host: str = "127.0.0.1", **kwargs: object) -> None:
        check_kserve()
        super().__init__(enable_grpc=False, workers=1, **kwargs)  # type: ignore[arg-type]
        self.host = host

    def start(self, models: list[BaseKServeModel]) -> None:
        """Register the (loaded) models and serve until SIGTERM/SIGINT."""
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = LulcRESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            access_log_format=self.access_log_format,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        install_redaction()  # every handler KServe/uvicorn configured: no credential in any log line
        self.setup_event_loop()
        self.register_signal_handler()
        log.info("serving %s on http://%s:%d", [m.name for m in models], self.host, self.http_port)
        asyncio.run(self._serve())


def bound_gdal_cache() -> None:
    """GDAL's block cache at GDAL_CACHE_MB for the whole process, unless GDAL_CACHEMAX is set."""
    import os

    from rasterio.env import set_gdal_config

    if "GDAL_CACHEMAX" not in os.environ:
        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)  # GDAL applies it at once, for every thread


def checked_root_path(value: str) -> str:
    """`value` without a trailing slash ('/' -> ''), or ConfigError naming `root_path` when it is not a URL path."""
    from pydantic import ValidationError

    from lulc_core.config import format_validation_error

    try:
        return ServingConfig(root_path=value.strip().rstrip("/")).root_path
    except ValidationError as exc:
        raise format_validation_error(exc, "serving") from exc


def run_server(
    model: LulcModel,
    *,
    host: str | None = None,
    port: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    grace_period_s: int = 30,
    root_path: str | None = None,
) -> None:
    """Load `model` (if not yet), mount the original API on KServe's app and serve (blocks).

    `root_path` (else the run configuration's `serving.root_path`) is the URL prefix a proxy in front adds: the
    OpenAPI document and /docs name it, requests arrive with or without it. `host` and `port` default to the
    configuration's `serving.host` / `serving.port` — the model's: --config, else the one saved in the bundle.
    """
    from kserve.model_server import app

    bound_gdal_cache()
    if not model.ready:
        model.load()
    root = checked_root_path(model.root_path if root_path is None else root_path)
    install_api(app, model, max_body_bytes, root_path=root)
    settings = model.serving_config or ServingConfig()
    host = settings.host if host is None else host
    port = settings.port if port is None else port
    LulcModelServer(host=host, http_port=port, grace_period=grace_period_s).start([model])
