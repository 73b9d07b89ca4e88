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
    output_dir: Path | None = None,
) -> RunConfig:
    """The run configuration with the command-line overrides applied (validated like the file)."""
    from components._runtime import parse_time_frames

    over: dict[str, Any] = {"mapping": {}}
    if aoi is not None:
        over["area"] = {"aoi": str(aoi.resolve()), "bbox": None}
    if time_frames:
        over.setdefault("area", {})["time_frames"] = parse_time_frames(time_frames)
    if model:
        over["mapping"]["model"] = model
    if block_px:
        over["mapping"]["block_px"] = block_px
    if output_dir is not None:
        over["mapping"]["output_dir"] = str(output_dir.resolve())
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
