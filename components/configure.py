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
    deploy_target: str = "none",
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
    """Apply the overrides (empty values keep the config), validate once, return the whole RunConfig JSON (`full`)
    and each step's slice of it (`lulc_core.steps`: it changes only with what its step reads; KFP's cache holds).

    Args:
        run_config: RunConfig JSON (the compiled pipeline's default is the configuration it was compiled with).
        aoi_bbox: [west, south, east, north] in EPSG:4326, or [] to keep the configured AOI.
        aoi_file: AOI GeoJSON/GeoPackage path or URL inside the image, or "" to keep.
        time_frames: ['YYYY-MM-DD/YYYY-MM-DD', ...] or [] to keep.
        label_set: Label set YAML path, or "".
        imagery_store: 'local', 'sentinelhub' or 'stac', or "".
        model_variant: SegFormer variant b0..b5, or "".
        epochs: Maximum epochs, or 0 to keep.
        registry: 'mlflow' or 'neptune', or "".
        deploy_target: The deploy step's target: 'kserve' is refused here when the registry keeps the bundle local.
    """
    from components._runtime import configure_run

    overrides: dict = {"aoi_bbox": aoi_bbox, "aoi_file": aoi_file, "time_frames": time_frames, "label_set": label_set}
    overrides |= {"imagery_store": imagery_store, "model_variant": model_variant, "epochs": epochs}
    return configure_run(run_config, registry=registry, deploy_target=deploy_target, **overrides)
