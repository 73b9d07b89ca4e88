"""Step 1 — area grid: the AOI and time frames become tiles; returns the shard indices for the fan-out."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def area_grid(config: str, tiles: Output[Dataset], preview: Output[HTML]) -> list:
    """Build the tile grid (tiles/tiles.geojson + tiles.png) and return `[0, 1, ..., shards-1]`.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        tiles: Directory with tiles.geojson (one row per tile) and its preview map.
        preview: The map of the tiles as an HTML page for the KFP UI.
    """
    from pathlib import Path

    from components._report import html_page, html_table, img_tag
    from components._runtime import TILES_FILE, load_config, shard_count
    from lulc_core.errors import InputError
    from lulc_core.grid import build_grid, plot_tiles, write_tiles

    cfg = load_config(config)
    grid = build_grid(cfg.area, cfg.imagery.resolution)
    if not grid:
        raise InputError("area", "the grid has no tiles", "check the AOI, min_land_share and sample_fraction")
    out = Path(tiles.path)
    out.mkdir(parents=True, exist_ok=True)
    write_tiles(grid, out / TILES_FILE)
    png = plot_tiles(grid, out / "tiles.png", aoi=cfg.area)
    n = shard_count(len(grid), cfg.pipeline.shards)
    tiles.metadata.update({"tiles": len(grid), "shards": n, "crs": sorted({t.crs for t in grid})})
    rows = [(t.id, t.crs, t.width, t.height, f"{t.start}/{t.end}") for t in grid[:200]]
    body = img_tag(Path(png), f"{len(grid)} tiles of {cfg.area.name}") + html_table(
        ["id", "crs", "w", "h", "time"], rows
    )
    Path(preview.path).write_text(html_page(f"Area grid: {cfg.area.name}", body))
    return list(range(n))
