"""Evaluation: numbers against a hand-computed confusion matrix, whole-tile scoring, reports and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lulc_core.bundle import BundleMetadata, ModelBundle, Normalisation, save_bundle
from lulc_core.errors import InputError, NotFoundError
from lulc_core.evaluation import EvaluationReport, SegmentationScorer, evaluate, predict_tile
from lulc_core.labels import LabelSet
from lulc_core.model import build_segformer
from lulc_core.raster import read_geotiff

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NAMES = ["unknown", "a", "b", "c", "d"]


def test_scores_match_a_hand_computed_confusion_matrix() -> None:
    #             ignored                                    ignored
    target = [0, 1, 1, 2, 2, 2, 3, 3, 0, 1]
    preds = [2, 1, 2, 2, 2, 1, 3, 1, 3, 1]
    scorer = SegmentationScorer(len(NAMES))
    # Two updates (as two tiles) accumulate.
    scorer.update(torch.tensor(preds[:5]), torch.tensor(target[:5]))
    scorer.update(torch.tensor(preds[5:]).reshape(1, 5), torch.tensor(target[5:]).reshape(1, 5))
    report = scorer.report(NAMES, ["tile-1", "tile-2"])
    # Reference rows a, b, c, d; predicted columns a, b, c, d (class 0 ignored).
    assert report.confusion_matrix == [[2, 1, 0, 0], [1, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert report.class_names == ["a", "b", "c", "d"]
    assert report.pixels == 8
    assert report.overall_accuracy == pytest.approx(5 / 8)
    a, b, c, d = (report.per_class[n] for n in "abcd")
    # a: tp 2, fp 2 (b->a, c->a), fn 1 (a->b)
    assert (a.iou, a.precision, a.recall, a.support) == pytest.approx((2 / 5, 2 / 4, 2 / 3, 3))
    assert a.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # b: tp 2, fp 1, fn 1
    assert (b.iou, b.precision, b.recall, b.f1, b.support) == pytest.approx((2 / 4, 2 / 3, 2 / 3, 2 / 3, 3))
    # c: tp 1, fp 0, fn 1
    assert (c.iou, c.precision, c.recall, c.f1, c.support) == pytest.approx((1 / 2, 1.0, 1 / 2, 2 / 3, 2))
    # d: absent from reference and prediction -> undefined, and left out of the mean.
    assert (d.iou, d.precision, d.recall, d.f1, d.support) == (None, None, None, None, 0)
    assert report.miou == pytest.approx((2 / 5 + 2 / 4 + 1 / 2) / 3)
    assert report.tile_ids == ["tile-1", "tile-2"] and report.test_set


def test_class_predicted_but_absent_from_reference() -> None:
    scorer = SegmentationScorer(3)
    scorer.update(torch.tensor([1, 2, 2]), torch.tensor([1, 1, 1]))
    report = scorer.report(["unknown", "x", "y"])
    y = report.per_class["y"]
    assert (y.iou, y.precision, y.recall, y.support) == (0.0, 0.0, None, 0)
    assert report.miou == pytest.approx((1 / 3 + 0) / 2)


def test_scorer_bad_inputs() -> None:
    scorer = SegmentationScorer(3)
    with pytest.raises(ValueError, match="shape"):
        scorer.update(torch.zeros(3), torch.zeros(4))
    scorer.update(torch.tensor([1, 2]), torch.tensor([0, 0]))
    with pytest.raises(InputError, match="no labelled pixels"):
        scorer.report(["unknown", "x", "y"])
    with pytest.raises(InputError):
        SegmentationScorer(1)


# ------------------------------------------------------------------------------------------- on tiles


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_training_tiles) -> Path:
    """An untrained b0 bundle with the synthetic tiles' bands and normalisation (evaluation needs no skill)."""
    s = synthetic_training_tiles
    torch.manual_seed(0)
    label_set = LabelSet.from_yaml(s.label_set_path)
    model = build_segformer("b0", len(s.bands), label_set.num_classes)
    meta = BundleMetadata(
        variant="b0",
        bands=s.bands,
        resolution=10.0,
        chip_size=64,
        normalisation=Normalisation(mean=s.stats.mean, std=s.stats.std),
        label_set=label_set,
    )
    return save_bundle(tmp_path_factory.mktemp("eval") / "bundle", model, meta)


