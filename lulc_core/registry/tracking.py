"""The training run: loss and mIoU per epoch logged live to the registry backend's tracker, in the run that
registration later turns into the model version.

MLflow: `MlflowRegistry.start_training_run` creates a run in the registry's experiment and Lightning's
`MLFlowLogger` logs into it; the bundle records its id (`Provenance.tracking_run`), and `register` adds the test
metrics, the bundle and the tags to that same run before creating the version from it (`runs:/<run>/bundle`).
Neptune: a Neptune run holds the curves (`training/<metric>` series, logged by `lulc_core.registry.neptune_logger`, since
Lightning 2.6 dropped its NeptuneLogger); the model version records the run's id and URL, and the run the version
id. `training_run(registry, name)` opens one; `lulc_core.registry.tracked(cfg)` is what `lulc run` and the
pipeline's train step use.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Lightning is imported only where a logger is made: it takes seconds (every pipeline step)
    from lightning.pytorch.loggers import Logger

    from lulc_core.registry.base import ModelRegistry

log = logging.getLogger(__name__)


class TrainingRun(ABC):
    """A run of the tracker that training logs into (the run id travels in the bundle to registration)."""

    backend: str = "?"

    def __init__(self, run_id: str | None, url: str | None) -> None:
        self.run_id = run_id
        self.url = url

    @abstractmethod
    def logger(self) -> Logger:
        """A Lightning logger writing into this run."""

    @abstractmethod
    def close(self, failed: bool = False) -> None:
        """Mark the run finished (or failed) and release the client."""


@contextlib.contextmanager
def training_run(registry: ModelRegistry, name: str, join: str | None = None) -> Iterator[TrainingRun]:
    """Start a training run on `registry`'s tracker (or join the existing run `join`); close it when the block
    ends (failed when it raised)."""
    run = registry.join_training_run(join) if join else registry.start_training_run(name)
    log.info("training curves go to %s run %s %s", run.backend, run.run_id, run.url or "")
    try:
        yield run
    except BaseException:
        run.close(failed=True)
        raise
    run.close()
