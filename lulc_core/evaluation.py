"""Evaluation of a model bundle on labelled tiles: overall accuracy, mIoU, per-class IoU/precision/recall/F1,
and the confusion matrix (JSON and a row-normalised picture).

Each tile goes through the model whole (padded to a multiple of 32; tiles larger than `max_block` pixels a side
in non-overlapping blocks, to bound the attention memory), so no sliding-window blending blurs the numbers.
Class 0 (unknown) is never predicted and pixels labelled 0 or without imagery are ignored. The numbers are
torchmetrics' and are merged into the bundle's lulc.json `metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rasterio.windows import Window
from tqdm import tqdm

from lulc_core.bundle import BundleMetadata, ModelBundle
from lulc_core.dataset import open_tile, read_tile_window
from lulc_core.errors import InputError
from lulc_core.raster import atomic_path

log = logging.getLogger(__name__)

MAX_BLOCK = 1024
"""Largest tile edge (pixels) sent through the model at once; larger tiles go in blocks of this size."""


class ClassMetrics(BaseModel):
    """Scores of one class; None where undefined (no reference pixels and no predictions)."""

    model_config = ConfigDict(extra="forbid")

    iou: float | None = Field(description="Intersection over union.")
    precision: float | None = Field(description="Correct share of the pixels predicted as the class.")
    recall: float | None = Field(description="Found share of the class's reference pixels.")
    f1: float | None = Field(description="Harmonic mean of precision and recall.")
    support: int = Field(description="Reference pixels of the class.")


class EvaluationReport(BaseModel):
    """Test-split metrics of a model (classes 1..N; class 0 is ignored)."""

    model_config = ConfigDict(extra="forbid")

    overall_accuracy: float = Field(description="Correct share of all labelled pixels.")
    miou: float = Field(description="Mean IoU over classes present in the reference or the prediction.")
    per_class: dict[str, ClassMetrics] = Field(description="Scores per class name.")
    confusion_matrix: list[list[int]] = Field(description="Pixel counts, rows = reference, columns = prediction.")
    class_names: list[str] = Field(description="Row/column names of the confusion matrix (classes 1..N).")
    pixels: int = Field(default=0, description="Labelled pixels evaluated.")
    tile_ids: list[str] = Field(default_factory=list, description="The evaluated tiles.")
    test_set: str | None = Field(default=None, description="Fingerprint of the tile ids (comparable runs).")


class SegmentationScorer:
    """Accumulates predictions and references (class values 0..N-1) and reports the metrics.

    Pixels whose reference is 0 are ignored; predictions of 0 count as wrong.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 2:
            raise InputError("label_set", "at least one class besides unknown is needed")
        n = num_classes
        self.num_classes = n
        # torchmetrics (and with it transformers) only where scores are computed: the report models above are what
        # registration and the gate read, and every pipeline step would otherwise pay seconds to import it
        from torchmetrics import MetricCollection
        from torchmetrics.classification import (
            MulticlassAccuracy,
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassJaccardIndex,
            MulticlassPrecision,
            MulticlassRecall,
        )

        self.metrics = MetricCollection(
            {
                "confusion": MulticlassConfusionMatrix(n, ignore_index=0),
                "miou": MulticlassJaccardIndex(n, ignore_index=0, average="macro"),
                "iou": MulticlassJaccardIndex(n, ignore_index=0, average="none"),
                "precision": MulticlassPrecision(n, ignore_index=0, average="none"),
                "recall": MulticlassRecall(n, ignore_index=0, average="none"),
                "f1": MulticlassF1Score(n, ignore_index=0, average="none"),
                "accuracy": MulticlassAccuracy(n, ignore_index=0, average="micro"),
            },
            compute_groups=False,
        )
        self.pixels = 0

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add predicted and reference class values of the same shape."""
        if preds.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(preds.shape)} != reference shape {tuple(target.shape)}")
        p, t = preds.reshape(-1).long(), target.reshape(-1).long()
        self.pixels += int((t > 0).sum())
        self.metrics.update(p, t)

    def report(self, class_names: Sequence[str], tile_ids: Sequence[str] = ()) -> EvaluationReport:
        """The metrics for classes 1..N; `class_names` names all N+1 values ('unknown' first)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        if self.pixels == 0:
            raise InputError(
                "tile_ids", "the evaluated tiles have no labelled pixels", "evaluate on tiles with labels (class > 0)"
            )
        values = self.metrics.compute()
        cm = values["confusion"].long()
        per_class: dict[str, ClassMetrics] = {}
        for c in range(1, self.num_classes):
            support, predicted = int(cm[c].sum()), int(cm[:, c].sum())
            defined = support > 0 or predicted > 0
            per_class[class_names[c]] = ClassMetrics(
                iou=float(values["iou"][c]) if defined else None,
                precision=float(values["precision"][c]) if predicted > 0 else None,
                recall=float(values["recall"][c]) if support > 0 else None,
                f1=float(values["f1"][c]) if defined else None,
                support=support,
            )
        from lulc_core.lineage import fingerprint_test_set

        return EvaluationReport(
            overall_accuracy=float(values["accuracy"]),
            miou=float(values["miou"]),
            per_class=per_class,
            confusion_matrix=cm[1:, 1:].tolist(),
            class_names=list(class_names[1:]),
            pixels=self.pixels,
            tile_ids=list(tile_ids),
            test_set=fingerprint_test_set(tile_ids) if tile_ids else None,
        )


