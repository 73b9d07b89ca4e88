"""`lulc run` and `lulc demo`: the main job end to end."""

from __future__ import annotations

from pathlib import Path

import typer

from lulc_core.config import load_run_config
from lulc_core.geo import BBox

DEFAULT_CONFIG = Path("conf/run.yaml")


def _summary(outputs: object) -> str:
    from lulc_core.workflow import JobOutputs

    assert isinstance(outputs, JobOutputs)
    lines = [
        "",
        "lulc main job finished",
        f"  tiles          {outputs.tiles}  (preview {outputs.tiles_preview})",
        f"  imagery        {outputs.imagery_dir}",
        f"  labels         {outputs.labels_dir}",
        f"  statistics     {outputs.stats}",
        f"  model bundle   {outputs.bundle_dir}",
        f"  evaluation     {outputs.evaluation_dir}  (metrics.json, confusion_matrix.png)",
        f"  registered as  {outputs.model_ref}  ({'promoted to production' if outputs.promoted else 'not promoted'})",
        f"  prediction     {outputs.prediction}  (preview {outputs.preview})",
        "",
        "test-split metrics",
        f"  overall accuracy  {outputs.metrics['overall_accuracy']:.3f}",
        f"  mIoU              {outputs.metrics['miou']:.3f}",
    ]
    lines += [
        f"  IoU {name:<15} " + ("n/a (absent from the test tiles)" if iou is None else f"{iou:.3f}")
        for name, iou in outputs.per_class_iou.items()
    ]
    lines += ["", "step times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in outputs.seconds.items())]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add the top-level run commands to `app`."""

    @app.command("run")
    def run(
        config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default <work_dir>/runs/<name>)."),
        bbox: str | None = typer.Option(None, help="Prediction bbox W,S,E,N (default: a test tile)."),
        epochs: int | None = typer.Option(None, help="Override training.epochs."),
    ) -> None:
        """Run the main job in this process: grid, imagery, labels, statistics, training, evaluation,
        registration and a prediction.

        Example: lulc run --config conf/run.yaml --epochs 2
        """
        from lulc_core.workflow import run_main_job

        overrides = {"training": {"epochs": epochs}} if epochs else None
        cfg = load_run_config(config, overrides)
        predict_bbox = BBox.from_sequence(bbox.split(","), "--bbox") if bbox else None
        typer.echo(_summary(run_main_job(cfg, out, predict_bbox)))

    @app.command("demo")
    def demo(
        config: Path = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Where the prediction goes (default <work_dir>/demo)."
        ),
    ) -> None:
        """What `make demo` runs: the training pipeline with kfp.local on the bundled sample area (MLflow on
        SQLite), then the KServe predictor on 127.0.0.1 serving the production model, asked for a GeoTIFF and a
        PNG preview of a test tile.

        Example: lulc demo
        """
        from lulc.demo import run_demo, summary

        cfg = load_run_config(config)
        typer.echo(summary(run_demo(cfg, config.resolve(), out)))
