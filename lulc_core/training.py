"""Training: a Lightning module around the SegFormer, the Trainer set up from the run configuration, and the
model bundle written at the end.

The loss is a (class-weighted) cross-entropy that ignores class 0 (unknown), so unlabelled and nodata pixels
never teach the model; metrics are torchmetrics collections cloned per stage. Early stopping watches the
validation loss, the best checkpoint is kept and its weights go into the bundle, with the normalisation, the
label set, the hyper-parameters, the provenance and the run configuration. Lightning's logs, checkpoints, the
per-epoch history and a training-curve PNG all go under `out_dir`; given a tracker run, the curves also go to
MLflow or Neptune live.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from pydantic import BaseModel, ConfigDict, Field
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassJaccardIndex

from lulc_core.bundle import BundleMetadata, Normalisation, save_bundle
from lulc_core.data_parallel import GlooSyncBatchNorm, seed_stochastic_layers
from lulc_core.datamodule import LulcDataModule
from lulc_core.dataset import NormalisationStats, num_classes_of
from lulc_core.errors import ConfigError, InputError
from lulc_core.labels import LabelSet
from lulc_core.model import MIT_VARIANTS, build_segformer, logits_at_input_size
from lulc_core.raster import atomic_path
from lulc_core.split import TileSplit
from lulc_core.stats import DatasetStats

if TYPE_CHECKING:
    from lulc_core.config import RunConfig, TrainingConfig
    from lulc_core.registry.tracking import TrainingRun

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "adam")
SCHEDULERS = ("cosine", "plateau", "none")
RGB_BANDS = ("B04", "B03", "B02")


class EpochRecord(BaseModel):
    """Losses and metrics of one epoch (None where a split was not run)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(description="1-based epoch number.")
    train_loss: float | None = None
    val_loss: float | None = None
    train_miou: float | None = None
    val_miou: float | None = None
    val_accuracy: float | None = None
    learning_rate: float | None = None
    seconds: float | None = Field(default=None, description="Wall time of the epoch (training and validation).")


class TrainResult(BaseModel):
    """What `train` produced."""

    model_config = ConfigDict(extra="forbid")

    bundle_dir: Path = Field(description="The model bundle (best weights + lulc.json).")
    best_val_loss: float | None = Field(description="Best monitored loss (validation, else training).")
    epochs_run: int = Field(description="Epochs completed (early stopping and max_time may end sooner).")
    history: list[EpochRecord] = Field(default_factory=list, description="Per-epoch losses and metrics.")
    monitor: str = Field(default="val_loss", description="The loss early stopping and checkpoints watched.")
    best_epoch: int | None = Field(default=None, description="Epoch of the kept weights.")
    stopped_early: bool = Field(default=False, description="Early stopping ended the run.")
    best_checkpoint: Path | None = Field(default=None, description="Lightning checkpoint of the best epoch.")
    curve_png: Path | None = Field(default=None, description="Training-curve plot.")
    wall_time_s: float = Field(default=0.0, description="Wall time of fitting in seconds.")
    train_chips: int = Field(default=0, description="Training chips per epoch.")
    val_chips: int = Field(default=0, description="Validation chips.")
    world_size: int = Field(default=1, description="Training processes (devices x nodes).")
    global_rank: int = Field(default=0, description="This process's rank (only rank 0 writes the bundle).")
    resumed_from: Path | None = Field(default=None, description="Checkpoint the run resumed from.")
    last_checkpoint: Path | None = Field(default=None, description="Full-state checkpoint of the last epoch.")


# ---------------------------------------------------------------------------------------------------- task


