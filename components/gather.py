"""Gather: the shard directories of a fan-out (dsl.Collected) merged into one directory artifact."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gather(shards: Input[list[Dataset]], merged: Output[Dataset]) -> None:
    """Copy every shard's GeoTIFFs into `merged` (a tile present in two shards is an error).

    Args:
        shards: The per-shard directories collected from the ParallelFor.
        merged: One directory with every tile's GeoTIFF.
    """
    from components._runtime import merge_dirs

    count = merge_dirs([s.path for s in shards], merged.path)
    merged.metadata.update({"files": count, "shards": len(shards)})
