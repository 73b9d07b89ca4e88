"""Mapping step 5 — OSM gap report: what share of each class OSM maps, gaps and conflicts as polygons."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def map_gaps(
    config: str,
    plan: Input[Dataset],
    catalog: Input[Dataset],
    gaps: Output[Dataset],
    report: Output[HTML],
    summary: Output[Markdown],
    metrics: Output[Metrics],
) -> None:
    """gaps.parquet, conflicts.parquet/.csv, gap_stats.json and gap_map.png; an HTML and a Markdown summary.

    Args:
        config: RunConfig JSON (labels source, mapping.gap_confidence, mapping.gap_min_pixels).
        plan: The MapPlan JSON.
        catalog: catalog.json of the assemble step (block statuses, zone mosaics).
        gaps: Directory of the files above.
        report: Map and tables.
        summary: Per-class table.
        metrics: Gap and conflict totals, OSM-mapped share per class.
    """
    import json
    from pathlib import Path

    import geopandas as gpd

    from components._report import gap_pages
    from components._runtime import cache_dir, load_config
    from lulc_core.mapping.assemble import ZoneMosaic
    from lulc_core.mapping.blocks import BlockStatus
    from lulc_core.mapping.gaps import gap_map_png, gap_report
    from lulc_core.mapping.plan import MapPlan
    from lulc_core.osm import build_osm_source

    cfg = load_config(config)
    the_plan, doc = MapPlan.load(plan.path), json.loads(Path(catalog.path).read_text())
    statuses = [BlockStatus.model_validate(s) for s in doc["statuses"]]
    out, m = Path(gaps.path), cfg.mapping
    osm = build_osm_source(cfg.labels, cache_dir=cache_dir(cfg, "osm"))
    stats = gap_report(the_plan, statuses, osm, Path(doc["output_dir"]), out, m.gap_confidence, m.gap_min_pixels)
    zones = [ZoneMosaic.model_validate(z) for z in doc["zones"]]
    png = gap_map_png(the_plan, zones, gpd.read_parquet(out / "gaps.parquet"), out / "gap_map.png")
    page, table = gap_pages(stats, png, gpd.read_parquet(out / "conflicts.parquet"))
    Path(report.path).write_text(page)
    Path(summary.path).write_text(table)
    for key in ("gap_polygons", "gap_km2", "conflict_polygons", "conflict_km2"):
        metrics.log_metric(key, stats[key])
    for name, c in stats["per_class"].items():
        if c["osm_mapped_share"] is not None:
            metrics.log_metric(f"osm_mapped_share_{name}", round(c["osm_mapped_share"], 4))
