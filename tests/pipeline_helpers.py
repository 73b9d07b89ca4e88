"""Shared by the pipeline tests: a fixed run configuration whose compiled pipeline is reproducible."""

from __future__ import annotations

from typing import Any

from lulc_core.config import RunConfig

IMAGE = "registry.example.org/lulc/lulc:1.2.3"
NODE_LABEL = ("nvidia.com/gpu.product", "NVIDIA-A10G")


def pipeline_run_config(gpu: bool = True) -> RunConfig:
    """A fixed configuration (paths as inside the image) so the compiled YAML is reproducible."""
    pipeline: dict[str, Any] = {"image": IMAGE, "parallelism": 3, "shards": 6, "retries": 2, "cache_pvc": "lulc-cache"}
    if gpu:
        pipeline |= {"accelerator_type": "nvidia.com/gpu", "accelerator_limit": 1, "node_selector": dict([NODE_LABEL])}
    pipeline |= {"cpu_request": "4", "cpu_limit": "8", "memory_request": "16Gi", "memory_limit": "24Gi"}
    return RunConfig.model_validate(
        {
            "name": "golden",
            "work_dir": "/tmp/lulc",
            "area": {
                "bbox": [26.93, 60.52, 26.97, 60.54],
                "time_frames": [{"start": "2023-05-01", "end": "2023-06-30"}],
            },
            "imagery": {"store": "sentinelhub"},
            "labels": {"label_set": "/app/conf/labels/v3.yaml", "source": "ohsome"},
            "training": {"accelerator": "gpu" if gpu else "cpu", "epochs": 20},
            "pipeline": pipeline,
        }
    )
