"""Step 0 — configure: apply the pipeline's typed parameters to the run configuration and validate it once."""

from typing import NamedTuple

from kfp import dsl

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def configure(
    run_config: str,
    aoi_bbox: list,
    aoi_file: str,
    time_frames: list,
    label_set: str,
    imagery_store: str,
    model_variant: str,
    epochs: int,
    registry: str,
) -> NamedTuple(  # type: ignore[valid-type]
    "StepConfigs",
    [
        ("full", str),
        ("area_grid", str),
        ("imagery", str),
        ("labels", str),
        ("statistics", str),
        ("train", str),
        ("evaluate", str),
        ("deploy", str),
    ],
):
    """Apply the overrides (empty values keep the config), validate once, and return the whole RunConfig JSON
    (`full`, recorded with the model) and each step's slice of it (`lulc_core.steps`; a slice changes only when a
    setting its step depends on changes, so KFP's cache stays valid).

    Args:
        run_config: RunConfig JSON (the compiled pipeline's default is the configuration it was compiled with).
        aoi_bbox: [west, south, east, north] in EPSG:4326, or [] to keep the configured AOI.
        aoi_file: AOI GeoJSON/GeoPackage path or URL inside the image, or "" to keep.
        time_frames: ['YYYY-MM-DD/YYYY-MM-DD', ...] or [] to keep.
        label_set: Label set YAML path, or "".
        imagery_store: 'local' or 'sentinelhub', or "".
        model_variant: SegFormer variant b0..b5, or "".
        epochs: Maximum epochs, or 0 to keep.
        registry: 'mlflow' or 'neptune', or "".
    """
    from components._runtime import configure_run

    overrides = {"aoi_bbox": aoi_bbox, "aoi_file": aoi_file, "time_frames": time_frames, "label_set": label_set}
    overrides |= {"imagery_store": imagery_store, "model_variant": model_variant, "epochs": epochs}
    return configure_run(run_config, registry=registry, **overrides)
