"""`lulc data` commands: area grid, imagery, labels and statistics — one command per data step."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from lulc_core.config import RunConfig, load_run_config
from lulc_core.errors import InputError

app = typer.Typer(help="Data steps: tile grid, imagery, labels, statistics.", no_args_is_help=True)
log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("conf/run.yaml")
CONFIG_OPTION = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML.")
TILES_OPTION = typer.Option(..., "--tiles", "-t", help="Tiles file written by `lulc data grid`.")


def _config(path: Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    return load_run_config(path, overrides or None)


@app.command("grid")
def grid(
    config: Path = CONFIG_OPTION,
    out: Path = typer.Option(Path("tiles.geojson"), "--out", "-o", help="Tiles file (.geojson or .parquet)."),
    preview: Path | None = typer.Option(None, "--preview", help="Also write a PNG map of the tiles."),
) -> None:
    """Cut the configured area into tiles (one per cell and time frame) and write them.

    Examples:

      lulc data grid --config conf/run.yaml -o tiles.geojson --preview tiles.png

      lulc data grid -c conf/run.yaml -o tiles.parquet
    """
    from lulc_core.grid import build_grid, plot_tiles, write_tiles

    cfg = _config(config)
    tiles = build_grid(cfg.area, cfg.imagery.resolution)
    write_tiles(tiles, out)
    typer.echo(f"{len(tiles)} tiles -> {out}")
    if preview is not None:
        plot_tiles(tiles, preview, cfg.area)
        typer.echo(f"preview -> {preview}")


@app.command("imagery")
def imagery(
    config: Path = CONFIG_OPTION,
    tiles: Path = TILES_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for <tile id>.tif (float32, band names)."),
    store: str | None = typer.Option(None, "--store", help="Override imagery.store: local, sentinelhub or stac."),
    concurrency: int | None = typer.Option(None, "--concurrency", "-j", help="Override imagery.concurrency."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Download cache (remote stores)."),
    report: Path | None = typer.Option(
        None, "--report", help="Write a JSON report: valid share per tile, skipped and failed tiles."
    ),
) -> None:
    """Fetch the configured bands for every tile; tiles already complete are skipped (resumable).

    Examples:

      lulc data imagery --config conf/run.yaml --tiles tiles.geojson -o out/imagery

      lulc data imagery -c conf/run.yaml -t tiles.geojson -o out/imagery --store sentinelhub -j 4

      lulc data imagery -c conf/examples/heidelberg.yaml -t tiles.geojson -o out/imagery --store stac

    Tiles below imagery.min_valid_share are skipped and counted; a tile the store cannot serve (no scene under the
    cloud limit, a band the catalogue lacks) is logged in one line while the others finish, then the command fails
    naming the first (and how many more).
    """
    from lulc_core.grid import read_tiles
    from lulc_core.imagery import build_imagery_store, fetch_tiles_report

    overrides: dict[str, Any] = {}
    if store is not None:
        overrides["imagery"] = {"store": store}
    cfg = _config(config, overrides)
    tile_list = read_tiles(tiles)
    backend = build_imagery_store(cfg.imagery, cache_dir=cache_dir or cfg.imagery.cache_dir)
    done = fetch_tiles_report(
        backend,
        tile_list,
        cfg.imagery.bands,
        out,
        concurrency or cfg.imagery.concurrency,
        cfg.imagery.min_valid_share,
        raise_failed=True,
        report_path=report,
    )
    typer.echo(f"{done.summary()} ({', '.join(cfg.imagery.bands)}) -> {out}")


def _source_overrides(source: str | None) -> dict[str, Any]:
    if source is None:
        return {}
    if source in ("ohsome", "corine"):
        return {"labels": {"source": source}}
    if source.startswith("file:"):
        path = Path(source.removeprefix("file:")).expanduser()
        return {"labels": {"source": "file", "osm_file": str(path.resolve())}}
    raise InputError("--source", f"{source!r} is not a label source", "use file:PATH, ohsome or corine")


def _check_filters(classes: Any, path: Path) -> None:
    """Parse every class's filter before any tile is labelled: a syntax error names the class and the position."""
    from lulc_core.osm.filter import FilterSyntaxError, parse_filter

    for c in classes.classes:
        try:
            parse_filter(c.osm_filter)
        except FilterSyntaxError as exc:
            exc.args = (f"label set {Path(path).name}, class {c.name!r}: {exc}", *exc.args[1:])
            raise


