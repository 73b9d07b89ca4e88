"""Step 2 — imagery: one multi-band GeoTIFF per tile of one shard, from the configured imagery store."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def imagery(config: str, tiles: Input[Dataset], shard: int, rasters: Output[Dataset]) -> None:
    """Fetch the imagery of the tiles in `shard` into `rasters/<tile id>.tif` (resumes completed tiles).

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        tiles: The area grid directory.
        shard: Index of the shard (round robin over the tiles).
        rasters: Directory of float32 GeoTIFFs, bands as configured.
    """
    from pathlib import Path

    from components._runtime import cache_dir, load_config, read_shard
    from lulc_core.imagery import build_imagery_store, fetch_tiles_report

    cfg = load_config(config)
    subset = read_shard(tiles.path, shard, cfg.pipeline.shards)
    store = build_imagery_store(cfg.imagery, cache_dir=cache_dir(cfg, "imagery"))
    im = cfg.imagery
    report = fetch_tiles_report(store, subset, im.bands, Path(rasters.path), im.concurrency, im.min_valid_share)
    rasters.metadata.update({"shard": shard, "tiles": len(report.written), "bands": list(im.bands)})
    rasters.metadata.update(report.metadata())
