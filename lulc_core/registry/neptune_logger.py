"""`NeptuneRunLogger`: Lightning's logger interface over a Neptune run (Lightning 2.6 dropped its NeptuneLogger).

Its own module so that only training imports Lightning: `lulc_core.registry` is also what registration, serving
and every pipeline step use, and `import lightning` takes seconds.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class NeptuneRunLogger(Logger):
    """A Lightning logger appending metrics to series `<prefix>/<name>` of a Neptune run (neptune client 1.x)."""

    def __init__(self, run: Any, prefix: str = "training") -> None:
        super().__init__()
        self.run = run
        self.prefix = prefix

    @property
    def name(self) -> str:
        return "neptune"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.run[f"{self.prefix}/{key}"].append(float(value), step=step)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        for key, value in values.items():
            ok = isinstance(value, str | int | float | bool)
            self.run[f"{self.prefix}/hyperparams/{key}"] = value if ok else str(value)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.run.wait()
