"""Mapping step 4 — area estimates: mapped and error-adjusted class areas with 95 % intervals (Olofsson et al.)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def map_areas(
    config: str,
    plan: Input[Dataset],
    catalog: Input[Dataset],
    areas: Output[Dataset],
    chart: Output[HTML],
    metrics: Output[Metrics],
) -> None:
    """Per class and AOI feature: areas.csv, areas.json and area_chart.png; the chart as HTML for the UI.

    Args:
        config: RunConfig JSON.
        plan: The MapPlan JSON (the model's test confusion matrix).
        catalog: catalog.json of the assemble step (the zone mosaics).
        areas: Directory with areas.csv, areas.json, area_chart.png.
        chart: The bar chart and the whole-AOI table.
        metrics: Error-adjusted km² per class of the whole AOI.
    """
    import json
    from pathlib import Path

    from components._report import html_page, img_tag, md_table
    from components._runtime import load_config
    from lulc_core.mapping.areas import area_table, write_areas
    from lulc_core.mapping.assemble import ZoneMosaic
    from lulc_core.mapping.plan import MapPlan

    load_config(config)
    zones = [ZoneMosaic.model_validate(z) for z in json.loads(Path(catalog.path).read_text())["zones"]]
    rows = area_table(MapPlan.load(plan.path), zones)
    paths = write_areas(rows, Path(areas.path))
    whole = [r for r in rows if r.feature == "all"]
    for r in whole:
        metrics.log_metric(f"adjusted_km2_{r.cls}", round(r.adjusted_km2, 6))
    table = md_table(["class", "mapped km²", "adjusted km²", "± 95 % km²"],
                     [(r.cls, r.mapped_km2, r.adjusted_km2, r.ci95_km2) for r in whole])  # fmt: skip
    Path(chart.path).write_text(
        html_page("Area estimates", img_tag(paths["png"], "class areas") + f"<pre>{table}</pre>")
    )