@dataclass
class _BundleStats:
    """The normalisation a bundle was trained with, in the shape the dataset readers expect."""

    band_names: list[str]
    mean: list[float]
    std: list[float]
    class_names: list[str]


def read_tile(
    meta: BundleMetadata, imagery_dir: Path, labels_dir: Path, tile_id: str, window: Window | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A tile (or a window of it) as the bundle sees it: normalised bands (C, h, w) and labels (h, w)."""
    names = meta.label_set.names
    stats = _BundleStats(list(meta.bands), meta.normalisation.mean, meta.normalisation.std, names)
    tile = open_tile(tile_id, Path(imagery_dir), Path(labels_dir), stats)
    return read_tile_window(tile, window or Window(0, 0, tile.width, tile.height), stats, len(names))


def predict_tile(
    model: torch.nn.Module, image: np.ndarray, max_block: int = MAX_BLOCK, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class values (H, W) uint8 for a normalised image (C, H, W): whole blocks padded to a multiple of 32."""
    from lulc_core.model import logits_at_input_size  # transformers: imported where a model runs

    return classes_by_block(lambda x: logits_at_input_size(model, x), image, max_block, device)  # type: ignore[arg-type]


def classes_by_block(
    logits: Callable[[torch.Tensor], torch.Tensor],
    image: np.ndarray,
    max_block: int = MAX_BLOCK,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Class values (H, W) uint8 of a normalised image (C, H, W), never 0 (unknown), from `logits`: a padded block
    (1, C, h, w) -> logits at input size (1, classes, h, w). Blocks of at most `max_block`, padded to 32."""
    _, h, w = image.shape
    out = np.zeros((h, w), dtype=np.uint8)
    for row in range(0, h, max_block):
        for col in range(0, w, max_block):
            block = image[:, row : row + max_block, col : col + max_block]
            bh, bw = block.shape[1:]
            ph, pw = -bh % 32, -bw % 32
            x = torch.from_numpy(np.pad(block, ((0, 0), (0, ph), (0, pw))))[None].to(device)
            with torch.inference_mode():
                scores = logits(x)
            classes = scores[0, 1:].argmax(dim=0) + 1
            out[row : row + bh, col : col + bw] = classes[:bh, :bw].cpu().numpy().astype(np.uint8)
    return out


def evaluate(
    bundle_dir: Path, imagery_dir: Path, labels_dir: Path, tile_ids: list[str], out_dir: Path
) -> EvaluationReport:
    """Score the bundle's model on `tile_ids`; write metrics.json and confusion_matrix.png to `out_dir`.

    The metrics are also merged into the bundle's lulc.json (`metrics`), where the registry reads them.

    Args:
        bundle_dir: a model bundle (weights + lulc.json).
        imagery_dir: directory of ``<tile_id>.tif`` band rasters with the bundle's bands.
        labels_dir: directory of ``<tile_id>.tif`` class rasters on the same grids.
        tile_ids: the tiles to evaluate (the split's test tiles).
        out_dir: where metrics.json and confusion_matrix.png go.
    """
    if not tile_ids:
        raise InputError("tile_ids", "no tiles to evaluate", "give the test tiles of the split (at least one)")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bundle = ModelBundle.load(bundle_dir, device=device)
    names = bundle.metadata.label_set.names
    scorer = SegmentationScorer(len(names))
    for tile_id in tqdm(tile_ids, desc="evaluation", unit="tile", disable=len(tile_ids) < 2):
        image, labels = read_tile(bundle.metadata, imagery_dir, labels_dir, tile_id)
        preds = predict_tile(bundle.model, image, device=device)
        scorer.update(torch.from_numpy(preds), torch.from_numpy(labels))
    report = scorer.report(names, tile_ids)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(report.model_dump_json(indent=2))
    plot_confusion_matrix(report.confusion_matrix, report.class_names, out / "confusion_matrix.png")
    bundle.metadata.metrics.update(report.model_dump(mode="json"))
    bundle.write_metadata()
    log.info(
        "evaluated %d tiles (%d labelled pixels): overall accuracy %.3f, mIoU %.3f",
        len(tile_ids),
        report.pixels,
        report.overall_accuracy,
        report.miou,
    )
    return report


def plot_confusion_matrix(matrix: list[list[int]], class_names: list[str], path: Path) -> Path:
    """A row-normalised confusion matrix (share of each reference class) with counts, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(matrix, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.9 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=class_names)
    ax.set(xlabel="predicted", ylabel="reference", title="Confusion matrix (row-normalised)")
    for i in range(n):
        for j in range(n):
            colour = "white" if share[i, j] > 0.5 else "black"
            text: Any = f"{share[i, j]:.2f}\n{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
