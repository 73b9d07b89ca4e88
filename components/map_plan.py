"""Mapping step 1 — plan: resolve the model, cut the AOI into blocks per UTM zone, show the cost."""

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def map_plan(config: str, model: str, plan: Output[Dataset], bundle: Output[Model], report: Output[Markdown]) -> list:
    """Write plan.json and a copy of the model bundle; return the shard indices the blocks are spread over.

    Args:
        config: RunConfig JSON (area, time frames, mapping section).
        model: Model reference (empty: mapping.model).
        plan: The MapPlan JSON (blocks, AOI features, model, cost).
        bundle: The resolved model bundle, read by the predict steps.
        report: The plan's numbers.
    """
    from pathlib import Path

    from components._runtime import copy_dir, load_config, shard_count
    from lulc_core.mapping.plan import make_plan, resolve_model

    cfg = load_config(config)
    info, bundle_dir = resolve_model(cfg, model or None)
    result = make_plan(cfg, info, bundle_dir)
    result.save(Path(plan.path))
    copy_dir(bundle_dir, bundle.path)
    lines = "\n".join(f"    {line}" for line in result.summary_lines())
    Path(report.path).write_text(f"# Map plan\n\n{lines}\n")
    plan.metadata.update({"blocks": len(result.blocks), "zones": result.cost.zones, "pixels": result.cost.pixels})
    return list(range(shard_count(len(result.blocks), cfg.mapping.shards)))