def test_evaluate_tiles_and_store_metrics(tmp_path: Path, random_bundle: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    ids = ["t0_0", "t1_2", "t2_3"]
    report = evaluate(random_bundle, s.imagery_dir, s.labels_dir, ids, tmp_path / "eval")

    # Reference counts by hand: labelled pixels where the imagery is valid (t0_0 has a nodata corner).
    support = np.zeros(7, dtype=np.int64)
    for tile_id in ids:
        labels = read_geotiff(s.labels_dir / f"{tile_id}.tif").data[0]
        valid = read_geotiff(s.imagery_dir / f"{tile_id}.tif").valid_mask
        support += np.bincount(labels[valid], minlength=7)
    assert report.pixels == int(support[1:].sum())
    assert [m.support for m in report.per_class.values()] == support[1:].tolist()
    cm = np.asarray(report.confusion_matrix)
    assert cm.sum() == report.pixels and cm.sum(axis=1).tolist() == support[1:].tolist()
    assert report.overall_accuracy == pytest.approx(np.trace(cm) / cm.sum())
    assert report.class_names == LabelSet.from_yaml(s.label_set_path).names[1:]

    # The same numbers from the per-tile predictions, independently.
    bundle = ModelBundle.load(random_bundle)
    scorer = SegmentationScorer(7)
    from rasterio.windows import Window

    from lulc_core.dataset import open_tile, read_tile_window
    from lulc_core.evaluation import _BundleStats

    meta = bundle.metadata
    stats = _BundleStats(meta.bands, meta.normalisation.mean, meta.normalisation.std, meta.label_set.names)
    for tile_id in ids:
        tile = open_tile(tile_id, s.imagery_dir, s.labels_dir, stats)
        image, labels = read_tile_window(tile, Window(0, 0, 64, 64), stats, 7)
        pred = predict_tile(bundle.model, image)
        assert pred.shape == (64, 64) and pred.min() >= 1
        scorer.update(torch.from_numpy(pred), torch.from_numpy(labels))
    assert scorer.report(meta.label_set.names, ids).confusion_matrix == report.confusion_matrix

    # Files: metrics.json, the picture, and the metrics merged into lulc.json.
    saved = EvaluationReport.model_validate_json((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == report
    png = tmp_path / "eval" / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((random_bundle / "lulc.json").read_text())["metrics"]
    assert stored["miou"] == report.miou and stored["overall_accuracy"] == report.overall_accuracy
    assert stored["confusion_matrix"] == report.confusion_matrix and stored["tile_ids"] == ids
    assert ModelBundle.read_metadata(random_bundle).metrics["per_class"]["forest"]["support"] == int(support[2])


def test_large_tiles_go_in_blocks(random_bundle: Path) -> None:
    model = ModelBundle.load(random_bundle).model
    image = np.random.default_rng(0).normal(size=(4, 70, 50)).astype(np.float32)
    whole = predict_tile(model, image)
    blocks = predict_tile(model, image, max_block=32)
    assert whole.shape == blocks.shape == (70, 50)
    assert whole.min() >= 1 and blocks.min() >= 1 and whole.max() <= 6


def test_evaluate_bad_inputs(tmp_path: Path, random_bundle: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    with pytest.raises(InputError, match="no tiles"):
        evaluate(random_bundle, s.imagery_dir, s.labels_dir, [], tmp_path)
    with pytest.raises(NotFoundError, match="not a model bundle"):
        evaluate(tmp_path, s.imagery_dir, s.labels_dir, ["t0_0"], tmp_path)
    with pytest.raises(InputError, match="no label raster") as info:
        evaluate(random_bundle, s.imagery_dir, tmp_path, ["t0_0"], tmp_path)
    assert info.value.field == "labels_dir"
    meta = ModelBundle.read_metadata(random_bundle)
    other = tmp_path / "other"
    model = build_segformer("b0", 4, meta.label_set.num_classes)
    save_bundle(other, model, meta.model_copy(update={"bands": ["B02", "B03", "B04", "B12"]}))
    with pytest.raises(InputError, match=r"missing \['B12'\]"):
        evaluate(other, s.imagery_dir, s.labels_dir, ["t0_0"], tmp_path)
    assert not (tmp_path / "metrics.json").exists()
