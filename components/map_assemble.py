"""Mapping step 3 — assemble: one COG per UTM zone (VRT -> COG driver) and the STAC collection with provenance."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def map_assemble(
    config: str,
    plan: Input[Dataset],
    statuses: Input[list[Dataset]],
    catalog: Output[Dataset],
    metrics: Output[Metrics],
) -> None:
    """Mosaic every zone from its complete blocks and write STAC; incomplete zones are marked, never hidden.

    Args:
        config: RunConfig JSON (mapping.output_dir).
        plan: The MapPlan JSON.
        statuses: The per-shard block statuses (dsl.Collected).
        catalog: catalog.json: the STAC collection path, the zone mosaics and every block's status.
        metrics: Blocks done/skipped/without imagery/failed and complete zones.
    """
    import json
    from pathlib import Path

    from components._runtime import load_config
    from lulc_core.mapping.assemble import assemble_zones, write_stac
    from lulc_core.mapping.blocks import BlockStatus
    from lulc_core.mapping.plan import MapPlan, output_dir

    cfg = load_config(config)
    the_plan = MapPlan.load(plan.path)
    done = [BlockStatus.model_validate(s) for d in statuses for s in json.loads(Path(d.path).read_text())]
    out = output_dir(cfg)
    zones = assemble_zones(the_plan, done, out)
    collection = write_stac(the_plan, done, zones, out)
    doc = {
        "output_dir": str(out),
        "collection": str(collection),
        "zones": [z.model_dump(mode="json") for z in zones],
        "statuses": [s.model_dump() for s in done],
    }
    Path(catalog.path).write_text(json.dumps(doc, indent=1))
    for key in ("done", "skipped", "no_imagery", "failed"):
        metrics.log_metric(f"blocks_{key}", sum(s.status == key for s in done))
    metrics.log_metric("zones_complete", sum(z.complete for z in zones))
    metrics.log_metric("zones_incomplete", sum(not z.complete for z in zones))
    catalog.metadata.update({"complete": all(z.complete for z in zones), "zones": len(zones)})
