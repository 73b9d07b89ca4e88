"""Log handlers shared by the CLI and the predictor."""

from __future__ import annotations

import logging
import sys
from typing import Any


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to `sys.stderr` as it is when the record is emitted (as `logging.lastResort` does), not to
    the stream of the moment logging was configured: code that runs `lulc` or the predictor in process and swaps and
    then closes `sys.stderr` (typer's CliRunner, notebooks, test capture) must not leave a logger writing to a closed
    file."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass
