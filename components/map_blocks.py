"""Mapping step 2 — predict blocks: one shard of the plan's blocks, one COG each in the output location."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def map_blocks(config: str, plan: Input[Dataset], bundle: Input[Model], shard: int, statuses: Output[Dataset]) -> None:
    """Predict the blocks of `shard` (valid blocks already written are skipped); a status per block.

    Args:
        config: RunConfig JSON (imagery, serving, mapping).
        plan: The MapPlan JSON.
        bundle: The model bundle.
        shard: Index of the shard (round robin over the blocks).
        statuses: statuses.json: one BlockStatus per block of the shard.
    """
    import json
    from pathlib import Path

    from components._runtime import cache_dir, load_config, select_shard
    from lulc_core.mapping.blocks import build_predictor, predict_blocks
    from lulc_core.mapping.plan import MapPlan, output_dir
    from lulc_core.mapping.workers import limit_threads, peak_rss_mb, worker_threads

    cfg = load_config(config)
    threads = worker_threads(cfg.mapping)  # its CPU allocation, before torch starts its pools
    limit_threads(threads)
    the_plan = MapPlan.load(plan.path)
    blocks = select_shard(the_plan.blocks, shard, cfg.mapping.shards)
    predictor = build_predictor(cfg, Path(bundle.path), cache_dir(cfg, ""))
    done = predict_blocks(the_plan, blocks, predictor, output_dir(cfg))
    Path(statuses.path).write_text(json.dumps([s.model_dump() for s in done]))
    counts = {k: sum(s.status == k for s in done) for k in ("done", "skipped", "no_imagery", "failed")}
    statuses.metadata.update({"shard": shard, "threads": threads, "peak_rss_mb": round(peak_rss_mb()), **counts})