@app.command("labels")
def labels(
    config: Path = CONFIG_OPTION,
    tiles: Path = TILES_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for <tile id>.tif (uint8 classes, colour map)."),
    source: str | None = typer.Option(
        None, "--source", help="Override the label source: file:PATH, ohsome or corine (Sentinel Hub BYOC)."
    ),
    label_set: Path | None = typer.Option(None, "--label-set", help="Override labels.label_set (YAML)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Label cache reused across runs."),
) -> None:
    """Label every tile with the label set's classes: OSM polygons (larger first) or CORINE (0 = unknown).

    Examples:

      lulc data labels --config conf/run.yaml --tiles tiles.geojson -o out/labels

      lulc data labels -c conf/run.yaml -t tiles.geojson -o out/labels --source file:extract.osm.pbf

      lulc data labels -c conf/run.yaml -t tiles.geojson -o out/labels --source ohsome

      lulc data labels -c conf/run.yaml -t tiles.geojson -o out/labels --source corine
    """
    from lulc_core.corine import check_corine_config
    from lulc_core.grid import read_tiles
    from lulc_core.labelling import build_label_source, label_tiles
    from lulc_core.labels import LabelSet

    overrides = _source_overrides(source)
    if label_set is not None:
        overrides.setdefault("labels", {})["label_set"] = str(label_set.resolve())
    cfg = _config(config, overrides)
    labels_cfg = cfg.labels
    classes = LabelSet.from_yaml(labels_cfg.label_set)
    check_corine_config(cfg)
    if labels_cfg.source != "corine":
        _check_filters(classes, labels_cfg.label_set)
    tile_list = read_tiles(tiles)
    label_source = build_label_source(cfg, classes, cache_dir=cache_dir)
    paths = label_tiles(label_source, classes, tile_list, out, cache_dir=cache_dir, concurrency=labels_cfg.concurrency)
    typer.echo(f"{len(paths)} label rasters ({classes.name}: {', '.join(classes.names)}, {labels_cfg.source}) -> {out}")


@app.command("stats")
def stats(
    imagery_dir: Path = typer.Option(..., "--imagery", help="Directory written by `lulc data imagery`."),
    labels_dir: Path = typer.Option(..., "--labels", help="Directory written by `lulc data labels`."),
    label_set: Path = typer.Option(..., "--label-set", help="Label set YAML the labels were made with."),
    out: Path = typer.Option(Path("stats.json"), "--out", "-o", help="Statistics JSON."),
    split: Path | None = typer.Option(
        None, "--split", help="Use only the tile ids of `train` in this JSON (a split file), or a JSON list of ids."
    ),
) -> None:
    """Per-band mean/std (valid pixels only) and class weights from pixel frequencies.

    Examples:

      lulc data stats --imagery out/imagery --labels out/labels --label-set conf/labels/v3.yaml -o stats.json

      lulc data stats --imagery out/imagery --labels out/labels --label-set conf/labels/v3.yaml --split split.json
    """
    from lulc_core.labels import LabelSet
    from lulc_core.stats import compute_stats

    tile_ids: list[str] | None = None
    if split is not None:
        try:
            raw = json.loads(split.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError("--split", f"cannot read {split}: {exc}", "give split.json or a JSON list") from exc
        tile_ids = raw.get("train") if isinstance(raw, dict) else raw
        if not isinstance(tile_ids, list) or not all(isinstance(t, str) for t in tile_ids):
            raise InputError("--split", f"{split} has no list of tile ids", "give split.json or a JSON list")
    result = compute_stats(imagery_dir, labels_dir, LabelSet.from_yaml(label_set), tile_ids)
    result.save(out)
    typer.echo(f"statistics of {result.tiles} tiles -> {out}")
    for name, count, weight in zip(result.class_names, result.class_pixel_counts, result.class_weights, strict=True):
        typer.echo(f"  {name:<16} {count:>10} px  weight {weight:.3f}")
