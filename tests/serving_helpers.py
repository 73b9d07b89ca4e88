"""Helpers of the serving tests: a tiny random-init bundle on the sample's bands and a run config for it."""

from __future__ import annotations

from pathlib import Path

import yaml

from serving.process import free_port as free_port  # re-exported for the serving tests

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12", "VV", "VH", "DEM"]
# Inside sample patch 637U_59R_1_3 (North Jutland, EPSG:32632, 2017-10-30), leaving room for the edge buffer.
BBOX = [9.835, 57.222, 9.850, 57.230]
DATES = {"start_date": "2017-10-25", "end_date": "2017-11-04"}


def make_bundle(path: Path) -> Path:
    """A SegFormer-b0 bundle (random weights, seed 0) predicting the v3 label set from the sample bands."""
    import torch

    from lulc_core.bundle import BundleMetadata, Normalisation, save_bundle
    from lulc_core.labels import LabelSet
    from lulc_core.model import build_segformer

    label_set = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")
    torch.manual_seed(0)
    model = build_segformer("b0", len(BANDS), label_set.num_classes)
    mean = [1500.0] * 12 + [-12.0, -18.0, 50.0]
    std = [1000.0] * 12 + [5.0, 5.0, 50.0]
    meta = BundleMetadata(
        variant="b0",
        bands=BANDS,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=mean, std=std),
        label_set=label_set,
    )
    return save_bundle(path, model, meta)


def write_run_config(path: Path, work_dir: Path, **serving: object) -> Path:
    """A run YAML on the bundled sample (local imagery and OSM-style labels) with small serving windows."""
    settings = {"window": 64, "overlap": 16, "batch_size": 4, "max_pixels": 250_000, "edge_buffer_m": 50}
    cfg = {
        "name": "serving-test",
        "work_dir": str(work_dir),
        "area": {"name": "t", "bbox": BBOX, "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
        "imagery": {"store": "local", "local_dir": str(SAMPLE / "imagery"), "resolution": 10},
        "labels": {
            "label_set": str(REPO / "conf" / "labels" / "v3.yaml"),
            "source": "file",
            "osm_file": str(SAMPLE / "osm" / "sample_osm.geojson"),
        },
        "serving": settings | {"cache_size": 8} | serving,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path
