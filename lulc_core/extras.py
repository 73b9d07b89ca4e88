"""Optional dependencies by role, and the one-line message when a role's package is missing.

The core install (`pip install lulc`) is the domain and the CLI. Each role adds what only it imports:
`serve` (KServe predictor), `train` (Lightning, metrics, ONNX export, the MLflow registry client), `pipeline`
(Kubeflow Pipelines, the deploy step's Kubernetes client; includes train and serve), `neptune`; `all` is every role.
"""

from __future__ import annotations

from lulc_core.errors import LulcError

# top-level module -> (the extra that provides it, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "kserve": ("serve", "the predictor"),
    "fastapi": ("serve", "the predictor"),
    "starlette": ("serve", "the predictor"),
    "prometheus_client": ("serve", "the predictor"),
    "onnxruntime": ("serve", "ONNX inference"),
    "lightning": ("train", "training"),
    "pytorch_lightning": ("train", "training"),
    "torchmetrics": ("train", "training and evaluation"),
    "onnx": ("train", "ONNX export"),
    "mlflow": ("train", "the MLflow registry"),
    "sqlalchemy": ("train", "the embedded MLflow registry"),
    "alembic": ("train", "the embedded MLflow registry"),
    "kfp": ("pipeline", "the Kubeflow pipeline"),
    "kfp_server_api": ("pipeline", "the Kubeflow pipeline"),
    "kubernetes": ("pipeline", "deploying to Kubernetes"),
    "neptune": ("neptune", "the Neptune registry"),
}


class MissingExtraError(LulcError):
    """A role's optional dependency is not installed."""


def missing_extra(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The one-line error naming the extra that provides the module `exc` could not import (None: not ours)."""
    top = (exc.name or "").split(".")[0]
    if top not in EXTRAS:
        return None
    extra, what = EXTRAS[top]
    return MissingExtraError(f"{what} needs the '{extra}' extra ({top} is not installed): pip install 'lulc[{extra}]'")
