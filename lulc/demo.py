"""The demo (`make demo`): the training pipeline with kfp.local on the embedded default, then the KServe
predictor started on 127.0.0.1 from the registered production model, asked for a GeoTIFF and a PNG preview of
an area the model has not seen in training.

The same pieces a cluster uses: `pipelines.local.run_local` runs the pipeline function, the registry resolves
`<model>@production`, and `python -m serving` is the container's entry point.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path

import requests
from pydantic import BaseModel, Field

from lulc_core.comparison import Agreement, Panel, agreement, on_grid, plot_comparison, reference_mosaic
from lulc_core.config import RunConfig
from lulc_core.errors import ConfigError, UpstreamError
from lulc_core.geo import BBox, Tile
from lulc_core.grid import read_tiles
from lulc_core.labels import LabelSet
from lulc_core.split import TileSplit

log = logging.getLogger(__name__)


class DemoResult(BaseModel):
    """Where the demo's outputs are, and the test-split numbers."""

    run_dir: Path = Field(description="The pipeline run's root: one folder per task.")
    tiles: Path
    imagery: Path
    labels: Path
    stats: Path
    split: Path
    bundle: Path
    evaluation: Path
    report: Path
    model_ref: str
    storage_uri: str | None
    promoted: bool
    gate_reasons: list[str]
    metrics: dict[str, float]
    predict_bbox: BBox
    prediction: Path
    preview: Path
    comparison: Path
    agreement: Agreement
    test_tiles: int
    pipeline_seconds: float
    serving_seconds: float


def _post(url: str, body: Mapping[str, object], target: Path) -> Path:
    response = requests.post(url, json=body, timeout=600)
    if response.status_code != 200:
        raise UpstreamError("predictor", f"{url} answered {response.status_code}: {response.text[:500]}")
    target.write_bytes(response.content)
    return target


def held_back_areas(tiles: Sequence[Tile], test_ids: Sequence[str]) -> list[list[Tile]]:
    """The held-back test tiles grouped into areas one request can cover: same CRS and time frame."""
    chosen = sorted((t for t in tiles if t.id in set(test_ids)), key=lambda t: (t.crs, t.start, t.end, t.id))
    return [list(group) for _, group in groupby(chosen, key=lambda t: (t.crs, t.start, t.end))]


def area_request(group: Sequence[Tile]) -> tuple[BBox, dict[str, object]]:
    """The EPSG:4326 box over a group of tiles (one pixel inside their outline) and the /segment/ body for it."""
    first = group[0]
    inset = first.resolution
    bounds = (
        min(t.bounds[0] for t in group) + inset,
        min(t.bounds[1] for t in group) + inset,
        max(t.bounds[2] for t in group) - inset,
        max(t.bounds[3] for t in group) - inset,
    )
    bbox = first.model_copy(update={"bounds": bounds}).bbox_wgs84
    body: dict[str, object] = {"area_coords": list(bbox.as_tuple()), "start_date": str(first.start)}
    body |= {"end_date": str(first.end), "grid": "utm"}  # the reference's own grid: no second resampling
    return bbox, body