class SegmentationTask(L.LightningModule):
    """Semantic segmentation of LULC classes with a SegFormer; class 0 (unknown) is never a target."""

    def __init__(
        self,
        *,
        num_channels: int,
        num_classes: int,
        variant: str = "b0",
        pretrained: str | None = None,
        rgb_channels: list[int] | None = None,
        class_weights: list[float] | None = None,
        label_smoothing: float = 0.0,
        optimizer: str = "adamw",
        learning_rate: float = 6e-4,
        weight_decay: float = 0.01,
        scheduler: str = "cosine",
        max_epochs: int = 10,
        monitor: str = "val_loss",
        plateau_patience: int = 2,
    ) -> None:
        """Build the model, loss and metrics.

        Args:
            num_channels: input bands.
            num_classes: classes including class 0 (unknown).
            variant: MiT encoder size "b0".."b5".
            pretrained: optional local path or hub id of a SegFormer checkpoint (encoder copied, RGB inflated).
            rgb_channels: indices of the red, green and blue bands (for the pretrained patch embedding).
            class_weights: per-class loss weights, class 0 first (its weight is forced to 0); None: equal.
            label_smoothing: cross-entropy label smoothing in [0, 1).
            optimizer: "adamw" or "adam".
            learning_rate: peak learning rate.
            weight_decay: weight decay.
            scheduler: "cosine" (annealed over `max_epochs`), "plateau" (halve on a flat `monitor`) or "none".
            max_epochs: epochs of the cosine schedule.
            monitor: the logged loss the plateau scheduler watches.
            plateau_patience: epochs without improvement before the plateau scheduler lowers the rate.
        """
        super().__init__()
        self.save_hyperparameters()
        if variant not in MIT_VARIANTS:
            raise ConfigError("model.variant", f"{variant!r} is not a MiT variant", f"choose from {list(MIT_VARIANTS)}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError("training.optimizer", f"{optimizer!r} is not supported", f"choose from {OPTIMIZERS}")
        if scheduler not in SCHEDULERS:
            raise ConfigError("training.scheduler", f"{scheduler!r} is not supported", f"choose from {SCHEDULERS}")
        if not 0 <= label_smoothing < 1:
            raise ConfigError("training.label_smoothing", f"{label_smoothing} is outside [0, 1)")
        if num_classes < 2:
            raise ConfigError("labels.label_set", "at least one class besides unknown is needed")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(
                "stats.class_weights",
                f"{len(class_weights)} weights for {num_classes} classes",
                "recompute the statistics with the run's label set",
            )
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        """The SegFormer (random init, or the pretrained encoder)."""
        hp: Any = self.hparams
        self.model = build_segformer(
            hp.variant, hp.num_channels, hp.num_classes, hp.pretrained, rgb_channels=hp.rgb_channels
        )
        # dropout and drop-path masks drawn per chip from its seed: the same whichever DDP rank the chip is on
        self.noise = seed_stochastic_layers(self.model)

    def configure_losses(self) -> None:
        """Weighted cross-entropy; class 0 gets weight 0 and is the ignore index (also excluded from smoothing)."""
        hp: Any = self.hparams
        weights = torch.ones(hp.num_classes) if hp.class_weights is None else torch.tensor(hp.class_weights)
        weights = weights.float().clone()
        if not torch.all(torch.isfinite(weights)) or torch.any(weights < 0):
            raise ConfigError("stats.class_weights", "weights must be finite and non-negative")
        weights[0] = 0.0
        if not torch.any(weights > 0):
            raise ConfigError("stats.class_weights", "every class weight is 0", "recompute the statistics")
        self.criterion = torch.nn.CrossEntropyLoss(
            weight=weights, ignore_index=0, label_smoothing=float(hp.label_smoothing)
        )

    def configure_metrics(self) -> None:
        """mIoU, pixel accuracy and macro F1 over classes 1..N, one collection per stage."""
        n = int(self.hparams["num_classes"])
        metrics = MetricCollection(
            {
                "miou": MulticlassJaccardIndex(n, ignore_index=0, average="macro"),
                "accuracy": MulticlassAccuracy(n, ignore_index=0, average="micro"),
                "f1": MulticlassF1Score(n, ignore_index=0, average="macro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        # the epoch loss: weighted cross-entropy over all labelled pixels of the epoch (all ranks), whatever the
        # batching, so one process and N DDP processes pick the same best epoch and stop at the same one
        self.train_loss = MeanMetric()
        self.val_loss = MeanMetric()
        self.test_loss = MeanMetric()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (batch, classes, H, W) at the input size."""
        return logits_at_input_size(self.model, image)

    def loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over labelled pixels; 0 (with a gradient path) when a batch has none.

        The weighted mean of one process; in DDP training the normaliser is the weight total of every rank's
        batch (see :meth:`_ddp_loss`), so the averaged gradient is that of the whole batch.
        """
        if not torch.any(self._pixel_weight(mask) > 0):
            return logits.sum() * 0.0
        return self.criterion(logits, mask)

    def _pixel_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """The loss normaliser of a batch: the class weights of its pixels summed (class 0 weighs nothing)."""
        weight = self.criterion.weight
        assert weight is not None
        return weight[mask].sum().detach()

    def _ddp_loss(self, loss: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """`loss` (this rank's weighted mean over `local` pixel weight) scaled so that its mean over DDP ranks is the
        weighted mean over all ranks' pixels."""
        total = local.clone()
        torch.distributed.all_reduce(total)
        return loss * (float(self.trainer.world_size) * local / total.clamp_min(1e-12))

    @staticmethod
    def predict_classes(logits: torch.Tensor) -> torch.Tensor:
        """Most likely class among 1..N (class 0 is never predicted)."""
        return logits[:, 1:].argmax(dim=1) + 1

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        with self.noise.batch(batch.get("seed") if stage == "train" else None):
            logits = self(image)
        loss = self.loss(logits, mask)
        weight = self._pixel_weight(mask)
        distributed = stage == "train" and self._trainer is not None and self.trainer.world_size > 1
        metrics = getattr(self, f"{stage}_metrics")
        metrics.update(self.predict_classes(logits.detach()), mask)
        epoch_loss = getattr(self, f"{stage}_loss")
        epoch_loss.update(loss.detach(), weight)
        bs = image.shape[0]
        # torchmetrics (the loss mean and the metric collections) sync across DDP ranks when they compute
        self.log(f"{stage}_loss", epoch_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=bs)
        return self._ddp_loss(loss, weight) if distributed else loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        cls = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        opt = cls(self.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
        if hp.scheduler == "cosine":
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, hp.max_epochs), eta_min=hp.learning_rate * 0.01
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=0.5, patience=max(0, hp.plateau_patience)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": hp.monitor}}
        return opt


class HistoryCallback(Callback):
    """Collects per-epoch losses, metrics and times from the logged values (kept in checkpoints for resuming)."""

    def __init__(self) -> None:
        self.history: list[EpochRecord] = []
        self._lr: float | None = None
        self._started = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"history": [h.model_dump() for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [EpochRecord.model_validate(h) for h in state_dict.get("history", [])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = trainer.callback_metrics

        def value(key: str) -> float | None:
            v = m.get(key)
            return None if v is None else float(v)

        lr = self._lr
        self.history.append(
            EpochRecord(
                epoch=trainer.current_epoch + 1,
                train_loss=value("train_loss"),
                val_loss=value("val_loss"),
                train_miou=value("train_miou"),
                val_miou=value("val_miou"),
                val_accuracy=value("val_accuracy"),
                learning_rate=lr,
                seconds=round(time.perf_counter() - self._started, 3),
            )
        )


class EpochSeedCallback(Callback):
    """Reseeds torch before every training batch from (seed, epoch, batch, rank), so dropout and drop-path draw the
    same numbers whether the run was resumed from a checkpoint or not, whatever else consumed random numbers in
    between (the data order and augmentation: :class:`ShardedSampler`)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        epoch = self.seed * 1_000_003 + trainer.current_epoch
        torch.manual_seed(((epoch * 100_003 + idx) * 1_009 + trainer.global_rank) % (2**63))


class SigtermCheckpoint(Callback):
    """On SIGTERM (a preempted pod), write the full training state to `path` before the process ends."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.path)  # collective under DDP: every rank got the broadcast SIGTERM
            log.warning("SIGTERM: training state saved to %s; resume with --resume", self.path)


# --------------------------------------------------------------------------------------------------- train


@contextmanager
def _graceful_sigterm() -> Iterator[None]:
    """Let Lightning own SIGTERM while fitting: it finishes the batch, then :class:`SigtermCheckpoint` saves the
    state (a caller's handler that raises at once, such as the CLI's, would interrupt mid-step)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _launched_externally() -> bool:
    """Whether torchrun (a TrainJob/PyTorchJob node) started this process with its rank in the environment."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("WORLD_SIZE" in os.environ and "RANK" in os.environ)


def _check_devices(tc: TrainingConfig, on_gpu: bool) -> None:
    """Refuse, before anything starts, more devices than this node has and several nodes without a launcher."""
    if on_gpu:
        have, what = torch.cuda.device_count(), "CUDA devices"
    else:
        have = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        what = "CPU cores (one training process each)"
    if tc.devices > have:
        raise ConfigError(
            "training.devices", f"{tc.devices} devices were requested but this node has {have} {what}", f"use <= {have}"
        )
    if tc.num_nodes > 1 and not _launched_externally():
        raise ConfigError(
            "training.num_nodes",
            f"{tc.num_nodes} nodes need a launcher that starts this command on each of them",
            "run the pipeline with training.launcher 'trainjob' or 'pytorchjob' (or start it under torchrun)",
        )


def _hardware(tc: TrainingConfig) -> tuple[str, str, bool | str]:
    """Accelerator, precision and determinism setting for Lightning, with clear errors for impossible asks."""
    if tc.accelerator == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "training.accelerator", "'gpu' was requested but no CUDA device is available", "use 'cpu' or 'auto'"
        )
    on_gpu = tc.accelerator == "gpu" or (tc.accelerator == "auto" and torch.cuda.is_available())
    if tc.strategy == "fsdp" and not on_gpu:
        raise ConfigError("training.strategy", "'fsdp' needs GPUs and none is used", "use 'ddp' on CPU")
    _check_devices(tc, on_gpu)
    precision = tc.precision
    if not on_gpu and precision == "16-mixed":
        log.warning("precision 16-mixed needs a GPU; training in 32-true on CPU")
        precision = "32-true"
    # Some CUDA kernels (e.g. bilinear upsampling backward) have no deterministic variant: warn there.
    deterministic: bool | str = (True if not on_gpu else "warn") if tc.deterministic else False
    accelerator = "gpu" if on_gpu else ("cpu" if tc.accelerator != "auto" else "auto")
    if accelerator == "auto" and not torch.cuda.is_available():
        accelerator = "cpu"
    return accelerator, precision, deterministic


def rgb_channels(bands: list[str]) -> list[int] | None:
    """Indices of B04, B03, B02 (red, green, blue) when all are among the bands."""
    return [bands.index(b) for b in RGB_BANDS] if all(b in bands for b in RGB_BANDS) else None


def check_stats(stats: NormalisationStats, cfg: RunConfig, label_set: LabelSet) -> None:
    """The statistics must describe the run's bands and label set."""
    if list(stats.band_names) != list(cfg.imagery.bands):
        raise InputError(
            "stats.band_names",
            f"statistics are for bands {list(stats.band_names)} but the run uses {cfg.imagery.bands}",
            "recompute the statistics (`lulc data stats`) with the run's imagery.bands",
        )
    if num_classes_of(stats) != label_set.num_classes:
        raise InputError(
            "stats.class_names",
            f"statistics have classes {list(stats.class_names)} but label set {label_set.name!r} has {label_set.names}",
            "recompute the statistics with the run's label set",
        )
    bad = [i for i, s in enumerate(stats.std) if not (math.isfinite(s) and math.isfinite(stats.mean[i]))]
    if bad:
        raise InputError("stats", f"mean/std of bands {[stats.band_names[i] for i in bad]} are not finite")


def train(
    cfg: RunConfig,
    imagery_dir: Path,
    labels_dir: Path,
    stats: DatasetStats,
    split: TileSplit,
    out_dir: Path,
    progress: bool = True,
    tracking: TrainingRun | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train a SegFormer on the split's training tiles and write the model bundle to `out_dir/bundle`.

    With `training.devices` x `training.num_nodes` > 1 every process runs this function (Lightning's DDP); the
    data are sharded by rank, metrics are synced, and only global rank 0 writes the bundle and the reports.

    Args:
        cfg: the run configuration (data, model and training sections are used; all of it is saved).
        imagery_dir: directory of ``<tile_id>.tif`` band rasters.
        labels_dir: directory of ``<tile_id>.tif`` class rasters.
        stats: dataset statistics (band names, mean/std, class names and weights).
        split: tile ids of train/val/test; val drives early stopping (training loss when val is empty).
        out_dir: receives ``bundle/``, ``checkpoints/``, ``logs/``, ``training_curve.png``, ``train_result.json``.
        progress: show Lightning's progress bar.
        tracking: a tracker run (`lulc_core.registry.tracking.training_run`) that also receives the curves live;
            its id and URL go into the bundle's provenance, so registration makes the version from that run.
        resume: continue from `last.ckpt` in the checkpoint directory (weights, optimizer, scheduler, early
            stopping, history) when it exists; otherwise the checkpoint directory is cleared first.
    """
    from lulc_core.lineage import build_provenance

    if not split.train:
        raise InputError("split.train", "the split has no training tiles", "split more tiles (`lulc model split`)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_set = LabelSet.from_yaml(cfg.labels.label_set)
    check_stats(stats, cfg, label_set)
    tc = cfg.training
    accelerator, precision, deterministic = _hardware(tc)
    L.seed_everything(tc.seed, workers=True, verbose=False)

    dm = LulcDataModule.from_config(cfg, imagery_dir, labels_dir, stats, split, on_gpu=accelerator == "gpu")
    dm.setup("fit")
    has_val = dm.has_validation()
    monitor = "val_loss" if has_val else "train_loss"
    if not has_val:
        log.warning("no validation chips: early stopping and checkpoints watch the training loss")
    weights = list(stats.class_weights) if tc.class_weights else None
    task = SegmentationTask(
        num_channels=len(stats.band_names),
        num_classes=label_set.num_classes,
        variant=cfg.model.variant,
        pretrained=cfg.model.pretrained,
        rgb_channels=rgb_channels(list(stats.band_names)),
        class_weights=weights or None,
        label_smoothing=tc.label_smoothing,
        optimizer=tc.optimizer,
        learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay,
        scheduler=tc.scheduler,
        max_epochs=tc.epochs,
        monitor=monitor,
        plateau_patience=max(0, tc.early_stopping_patience // 2 - 1),
    )

    ckpt_dir = Path(tc.checkpoint_dir) if tc.checkpoint_dir else out_dir / "checkpoints"
    last_ckpt = ckpt_dir / "last.ckpt"
    resume_from = last_ckpt if resume and last_ckpt.is_file() else None
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    elif resume:
        log.info("--resume: no checkpoint in %s yet, starting from the first epoch", ckpt_dir)
    elif getattr(rank_zero_only, "rank", 0) == 0:  # every DDP rank runs this function; only one clears the directory
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    # Full state (optimizer, scheduler, callbacks) in best.ckpt and in last.ckpt (every epoch), to resume from.
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_top_k=1)
    every_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False)
    early = EarlyStopping(monitor=monitor, mode="min", patience=tc.early_stopping_patience)
    history = HistoryCallback()
    world = tc.devices * tc.num_nodes
    previous_deterministic = torch.are_deterministic_algorithms_enabled()  # the Trainer sets it globally
    n_batches = max(1, math.ceil(len(dm.datasets["train"]) / tc.batch_size))
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*too few.*log.*")
            warnings.filterwarnings("ignore", message=".*length of `DataLoader`.*zero.*")
            trainer = L.Trainer(
                default_root_dir=out_dir,
                logger=[CSVLogger(save_dir=out_dir, name="logs"), *([tracking.logger()] if tracking else [])],
                callbacks=[
                    checkpoint,
                    every_epoch,
                    early,
                    history,
                    EpochSeedCallback(tc.seed),
                    SigtermCheckpoint(last_ckpt),
                ],
                max_epochs=tc.epochs,
                max_time=timedelta(minutes=tc.max_time_minutes) if tc.max_time_minutes else None,
                accelerator=accelerator,
                devices=tc.devices,
                num_nodes=tc.num_nodes,
                strategy=tc.strategy,
                # BatchNorm over the global batch: torch's SyncBatchNorm on GPUs, all-reduces on gloo (CPU)
                sync_batchnorm=world > 1 and accelerator == "gpu",
                plugins=[GlooSyncBatchNorm()] if world > 1 and accelerator != "gpu" else None,
                precision=precision,  # type: ignore[arg-type]
                deterministic=deterministic,  # type: ignore[arg-type]
                enable_progress_bar=progress,
                enable_model_summary=progress,
                log_every_n_steps=min(50, n_batches),
                num_sanity_val_steps=0,
                limit_val_batches=None if has_val else 0,
            )
            with _graceful_sigterm():
                trainer.fit(task, datamodule=dm, ckpt_path=resume_from)
    except SIGTERMException:
        raise SystemExit(143) from None  # 128 + SIGTERM: the step failed (and is retried), its state is saved
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
    wall = time.perf_counter() - started
    if not trainer.is_global_zero:  # rank 0 writes the bundle and the reports
        return TrainResult(
            bundle_dir=out_dir / "bundle",
            best_val_loss=None,
            epochs_run=len(history.history),
            world_size=world,
            global_rank=trainer.global_rank,
        )

    best_path = Path(checkpoint.best_model_path) if checkpoint.best_model_path else None
    best_epoch: int | None = None
    if best_path is not None and best_path.is_file():
        state = torch.load(best_path, map_location="cpu", weights_only=False)  # our own full-state checkpoint
        task.load_state_dict(state["state_dict"])
        best_epoch = int(state.get("epoch", -1)) + 1
    else:
        log.warning("no checkpoint was written; the bundle holds the last weights")
    best_score = checkpoint.best_model_score
    best_loss = None if best_score is None else float(best_score)

    hyperparameters = {
        **tc.model_dump(mode="json"),
        "chip_size": cfg.data.chip_size,
        "min_labelled_share": cfg.data.min_labelled_share,
        "class_weight_values": task.criterion.weight.tolist() if task.criterion.weight is not None else None,
        "monitor": monitor,
        "best_epoch": best_epoch,
        "epochs_run": len(history.history),
        "best_loss": best_loss,
        "split_seed": split.seed,
        "train_tiles": len(split.train),
        "val_tiles": len(split.val),
    }
    metadata = BundleMetadata(
        variant=cfg.model.variant,
        bands=list(stats.band_names),
        resolution=cfg.imagery.resolution,
        chip_size=cfg.data.chip_size,
        normalisation=Normalisation(mean=list(stats.mean), std=list(stats.std)),
        label_set=label_set,
        hyperparameters=hyperparameters,
        provenance=build_provenance(cfg, label_set, run_url=tracking.url if tracking else None).model_copy(
            update={"tracking_run": tracking.run_id if tracking else None}
        ),
        run_config=cfg.model_dump(mode="json"),
    )
    task.model.cpu().eval()
    bundle_dir = save_bundle(out_dir / "bundle", task.model, metadata)
    curve = plot_training_curve(history.history, out_dir / "training_curve.png")
    result = TrainResult(
        bundle_dir=bundle_dir,
        best_val_loss=best_loss,
        epochs_run=len(history.history),
        history=history.history,
        monitor=monitor,
        best_epoch=best_epoch,
        stopped_early=early.stopped_epoch > 0,
        best_checkpoint=best_path,
        curve_png=curve,
        wall_time_s=round(wall, 2),
        train_chips=len(dm.datasets["train"]),
        val_chips=len(dm.datasets["val"]) if has_val else 0,
        world_size=world,
        resumed_from=resume_from,
        last_checkpoint=last_ckpt if last_ckpt.is_file() else None,
    )
    with atomic_path(out_dir / "train_result.json") as tmp:
        tmp.write_text(result.model_dump_json(indent=2))
    log.info(
        "trained %d epochs in %.1f s (best %s %.4f at epoch %s); bundle at %s",
        result.epochs_run,
        wall,
        monitor,
        best_loss if best_loss is not None else float("nan"),
        best_epoch,
        bundle_dir,
    )
    return result


def plot_training_curve(history: list[EpochRecord], path: Path) -> Path | None:
    """Loss and mIoU per epoch as a PNG (None when there is no epoch to plot)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ys = [getattr(h, key) for h in history]
        if any(y is not None for y in ys):
            ax_loss.plot(epochs, [math.nan if y is None else y for y in ys], marker="o", label=label)
    for key, label in (("train_miou", "train"), ("val_miou", "validation")):
        ys = [getattr(h, key) for h in history]
        if any(y is not None for y in ys):
            ax_iou.plot(epochs, [math.nan if y is None else y for y in ys], marker="o", label=label)
    ax_loss.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    ax_iou.set(title="mIoU", xlabel="epoch", ylabel="mIoU", ylim=(0, 1))
    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def training_key(cfg: RunConfig, *files: Path) -> str:
    """Fingerprint of what a training run depends on (data, model and training settings, the statistics and split
    files): the pipeline keeps a run's checkpoints under it, so a retried train step resumes its own run only."""
    import hashlib
    import json

    sections = cfg.model_dump(mode="json", include={"area", "imagery", "labels", "data", "model", "training"})
    for volatile in ("checkpoint_dir", "launcher_timeout_minutes", "max_time_minutes"):
        sections["training"].pop(volatile, None)
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True).encode())
    for path in files:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:24]
