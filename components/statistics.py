"""Step 4 — statistics: the spatial train/val/test split and per-band normalisation and class weights."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def statistics(
    config: str,
    tiles: Input[Dataset],
    imagery: Input[Dataset],
    labels: Input[Dataset],
    stats: Output[Dataset],
    split: Output[Dataset],
    report: Output[Markdown],
) -> None:
    """Split the tiles by space (seeded) and compute band mean/std and class weights on the training tiles.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        tiles: The area grid directory.
        imagery: Every tile's imagery (gathered).
        labels: Every tile's labels (gathered).
        stats: DatasetStats JSON.
        split: TileSplit JSON (train/val/test tile ids).
        report: Band and class statistics for the KFP UI.
    """
    from pathlib import Path

    from components._report import md_table
    from components._runtime import TILES_FILE, load_config
    from lulc_core.grid import read_tiles
    from lulc_core.imagery import tiles_with_imagery
    from lulc_core.labels import LabelSet
    from lulc_core.split import split_tiles
    from lulc_core.stats import compute_stats

    cfg = load_config(config)
    grid = tiles_with_imagery(read_tiles(Path(tiles.path) / TILES_FILE), Path(imagery.path))  # skipped: no file
    tile_split = split_tiles(grid, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    Path(split.path).write_text(tile_split.model_dump_json(indent=2))
    label_set = LabelSet.from_yaml(cfg.labels.label_set)
    ds = compute_stats(Path(imagery.path), Path(labels.path), label_set, tile_ids=tile_split.train)
    ds.save(Path(stats.path))
    sizes = {"train": len(tile_split.train), "val": len(tile_split.val), "test": len(tile_split.test)}
    split.metadata.update(sizes)
    bands = md_table(["band", "mean", "std"], zip(ds.band_names, ds.mean, ds.std, strict=True))
    classes = md_table(
        ["class", "pixels", "weight"], zip(ds.class_names, ds.class_pixel_counts, ds.class_weights, strict=True)
    )
    Path(report.path).write_text(f"# Dataset statistics\n\nSplit (tiles): {sizes}\n\n{bands}\n{classes}")
