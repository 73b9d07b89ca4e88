"""Step 3 — labels: a class GeoTIFF per tile of one shard on the imagery grid, from OSM polygons or CORINE."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def labels(config: str, tiles: Input[Dataset], shard: int, rasters: Output[Dataset]) -> None:
    """Rasterise the label set's classes for the tiles in `shard` into `rasters/<tile id>.tif` (uint8, colour map).

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        tiles: The area grid directory.
        shard: Index of the shard (round robin over the tiles).
        rasters: Directory of uint8 class GeoTIFFs (0 = unknown).
    """
    from pathlib import Path

    from components._runtime import cache_dir, load_config, read_shard
    from lulc_core.labelling import build_label_source, label_tiles
    from lulc_core.labels import LabelSet

    cfg = load_config(config)
    subset = read_shard(tiles.path, shard, cfg.pipeline.shards)
    label_set = LabelSet.from_yaml(cfg.labels.label_set)
    source = build_label_source(cfg, label_set, cache_dir=cache_dir(cfg, "osm"))
    paths = label_tiles(
        source,
        label_set,
        subset,
        Path(rasters.path),
        cache_dir=cache_dir(cfg, "labels"),
        concurrency=cfg.labels.concurrency,
    )
    rasters.metadata.update({"shard": shard, "tiles": len(paths), "label_set": label_set.name})