def run_demo(cfg: RunConfig, config_path: Path, out_dir: Path | None = None) -> DemoResult:
    """Pipeline (kfp.local) -> registry (production alias) -> KServe predictor over the whole held-back test area
    -> prediction beside the reference labels (one comparison PNG) and their agreement."""
    from lulc_core.registry import build_registry
    from pipelines.local import run_local
    from serving.process import local_server

    run = run_local(cfg)
    run_dir = run.bundle_dir.parents[1]
    tiles_file = run_dir / "area-grid" / "tiles" / "tiles.geojson"
    split_file = run_dir / "statistics" / "split"
    labels_dir = run_dir / "gather-2" / "merged"
    groups = held_back_areas(read_tiles(tiles_file), TileSplit.load(split_file).test)
    if not groups:
        raise ConfigError("data.test_fraction", "the split holds no test tile", "raise it or add tiles to the area")
    registration = run.registration
    ref = f"{registration['name']}@production" if registration.get("passed") else str(registration["ref"])
    bundle = build_registry(cfg.registry, cfg.work_dir).resolve(ref)
    label_set = LabelSet.from_yaml(cfg.labels.label_set)

    out = (out_dir or cfg.work_dir / "demo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    panels: list[Panel] = []
    with local_server(bundle, config_path) as (url, _pid):
        for i, group in enumerate(groups):
            bbox, body = area_request(group)
            prediction = _post(f"{url}/segment/", body, out / f"prediction_{i}.tif")
            if i == 0:
                first_bbox, first_prediction = bbox, prediction
                preview = _post(f"{url}/segment/preview", body, out / "prediction_0.png")
            reference = reference_mosaic([labels_dir / f"{t.id}.tif" for t in group])
            title = f"{len(group)} test tile(s), {group[0].crs}, {group[0].start}..{group[0].end}"
            panels.append(Panel(title, on_grid(prediction, reference), reference.data[0]))
    result = agreement(panels, label_set)
    comparison = plot_comparison(panels, label_set, result, out / "comparison_prediction_vs_reference.png")
    return DemoResult(
        run_dir=run_dir,
        tiles=tiles_file,
        imagery=run_dir / "gather" / "merged",
        labels=labels_dir,
        stats=run_dir / "statistics" / "stats",
        split=split_file,
        bundle=run.bundle_dir,
        evaluation=run_dir / "evaluate" / "evaluation",
        report=run_dir / "evaluate" / "report",
        model_ref=str(registration["ref"]),
        storage_uri=registration.get("storage_uri"),
        promoted=bool(registration.get("passed")),
        gate_reasons=list(registration.get("reasons", [])),
        metrics=run.metrics,
        predict_bbox=first_bbox,
        prediction=first_prediction,
        preview=preview,
        comparison=comparison,
        agreement=result,
        test_tiles=sum(len(g) for g in groups),
        pipeline_seconds=run.seconds,
        serving_seconds=round(time.perf_counter() - started, 1),
    )


def summary(result: DemoResult) -> str:
    """The demo's closing report: every output's path and the test-split metrics."""
    m = result.metrics
    lines = [
        "",
        "lulc demo finished: Kubeflow pipeline (kfp.local) -> MLflow registry -> KServe predictor",
        f"  pipeline run    {result.run_dir}  ({result.pipeline_seconds:.0f} s)",
        f"  tiles           {result.tiles}",
        f"  imagery         {result.imagery}",
        f"  labels          {result.labels}",
        f"  statistics      {result.stats}  (split {result.split})",
        f"  model bundle    {result.bundle}",
        f"  evaluation      {result.evaluation}  (metrics.json, confusion_matrix.png; report {result.report})",
        f"  registered as   {result.model_ref}  ({'promoted to production' if result.promoted else 'not promoted'})",
        f"  storage URI     {result.storage_uri}",
        f"  prediction      {result.prediction}  (bbox {', '.join(f'{v:.4f}' for v in result.predict_bbox.as_tuple())})",
        f"  preview         {result.preview}  (served by the KServe predictor in {result.serving_seconds:.0f} s)",
        f"  comparison      {result.comparison}  (prediction | reference | agreement, {result.test_tiles} test tiles)",
        "",
        f"agreement {result.agreement.agreement:.3f} with the reference labels over the held-back test area "
        f"({result.agreement.pixels:,} labelled pixels)",
        *(f"  {name:<15} {share:.3f}" for name, share in result.agreement.per_class.items()),
        "",
        "test-split metrics",
        f"  overall accuracy  {m.get('overall_accuracy', float('nan')):.3f}",
        f"  mIoU              {m.get('miou', float('nan')):.3f}",
    ]
    lines += [f"  IoU {k.removeprefix('iou_'):<15} {v:.3f}" for k, v in sorted(m.items()) if k.startswith("iou_")]
    lines += ["", "gate: " + "; ".join(result.gate_reasons)]
    return "\n".join(lines)
