"""Errors raised by lulc_core. Each names what is wrong and how to fix it.

Adapters map them to their own world: the CLI to exit codes, the predictor to HTTP status codes.
"""

from __future__ import annotations


class LulcError(Exception):
    """Base class of every error lulc raises on purpose."""

    status_code = 500


class InputError(LulcError):
    """A bad value supplied by a user: names the field, the value and the fix (HTTP 400/422)."""

    status_code = 422

    def __init__(self, field: str, message: str, fix: str | None = None) -> None:
        self.field = field
        self.message = message
        self.fix = fix
        text = f"{field}: {message}"
        if fix:
            text += f" — {fix}"
        super().__init__(text)


class ConfigError(InputError):
    """A configuration file or value is invalid."""


class NotFoundError(LulcError, LookupError):
    """A named thing (file, model version, stage) does not exist (HTTP 404)."""

    status_code = 404


class NotCoveredError(LulcError):
    """The data source has nothing for the requested area/time (HTTP 404 at the API)."""

    status_code = 404


class TooLargeError(InputError):
    """A request is larger than the configured limit (HTTP 413)."""

    status_code = 413


class UpstreamError(LulcError):
    """An external service failed after retries (HTTP 502, or 503/504 for unavailable/timeout)."""

    status_code = 502

    def __init__(self, service: str, message: str, *, retry_after: float | None = None, status_code: int = 502):
        self.service = service
        self.retry_after = retry_after
        self.status_code = status_code
        super().__init__(f"{service}: {message}")
