"""Step 6 — evaluate: test-split metrics into the bundle, for the KFP UI and for the quality gate."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components._image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    config: str,
    bundle: Input[Model],
    imagery: Input[Dataset],
    labels: Input[Dataset],
    split: Input[Dataset],
    evaluated: Output[Model],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
) -> float:
    """Evaluate on the test tiles (validation tiles when the split has no test tile); returns the mIoU.

    Args:
        config: This step's slice of the RunConfig, as JSON (`lulc_core.steps`).
        bundle: The trained bundle (read only).
        imagery: Every tile's imagery.
        labels: Every tile's labels.
        split: TileSplit JSON.
        evaluated: The bundle with the test metrics in lulc.json (and an accepted int8 model: lulc_core.quantization).
        evaluation: metrics.json and confusion_matrix.png.
        metrics: mIoU, overall accuracy and per-class IoU.
        confusion: The confusion matrix.
        report: Numbers, confusion matrix and sample predictions.
    """
    from pathlib import Path

    from components._report import evaluation_html, sample_previews
    from components._runtime import copy_dir, load_config
    from lulc_core.evaluation import evaluate as run_evaluation
    from lulc_core.quantization import quantize_if_configured
    from lulc_core.split import TileSplit

    cfg = load_config(config)
    tile_split = TileSplit.model_validate_json(Path(split.path).read_text())
    test_ids = tile_split.test or tile_split.val
    bundle_dir = copy_dir(bundle.path, evaluated.path)
    out = Path(evaluation.path)
    rep = run_evaluation(bundle_dir, Path(imagery.path), Path(labels.path), test_ids, out)
    quantize_if_configured(cfg.registry, bundle_dir, Path(imagery.path), Path(labels.path), tile_split)
    metrics.log_metric("miou", float(rep.miou))
    metrics.log_metric("overall_accuracy", float(rep.overall_accuracy))
    for name, m in rep.per_class.items():
        if m.iou is not None:
            metrics.log_metric(f"iou_{name}", float(m.iou))
    confusion.log_confusion_matrix(list(rep.class_names), [list(map(int, row)) for row in rep.confusion_matrix])
    evaluation.metadata.update({"test_tiles": len(test_ids), "miou": float(rep.miou)})
    previews = sample_previews(bundle_dir, Path(imagery.path), test_ids, out / "previews")
    Path(report.path).write_text(evaluation_html(rep, out / "confusion_matrix.png", previews))
    return float(rep.miou)
