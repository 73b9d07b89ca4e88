"""The main job: area grid -> imagery -> labels -> statistics -> training -> evaluation -> registration ->
prediction, chained in one process for `lulc run` and `lulc demo`.

Each step is the same lulc_core function the Kubeflow components call, reading and writing plain files under
one output directory, so a step can be re-run alone and a re-run resumes (completed tiles are not fetched again).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel, Field

from lulc_core.config import RunConfig
from lulc_core.errors import InputError
from lulc_core.geo import BBox, Tile

log = logging.getLogger(__name__)


class JobOutputs(BaseModel):
    """Where every output of the main job is, and the headline numbers."""

    out_dir: Path
    tiles: Path
    tiles_preview: Path
    imagery_dir: Path
    labels_dir: Path
    stats: Path
    split: Path
    bundle_dir: Path
    evaluation_dir: Path
    metrics: dict[str, float] = Field(description="Test-split overall accuracy and mIoU.")
    per_class_iou: dict[str, float | None] = Field(default_factory=dict)
    model_ref: str = Field(description="Registry reference of the registered version.")
    promoted: bool = Field(description="Whether the quality gate promoted it to production.")
    gate_reasons: list[str] = Field(default_factory=list)
    prediction: Path | None = None
    preview: Path | None = None
    predict_bbox: BBox | None = None
    seconds: dict[str, float] = Field(default_factory=dict, description="Wall time per step.")


@contextmanager
def _step(name: str, seconds: dict[str, float]) -> Iterator[None]:
    log.info("step %s ...", name)
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 2)
    log.info("step %s done in %.1f s", name, seconds[name])


def test_area(tiles: list[Tile], test_ids: list[str]) -> tuple[BBox, Tile]:
    """A prediction area over the first test tile (unseen in training), shrunk a little inside it."""
    chosen = next((t for t in tiles if t.id in set(test_ids)), tiles[0])
    b = chosen.bbox_wgs84
    dx, dy = (b.east - b.west) * 0.1, (b.north - b.south) * 0.1
    return BBox(west=b.west + dx, south=b.south + dy, east=b.east - dx, north=b.north - dy), chosen


def run_main_job(cfg: RunConfig, out_dir: Path | None = None, predict_bbox: BBox | None = None) -> JobOutputs:
    """Run every step of the platform on `cfg` and return where the outputs are."""
    from lulc_core.corine import check_corine_config
    from lulc_core.imagery.corine import build_corine_source

    check_corine_config(cfg)  # before the heavy imports: a misconfigured run is refused at once
    from lulc_core.bundle import ModelBundle
    from lulc_core.evaluation import evaluate
    from lulc_core.grid import build_grid, plot_tiles, write_tiles
    from lulc_core.imagery import REPORT_FILE, build_imagery_store, fetch_tiles, tiles_with_imagery
    from lulc_core.inference import PredictOptions, Predictor, write_prediction, write_preview_png
    from lulc_core.labelling import build_label_source, label_tiles
    from lulc_core.labels import LabelSet
    from lulc_core.lineage import fingerprint_test_set
    from lulc_core.quantization import quantize_if_configured
    from lulc_core.registry import RegistrationInfo, build_registry, tracked
    from lulc_core.registry.gate import apply_gate
    from lulc_core.split import split_tiles
    from lulc_core.stats import compute_stats
    from lulc_core.training import train

    out = (out_dir or cfg.work_dir / "runs" / cfg.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = (cfg.imagery.cache_dir or cfg.work_dir / "cache").resolve()
    seconds: dict[str, float] = {}
    (out / "run_config.json").write_text(cfg.model_dump_json(indent=2))
    label_set = LabelSet.from_yaml(cfg.labels.label_set)

    with _step("grid", seconds):
        tiles = build_grid(cfg.area, cfg.imagery.resolution)
        write_tiles(tiles, out / "tiles.geojson")
        plot_tiles(tiles, out / "tiles.png")
    with _step("imagery", seconds):
        store = build_imagery_store(cfg.imagery, cache_dir=cache / "imagery")
        fetch_tiles(
            store,
            tiles,
            cfg.imagery.bands,
            out / "imagery",
            concurrency=cfg.imagery.concurrency,
            min_valid_share=cfg.imagery.min_valid_share,
            report_path=out / REPORT_FILE,
        )
        tiles = tiles_with_imagery(tiles, out / "imagery")
        if not tiles:
            raise InputError(
                "imagery.min_valid_share",
                f"no tile has at least {cfg.imagery.min_valid_share:g} valid pixels (see imagery_report.json)",
                "widen area.time_frames, raise the store's cloud limit or lower imagery.min_valid_share",
            )
    with _step("labels", seconds):
        source = build_label_source(cfg, label_set, cache_dir=cache / "osm")
        label_tiles(
            source, label_set, tiles, out / "labels", cache_dir=cache / "labels", concurrency=cfg.labels.concurrency
        )
    with _step("statistics", seconds):
        split = split_tiles(tiles, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.split_seed)
        (out / "split.json").write_text(split.model_dump_json(indent=2))
        stats = compute_stats(out / "imagery", out / "labels", label_set, tile_ids=split.train)
        stats.save(out / "stats.json")
    registry = build_registry(cfg.registry, cfg.work_dir)
    with _step("training", seconds), tracked(cfg, registry) as run:
        result = train(cfg, out / "imagery", out / "labels", stats, split, out / "training", tracking=run)
    with _step("evaluation", seconds):
        report = evaluate(result.bundle_dir, out / "imagery", out / "labels", split.test, out / "evaluation")
    with _step("registration", seconds):
        quantize_if_configured(cfg.registry, result.bundle_dir, out / "imagery", out / "labels", split)
        info = RegistrationInfo(  # the bundle's provenance (with its tracking run)
            run_name=cfg.name, test_set=fingerprint_test_set(split.test), export_onnx=cfg.registry.export_onnx
        )
        ref = registry.register(result.bundle_dir, info)
        decision = apply_gate(registry, ref, cfg.registry.gate)
    outputs = JobOutputs(
        out_dir=out,
        tiles=out / "tiles.geojson",
        tiles_preview=out / "tiles.png",
        imagery_dir=out / "imagery",
        labels_dir=out / "labels",
        stats=out / "stats.json",
        split=out / "split.json",
        bundle_dir=result.bundle_dir,
        evaluation_dir=out / "evaluation",
        metrics={"overall_accuracy": report.overall_accuracy, "miou": report.miou},
        per_class_iou={name: m.iou for name, m in report.per_class.items()},
        model_ref=str(ref),
        promoted=decision.passed,
        gate_reasons=decision.reasons,
        seconds=seconds,
    )
    with _step("prediction", seconds):
        bbox, test_tile = test_area(tiles, split.test)
        start, end = test_tile.start, test_tile.end
        if predict_bbox is not None:
            bbox, start, end = predict_bbox, cfg.area.time_frames[0].start, cfg.area.time_frames[0].end
        bundle = ModelBundle.load(registry.resolve(ref))
        corine = None if cfg.labels.source == "corine" else build_corine_source(cfg, cache / "osm")  # source has it
        predictor = Predictor(bundle, store, source, cfg.serving, corine=corine)
        prediction = predictor.predict(bbox, start, end, PredictOptions())
        outputs.prediction = write_prediction(prediction, out / "prediction.tif")
        outputs.preview = write_preview_png(prediction, out / "prediction.png")
        outputs.predict_bbox = bbox
    outputs.seconds = seconds
    (out / "job.json").write_text(outputs.model_dump_json(indent=2))
    return outputs
