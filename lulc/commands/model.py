"""`lulc model` commands: spatial split, training, evaluation and ONNX export — one command per model step."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from lulc_core.config import RunConfig, load_run_config
from lulc_core.errors import InputError

app = typer.Typer(help="Model steps: split, train, evaluate, export to ONNX.", no_args_is_help=True)
log = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("conf/run.yaml")
CONFIG_OPTION = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML.")
IMAGERY_OPTION = typer.Option(..., "--imagery", "-i", help="Directory of <tile id>.tif band rasters.")
LABELS_OPTION = typer.Option(..., "--labels", "-l", help="Directory of <tile id>.tif class rasters.")


def _split(cfg: RunConfig, split: Path | None, tiles: Path | None, out: Path) -> Any:
    from lulc_core.grid import read_tiles
    from lulc_core.split import TileSplit, split_tiles

    if split is not None:
        return TileSplit.load(split)
    if tiles is None:
        raise InputError("--split", "give --split (a split JSON) or --tiles (to compute the split)")
    result = split_tiles(read_tiles(tiles), cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
    path = result.save(out / "split.json")
    typer.echo(f"split: {len(result.train)} train, {len(result.val)} val, {len(result.test)} test -> {path}")
    return result


@app.command("split")
def split_cmd(
    config: Path = CONFIG_OPTION,
    tiles: Path = typer.Option(..., "--tiles", "-t", help="Tiles file written by `lulc data grid`."),
    out: Path = typer.Option(Path("split.json"), "--out", "-o", help="Split JSON to write."),
    block_tiles: int | None = typer.Option(None, "--block-tiles", help="Block edge in tiles (default: automatic)."),
    imagery: Path | None = typer.Option(
        None, "--imagery", help="Imagery directory: split only tiles with a raster there (skipped tiles have none)."
    ),
) -> None:
    """Split tiles into train/val/test by spatial blocks (data.val_fraction, test_fraction, split_seed).

    Examples:

      lulc model split -c conf/run.yaml -t tiles.geojson -o split.json

      lulc model split -c conf/run.yaml -t tiles.geojson --block-tiles 2 --imagery out/imagery
    """
    from lulc_core.grid import read_tiles
    from lulc_core.imagery import tiles_with_imagery
    from lulc_core.split import split_tiles

    cfg = load_run_config(config)
    grid = read_tiles(tiles)
    if imagery is not None:
        grid = tiles_with_imagery(grid, imagery)
    result = split_tiles(
        grid, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed, block_tiles=block_tiles
    )
    result.save(out)
    typer.echo(f"{len(result.train)} train, {len(result.val)} val, {len(result.test)} test tiles -> {out}")


@app.command("train")
def train_cmd(
    config: Path = CONFIG_OPTION,
    imagery: Path = IMAGERY_OPTION,
    labels: Path = LABELS_OPTION,
    stats: Path = typer.Option(..., "--stats", "-s", help="Statistics JSON from `lulc data stats`."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (bundle/, checkpoints/, logs/, plots)."),
    split: Path | None = typer.Option(None, "--split", help="Split JSON from `lulc model split`."),
    tiles: Path | None = typer.Option(None, "--tiles", "-t", help="Tiles file: compute the split when no --split."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Override training.batch_size."),
    variant: str | None = typer.Option(None, "--variant", help="Override model.variant (b0..b5)."),
    pretrained: str | None = typer.Option(None, "--pretrained", help="Override model.pretrained (local path)."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="Override training.accelerator."),
    max_time: float | None = typer.Option(None, "--max-time-minutes", help="Override training.max_time_minutes."),
    devices: int | None = typer.Option(None, "--devices", help="Override training.devices (GPUs or CPU processes)."),
    strategy: str | None = typer.Option(None, "--strategy", help="Override training.strategy (auto, ddp, fsdp)."),
    num_nodes: int | None = typer.Option(None, "--num-nodes", help="Override training.num_nodes (under torchrun)."),
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="Override training.checkpoint_dir (default OUT/checkpoints)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the last checkpoint (weights, optimizer, scheduler) if there is one."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    tracking_run: str | None = typer.Option(
        None,
        "--tracking-run",
        envvar="LULC_TRACKING_RUN",
        help="Log the curves into this existing run of the registry's tracker (rank 0; the pipeline sets it for "
        "the training jobs it launches).",
    ),
) -> None:
    """Train a SegFormer on the training tiles and write the model bundle to OUT/bundle.

    Examples:

      lulc model train -c conf/run.yaml -i out/imagery -l out/labels -s out/stats.json --split out/split.json -o out/training

      lulc model train -c conf/run.yaml -i out/imagery -l out/labels -s out/stats.json -t tiles.geojson -o out/training --epochs 3 --variant b1

      lulc model train -c conf/run.yaml -i out/imagery -l out/labels -s out/stats.json --split out/split.json -o out/training --devices 2 --strategy ddp --resume
    """
    from lulc_core.stats import DatasetStats
    from lulc_core.training import train

    overrides: dict[str, Any] = {"training": {}, "model": {}}
    for section, key, value in (
        ("training", "epochs", epochs),
        ("training", "batch_size", batch_size),
        ("training", "accelerator", accelerator),
        ("training", "max_time_minutes", max_time),
        ("training", "devices", devices),
        ("training", "strategy", strategy),
        ("training", "num_nodes", num_nodes),
        ("training", "checkpoint_dir", str(checkpoint_dir.resolve()) if checkpoint_dir else None),
        ("model", "variant", variant),
        ("model", "pretrained", pretrained),
    ):
        if value is not None:
            overrides[section][key] = value
    cfg = load_run_config(config, {k: v for k, v in overrides.items() if v})
    out.mkdir(parents=True, exist_ok=True)
    tile_split = _split(cfg, split, tiles, out)
    data = (imagery, labels, DatasetStats.load(stats), tile_split, out)
    if tracking_run:
        from lulc_core.registry import tracked

        with tracked(cfg, join=tracking_run) as run:
            result = train(cfg, *data, progress=progress, resume=resume, tracking=run)
    else:
        result = train(cfg, *data, progress=progress, resume=resume)
    from lightning.pytorch.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) != 0:  # the other DDP processes report nothing
        return
    if result.resumed_from is not None:
        typer.echo(f"resumed from    {result.resumed_from}")
    last = result.history[-1] if result.history else None
    typer.echo(f"epochs run      {result.epochs_run} (best epoch {result.best_epoch}, {result.wall_time_s:.1f} s)")
    if result.best_val_loss is not None:
        typer.echo(f"best {result.monitor:<10} {result.best_val_loss:.4f}")
    if last is not None and last.val_miou is not None:
        typer.echo(f"last val mIoU   {last.val_miou:.3f}")
    typer.echo(f"bundle          {result.bundle_dir}")
    typer.echo(f"training curve  {result.curve_png}")


@app.command("evaluate")
def evaluate_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    imagery: Path = IMAGERY_OPTION,
    labels: Path = LABELS_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="Directory for metrics.json and confusion_matrix.png."),
    split: Path | None = typer.Option(None, "--split", help="Split JSON: evaluate its --stage tiles."),
    stage: str = typer.Option("test", "--stage", help="Split to evaluate: test, val or train."),
    tile: list[str] | None = typer.Option(None, "--tile", help="Tile id to evaluate (repeatable)."),
) -> None:
    """Score a bundle on labelled tiles (OA, mIoU, per-class scores, confusion matrix) and store the metrics.

    Examples:

      lulc model evaluate out/training/bundle -i out/imagery -l out/labels --split out/split.json -o out/evaluation

      lulc model evaluate out/training/bundle -i out/imagery -l out/labels --tile 637U_r0_c1 -o out/eval
    """
    from lulc_core.evaluation import evaluate
    from lulc_core.split import TileSplit

    if tile:
        ids = list(tile)
    elif split is not None:
        ids = TileSplit.load(split).ids(stage)
    else:
        raise InputError("--split", "give --split (a split JSON) or one or more --tile ids")
    report = evaluate(bundle, imagery, labels, ids, out)
    typer.echo(f"overall accuracy  {report.overall_accuracy:.3f}")
    typer.echo(f"mIoU              {report.miou:.3f}")
    for name, m in report.per_class.items():
        iou = "   -" if m.iou is None else f"{m.iou:.3f}"
        f1 = "   -" if m.f1 is None else f"{m.f1:.3f}"
        typer.echo(f"  {name:<18} IoU {iou}  F1 {f1}  support {m.support}")
    typer.echo(f"metrics -> {out / 'metrics.json'}, {out / 'confusion_matrix.png'} (and {bundle / 'lulc.json'})")


@app.command("export-onnx")
def export_onnx_cmd(
    bundle: Path = typer.Argument(..., help="Model bundle directory."),
    output: Path | None = typer.Option(None, "--output", "-o", help="ONNX file (default: BUNDLE/model.onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare onnxruntime with torch."),
) -> None:
    """Export the bundle's model to ONNX with dynamic batch/height/width, checked with onnxruntime.

    Examples:

      lulc model export-onnx out/training/bundle

      lulc model export-onnx out/training/bundle -o model.onnx --opset 18
    """
    from lulc_core.bundle import export_onnx

    path = export_onnx(bundle, output, opset=opset, verify=verify)
    typer.echo(f"ONNX model -> {path}" + (" (verified against torch)" if verify else ""))
