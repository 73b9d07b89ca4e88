"""Keep credentials out of logs and error messages.

Secrets reach lulc through the environment (`SH_CLIENT_SECRET`, `NEPTUNE_API_TOKEN`, `MLFLOW_TRACKING_PASSWORD`,
`AWS_SECRET_ACCESS_KEY`, `KFP_TOKEN`, ...) or a mounted secret directory (`SH_CREDENTIALS_DIR`). Client libraries
may still print them: requests-oauthlib logs the token request body (with the client secret) and the token at
DEBUG, and an upstream error body or a URL with `user:password@` can end up in an error message. `redact(text)`
replaces every such value with `***`; `RedactingFilter` does it for every log record passing a handler;
`install_redaction()` puts the filter on every handler configured so far (the CLI and the predictor call it).
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote_plus

MASK = "***"
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:)(?P<password>[^/\s@'\"]+)(?=@)")
MIN_LENGTH = 6  # shorter values (flags, "true", ports) are not treated as secrets


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables and of the files in `SH_CREDENTIALS_DIR`, longest first."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_NAME.search(k) and len(v) >= MIN_LENGTH}
    secret_dir = env.get("SH_CREDENTIALS_DIR")
    if secret_dir and Path(secret_dir).is_dir():
        for path in Path(secret_dir).iterdir():
            if "secret" in path.name.lower() and path.is_file() and path.stat().st_size < 10_000:
                value = path.read_text(errors="replace").strip()
                if len(value) >= MIN_LENGTH:
                    values.add(value)
    values |= {quote_plus(v) for v in values}  # also as they appear form-encoded in a request body
    return sorted(values, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """`text` with every secret value and every password in a URL replaced by `***`."""
    for value in secret_values() if secrets is None else secrets:
        if value in text:
            text = text.replace(value, MASK)
    return URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message (and exception text) with the secrets masked; never drops a record."""

    def __init__(self, secrets: Iterable[str] | None = None) -> None:
        super().__init__()
        self.secrets = list(secret_values() if secrets is None else secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_lulc_redacted", False):
            return True
        mask = self._mask
        if isinstance(record.msg, str):
            record.msg = mask(record.msg)
        if isinstance(record.args, tuple):  # keep the arguments' shape: some formatters unpack them (uvicorn)
            record.args = tuple(mask(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: mask(v) if isinstance(v, str) else v for k, v in record.args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's error reporting
            return True
        if mask(message) != message:  # a secret inside a non-string argument (an exception, a dict, ...)
            record.msg, record.args = mask(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = mask(record.exc_text)
        record._lulc_redacted = True
        return True

    def _mask(self, text: str) -> str:
        return redact(text, self.secrets)


def _all_handlers() -> list[logging.Handler]:
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers]


def install_redaction(handlers: Iterable[logging.Handler] | None = None) -> RedactingFilter:
    """Add one `RedactingFilter` (secrets read now) to `handlers` (default: every handler configured so far)."""
    found = RedactingFilter()
    for handler in _all_handlers() if handlers is None else handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(found)
    return found
