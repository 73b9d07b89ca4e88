"""Kubernetes Secrets the pipelines' pods read credentials from: created by the operator, referenced as optional
environment variables (a run without e.g. Neptune still starts)."""

from __future__ import annotations

SECRETS: dict[str, dict[str, str]] = {
    "lulc-sentinelhub": {"SH_CLIENT_ID": "SH_CLIENT_ID", "SH_CLIENT_SECRET": "SH_CLIENT_SECRET"},
    "lulc-neptune": {"NEPTUNE_API_TOKEN": "NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT": "NEPTUNE_PROJECT"},
    "lulc-mlflow": {
        "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_S3_ENDPOINT_URL": "MLFLOW_S3_ENDPOINT_URL",  # an S3-compatible store (MinIO, Ceph) as artifact root
    },
}
"""Secret name -> {secret key: environment variable}."""

TRACKER_SECRETS = ("lulc-neptune", "lulc-mlflow")
"""The registry's and tracker's credentials: the train step's, and its TrainJob/PyTorchJob nodes' (rank 0 logs the
curves into the step's run)."""
