"""The KServe custom predictor of lulc and the original utility's REST API (thin adapters over lulc_core).

Modules: `predictor` (the kserve.Model), `protocol` (V1/V2 requests and responses), `service` (shared request
values, bounded and cached prediction calls), `api` (the original REST API, error mapping), `observability`
(metrics, request ids, JSON logs), `server` (ModelServer on a chosen host), `deploy` (the pipeline's deploy step).

kserve parses `sys.argv` when it is first imported; wrap that first import in `isolated_argv()` so that the
arguments of `lulc serve` or `python -m serving` are not mistaken for kserve's (e.g. `--config`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def isolated_argv() -> Iterator[None]:
    """Hide the process arguments from kserve's import-time argument parser."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved
