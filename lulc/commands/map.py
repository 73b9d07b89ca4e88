"""`lulc map`: plan a map of a region (cost first), run the mapping pipeline locally (kfp.local), or submit it.

kfp is imported inside the commands that need it only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from lulc_core.config import RunConfig, load_run_config

app = typer.Typer(help="Map a region: plan blocks and cost, run the mapping pipeline, submit it.", no_args_is_help=True)

DEFAULT_CONFIG = Path("conf/run.yaml")
CONFIG_OPTION = typer.Option(DEFAULT_CONFIG, "--config", "-c", help="Run configuration YAML.")
MODEL_OPTION = typer.Option(None, "--model", "-m", help="Model reference, e.g. lulc-sample@production.")
AOI_OPTION = typer.Option(None, "--aoi", help="AOI file (GeoJSON, GeoPackage, GeoParquet) instead of area.aoi.")
FRAME_OPTION = typer.Option(None, "--time-frame", help="START/END (ISO dates) instead of area.time_frames; repeatable.")
BLOCK_OPTION = typer.Option(None, "--block-px", help="Block edge in pixels (mapping.block_px).")


def map_config(
    config: Path,
    *,
    model: str | None = None,
    aoi: Path | None = None,
    time_frames: list[str] | None = None,
    block_px: int | None = None,
    output_dir: str | None = None,
) -> RunConfig:
    """The run configuration with the command-line overrides applied (validated like the file)."""
    from components._runtime import parse_time_frames

    over: dict[str, Any] = {"mapping": {}}
    if aoi is not None:
        over["area"] = {"aoi": str(aoi.resolve()), "bbox": None, "name": aoi.stem}
    if time_frames:
        over.setdefault("area", {})["time_frames"] = parse_time_frames(time_frames)
    if model:
        over["mapping"]["model"] = model
    if block_px:
        over["mapping"]["block_px"] = block_px
    if output_dir is not None:
        over["mapping"]["output_dir"] = (
            output_dir if output_dir.startswith("s3://") else str(Path(output_dir).resolve())
        )
    return load_run_config(config, over)


@app.command("plan")
def plan_cmd(
    config: Path = CONFIG_OPTION,
    model: str | None = MODEL_OPTION,
    aoi: Path | None = AOI_OPTION,
    time_frame: list[str] | None = FRAME_OPTION,
    block_px: int | None = BLOCK_OPTION,
    throughput: float | None = typer.Option(None, "--throughput", help="Measured px/s of the target node."),
    save: Path | None = typer.Option(None, "--save", help="Also write the plan JSON (blocks, cost) here."),
) -> None:
    """Print blocks, pixels, Sentinel Hub processing units, GPU-hours and output size — before anything is fetched.

    Example: lulc map plan -c conf/run.yaml --model lulc-sample@production
    """
    from lulc_core.mapping.plan import make_plan, resolve_model

    cfg = map_config(config, model=model, aoi=aoi, time_frames=time_frame, block_px=block_px)
    info, bundle_dir = resolve_model(cfg, cfg.mapping.model)
    plan = make_plan(cfg, info, bundle_dir, throughput_px_s=throughput)
    for line in plan.summary_lines():
        typer.echo(line)
    if save is not None:
        typer.echo(f"plan           {plan.save(save)}")


@app.command("run")
def run_cmd(
    local: bool = typer.Option(False, "--local", help="Run with kfp.local in this environment (no cluster)."),
    config: Path = CONFIG_OPTION,
    model: str | None = MODEL_OPTION,
    aoi: Path | None = AOI_OPTION,
    time_frame: list[str] | None = FRAME_OPTION,
    block_px: int | None = BLOCK_OPTION,
    out: str | None = typer.Option(
        None, "--out", "-o", help="Output directory or s3://bucket/prefix (mapping.output_dir)."
    ),
    pipeline_root: Path | None = typer.Option(None, "--pipeline-root", help="Artifacts (default <work_dir>/kfp)."),
) -> None:
    """Run the mapping pipeline locally with kfp.local: blocks, zone COGs + STAC, area estimates, OSM gaps.

    Re-running the same command resumes: blocks already written and valid are skipped.

    Example: lulc map run --local -c conf/run.yaml --model lulc-sample@production -o maps/sample
    """
    from lulc_core.errors import InputError, LulcError
    from pipelines.local import run_mapping_local

    if not local:
        raise InputError("--local", "only local runs are started here", "add --local, or use `lulc map submit`")
    from lulc_core.mapping.plan import load_features, resolve_model

    cfg = map_config(config, model=model, aoi=aoi, time_frames=time_frame, block_px=block_px, output_dir=out)
    load_features(cfg.area)  # bad AOI or model: one line now, not a failed pipeline step
    resolve_model(cfg, cfg.mapping.model)
    run = run_mapping_local(cfg, pipeline_root, model=cfg.mapping.model or "")
    typer.echo(f"blocks         {', '.join(f'{n} {k}' for k, n in sorted(run.statuses.items()))}")
    typer.echo(f"map            {cfg.mapping.output_dir or run.output_dir} (zones/, blocks/)")
    typer.echo(f"STAC           {run.collection}")
    typer.echo(f"area estimates {run.areas_dir / 'areas.csv'}")
    typer.echo(f"OSM gaps       {run.gaps_dir / 'gaps.parquet'} ({run.metrics.get('gap_polygons', 0):.0f} polygons)")
    typer.echo(f"took           {run.seconds:.0f} s")
    if not run.complete:
        missing = sum(n for k, n in run.statuses.items() if k not in ("done", "skipped"))
        raise LulcError(
            f"the map is INCOMPLETE: {missing} block(s) without imagery or failed (see {run.output_dir}/status); "
            "their zone mosaics are tagged LULC_COMPLETE=false — fix the cause and run again to resume"
        )


@app.command("compile")
def compile_cmd(
    output: Path = typer.Option(Path("mapping.yaml"), "--output", "-o", help="IR YAML to write."),
    config: Path = CONFIG_OPTION,
    image: str | None = typer.Option(None, "--image", help="Project image, pinned (default: env LULC_IMAGE)."),
) -> None:
    """Compile the mapping pipeline `lulc-mapping` to KFP IR YAML.

    Example: lulc map compile -o mapping.yaml -c conf/run.yaml --image ghcr.io/lulc/lulc:0.1.0
    """
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(load_run_config(config), output, image, which="mapping")
    typer.echo(f"pipeline written to {path}")


@app.command("submit")
def submit_cmd(
    host: str = typer.Option(..., "--host", envvar="KFP_HOST", help="KFP API URL, e.g. http://127.0.0.1:8888."),
    config: Path = CONFIG_OPTION,
    model: str | None = MODEL_OPTION,
    image: str | None = typer.Option(None, "--image", help="Project image, pinned (default: env LULC_IMAGE)."),
    experiment: str = typer.Option("lulc-mapping", "--experiment", help="Experiment name (created if missing)."),
    run_name: str | None = typer.Option(None, "--run-name", help="Run name."),
    namespace: str | None = typer.Option(None, "--namespace", help="Kubeflow profile namespace (multi-user)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run; non-zero exit unless it succeeded."),
) -> None:
    """Compile the mapping pipeline for the configuration and submit a run (token from env KFP_TOKEN).

    Example: lulc map submit --host http://127.0.0.1:8888 -c conf/run.yaml --model lulc-sample@production
    """
    import tempfile

    from pipelines.compile import compile_pipeline
    from pipelines.submit import submit

    cfg = map_config(config, model=model)
    params = {"model": cfg.mapping.model} if cfg.mapping.model else {}
    with tempfile.TemporaryDirectory(prefix="lulc-mapping-") as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "lulc-mapping.yaml", image, which="mapping")
        result = submit(
            package, host, experiment=experiment, run_name=run_name, params=params, namespace=namespace, wait=wait
        )
    typer.echo(f"run {result.run_id} in experiment {result.experiment_id}: {result.url}")
    if result.state:
        typer.echo(f"finished {result.state}")
