"""Training: the loss ignores class 0, settings are validated, a short CPU run writes a loadable bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lulc_core.bundle import ModelBundle
from lulc_core.config import RunConfig, load_run_config
from lulc_core.errors import ConfigError, InputError
from lulc_core.labels import LabelSet
from lulc_core.split import TileSplit, split_tiles
from lulc_core.training import SegmentationTask, TrainResult, _hardware, train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

REPO = Path(__file__).resolve().parents[1]


def run_config(tiles, **training: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "synthetic",
            "area": {
                "name": "synthetic",
                "bbox": [9.0, 54.0, 9.1, 54.1],
                "time_frames": [{"start": "2023-06-01", "end": "2023-06-30"}],
            },
            "imagery": {"store": "local", "local_dir": str(tiles.imagery_dir), "bands": tiles.bands},
            "labels": {"label_set": str(tiles.label_set_path), "osm_file": str(tiles.root / "osm.geojson")},
            "data": {"chip_size": 64},
            "training": {"epochs": 2, "batch_size": 4, "accelerator": "cpu", **training},
        }
    )


# ---------------------------------------------------------------------------------------------------- loss


@pytest.fixture(scope="module")
def task() -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(num_channels=4, num_classes=5, class_weights=[9.0, 1.0, 2.0, 0.5, 1.0])


def test_loss_ignores_class_0(task: SegmentationTask) -> None:
    assert task.criterion.weight is not None and task.criterion.weight[0] == 0
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 8, 8, generator=gen)
    mask = torch.randint(0, 5, (2, 8, 8), generator=gen)
    loss = task.loss(logits, mask)
    # Whatever the model says at unknown pixels, the loss does not change.
    changed = torch.where((mask == 0)[:, None], torch.randn_like(logits) * 50, logits)
    torch.testing.assert_close(task.loss(changed, mask), loss)
    # It equals the weighted mean over labelled pixels only.
    w = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.0])
    lab = mask > 0
    per_pixel = torch.nn.functional.cross_entropy(logits, mask, reduction="none")
    expected = (per_pixel[lab] * w[mask[lab]]).sum() / w[mask[lab]].sum()
    torch.testing.assert_close(loss, expected)
    # A batch without labels gives zero loss and a usable gradient.
    empty = logits.clone().requires_grad_(True)
    zero = task.loss(empty, torch.zeros_like(mask))
    zero.backward()
    assert zero.item() == 0 and empty.grad is not None and torch.all(empty.grad == 0)


def test_label_smoothing_keeps_class_0_ignored() -> None:
    smooth = SegmentationTask(num_channels=4, num_classes=5, label_smoothing=0.2)
    plain = SegmentationTask(num_channels=4, num_classes=5)
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 5, 6, 6, generator=gen)
    mask = torch.randint(0, 5, (1, 6, 6), generator=gen)
    assert smooth.loss(logits, mask) != plain.loss(logits, mask)
    changed = torch.where((mask == 0)[:, None], torch.randn_like(logits) * 50, logits)
    torch.testing.assert_close(smooth.loss(changed, mask), smooth.loss(logits, mask))
    # The predicted class is never 0.
    logits[:, 0] = 100
    assert torch.all(SegmentationTask.predict_classes(logits) > 0)


def test_bad_settings() -> None:
    with pytest.raises(ConfigError, match="choose from") as info:
        SegmentationTask(num_channels=4, num_classes=5, optimizer="sgd")
    assert info.value.field == "training.optimizer"
    with pytest.raises(ConfigError, match="scheduler"):
        SegmentationTask(num_channels=4, num_classes=5, scheduler="step")
    with pytest.raises(ConfigError, match="3 weights for 5 classes"):
        SegmentationTask(num_channels=4, num_classes=5, class_weights=[0, 1, 1])
    with pytest.raises(ConfigError, match="every class weight is 0"):
        SegmentationTask(num_channels=4, num_classes=3, class_weights=[1, 0, 0])


@pytest.mark.parametrize(("scheduler", "kind"), [("cosine", "CosineAnnealingLR"), ("plateau", "ReduceLROnPlateau")])
def test_optimizer_and_scheduler(scheduler: str, kind: str) -> None:
    t = SegmentationTask(num_channels=2, num_classes=3, optimizer="adam", scheduler=scheduler, learning_rate=1e-3)
    conf = t.configure_optimizers()
    assert isinstance(conf["optimizer"], torch.optim.Adam)
    assert type(conf["lr_scheduler"]["scheduler"]).__name__ == kind
    plain = SegmentationTask(num_channels=2, num_classes=3, scheduler="none").configure_optimizers()
    assert isinstance(plain, torch.optim.AdamW)


def test_hardware_settings() -> None:
    cfg = RunConfig.model_validate(
        {
            "area": {"bbox": [9, 54, 9.1, 54.1], "time_frames": [{"start": "2023-06-01", "end": "2023-06-30"}]},
            "imagery": {"local_dir": "x"},
            "labels": {"label_set": "x.yaml", "osm_file": "x.geojson"},
            "training": {"accelerator": "cpu", "precision": "16-mixed"},
        }
    )
    assert _hardware(cfg.training) == ("cpu", "32-true", True)
    if not torch.cuda.is_available():
        cfg.training.accelerator = "gpu"
        with pytest.raises(ConfigError, match="no CUDA device"):
            _hardware(cfg.training)


# ------------------------------------------------------------------------------------------------ training


def test_short_run_writes_a_loadable_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synthetic_training_tiles
) -> None:
    s = synthetic_training_tiles
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    cfg = run_config(s)
    split = split_tiles(s.tiles, 0.25, 0.25, seed=3)
    out = tmp_path / "train"
    result = train(cfg, s.imagery_dir, s.labels_dir, s.stats, split, out, progress=False)

    assert result.epochs_run == 2 and len(result.history) == 2
    assert result.monitor == "val_loss" and result.best_val_loss is not None
    assert all(h.val_loss is not None and h.train_miou is not None for h in result.history)
    first, second = (h.train_loss for h in result.history)
    assert first is not None and second is not None and second < first
    assert result.best_val_loss == min(h.val_loss for h in result.history if h.val_loss is not None)
    assert result.curve_png is not None and result.curve_png.stat().st_size > 1000
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()
    assert list(cwd.iterdir()) == [], "nothing (e.g. lightning_logs/) may be written to the working directory"
    assert list((out / "logs").rglob("metrics.csv"))
    assert TrainResult.model_validate_json((out / "train_result.json").read_text()) == result

    bundle = ModelBundle.load(result.bundle_dir)
    meta = bundle.metadata
    assert meta.variant == "b0" and meta.chip_size == 64 and meta.resolution == 10.0
    assert meta.bands == s.stats.band_names == s.bands
    assert meta.normalisation.mean == s.stats.mean and meta.normalisation.std == s.stats.std
    assert meta.label_set == LabelSet.from_yaml(s.label_set_path)
    assert meta.run_config == cfg.model_dump(mode="json")
    assert RunConfig.model_validate(meta.run_config).fingerprint() == cfg.fingerprint()
    assert meta.provenance.config_hash == cfg.fingerprint()
    assert (meta.provenance.label_set or "").startswith("v3:")
    assert meta.hyperparameters["epochs"] == 2 and meta.hyperparameters["best_epoch"] == result.best_epoch
    assert meta.hyperparameters["class_weight_values"][0] == 0
    # The bundle holds the best checkpoint's weights.
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in bundle.model.state_dict().items():
        torch.testing.assert_close(value, state[f"model.{key}"], msg=key)
    with torch.no_grad():
        logits = bundle.model(pixel_values=torch.zeros(1, 4, 64, 64)).logits
    assert logits.shape == (1, 7, 16, 16)
    assert not torch.are_deterministic_algorithms_enabled()


def test_training_is_deterministic_and_runs_without_validation(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    cfg = run_config(s, epochs=1, batch_size=2, scheduler="plateau", label_smoothing=0.1)
    split = TileSplit(train=s.ids[:4], val=[], test=s.ids[4:6])
    a = train(cfg, s.imagery_dir, s.labels_dir, s.stats, split, tmp_path / "a", progress=False)
    b = train(cfg, s.imagery_dir, s.labels_dir, s.stats, split, tmp_path / "b", progress=False)
    assert a.monitor == "train_loss" and a.history[0].val_loss is None and a.val_chips == 0
    assert a.history[0].train_loss == b.history[0].train_loss
    wa = ModelBundle.load(a.bundle_dir).model.state_dict()
    wb = ModelBundle.load(b.bundle_dir).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_statistics_must_match_the_run(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    split = TileSplit(train=s.ids[:2], val=[], test=[])
    cfg = run_config(s)
    cfg.imagery.bands = ["B02", "B03", "B04", "B11"]
    with pytest.raises(InputError, match="statistics are for bands") as info:
        train(cfg, s.imagery_dir, s.labels_dir, s.stats, split, tmp_path, progress=False)
    assert info.value.field == "stats.band_names"
    other = s.stats.model_copy(update={"class_names": ["unknown", "a", "b"]})
    with pytest.raises(InputError, match="label set"):
        train(run_config(s), s.imagery_dir, s.labels_dir, other, split, tmp_path, progress=False)
    with pytest.raises(InputError, match="no training tiles"):
        train(run_config(s), s.imagery_dir, s.labels_dir, s.stats, TileSplit(train=[]), tmp_path, progress=False)
    assert not (tmp_path / "bundle").exists()


# ----------------------------------------------------------------------------------- the real sample (small)


def test_small_real_run_on_the_sample(tmp_path: Path) -> None:
    """Six tiles of the bundled sample through imagery, labels, statistics, one epoch and evaluation."""
    from lulc_core.evaluation import evaluate
    from lulc_core.grid import build_grid
    from lulc_core.imagery import build_imagery_store, fetch_tiles
    from lulc_core.labelling import label_tiles
    from lulc_core.osm import build_osm_source
    from lulc_core.stats import compute_stats

    cfg = load_run_config(REPO / "conf" / "run.yaml", {"training": {"epochs": 1}, "work_dir": str(tmp_path)})
    tiles = build_grid(cfg.area, cfg.imagery.resolution)
    by_zone: dict[str, list] = {}
    for t in tiles:
        by_zone.setdefault(t.crs, []).append(t)
    picked = [t for group in by_zone.values() for t in sorted(group, key=lambda t: t.id)[:2]]
    label_set = LabelSet.from_yaml(cfg.labels.label_set)
    fetch_tiles(build_imagery_store(cfg.imagery), picked, cfg.imagery.bands, tmp_path / "imagery")
    label_tiles(build_osm_source(cfg.labels), label_set, picked, tmp_path / "labels")
    split = split_tiles(picked, 0.2, 0.2, seed=cfg.data.split_seed)
    assert split.train and split.val and split.test
    stats = compute_stats(tmp_path / "imagery", tmp_path / "labels", label_set, tile_ids=split.train)
    result = train(cfg, tmp_path / "imagery", tmp_path / "labels", stats, split, tmp_path / "training", progress=False)
    assert result.epochs_run == 1 and result.train_chips > 0
    report = evaluate(result.bundle_dir, tmp_path / "imagery", tmp_path / "labels", split.test, tmp_path / "evaluation")
    meta = json.loads((result.bundle_dir / "lulc.json").read_text())
    assert meta["metrics"]["miou"] == report.miou and 0 <= report.miou <= 1
    assert meta["bands"] == cfg.imagery.bands and len(meta["normalisation"]["mean"]) == 15


# ------------------------------------------------------------------------------------------------------ CLI


def test_model_cli_split_train_evaluate_export(tmp_path: Path, synthetic_training_tiles) -> None:
    import yaml
    from typer.testing import CliRunner

    from lulc.cli import app
    from lulc_core.grid import write_tiles

    s = synthetic_training_tiles
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run_config(s, epochs=1).model_dump(mode="json")))
    tiles = write_tiles(s.tiles, tmp_path / "tiles.geojson")
    stats = s.stats.save(tmp_path / "stats.json")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["-q", "model", *args])
        assert result.exit_code == 0, result.output + repr(result.exception)
        return result.output

    assert "test tiles" in run("split", "-c", str(config), "-t", str(tiles), "-o", str(tmp_path / "split.json"))
    split = TileSplit.load(tmp_path / "split.json")
    assert split == split_tiles(s.tiles, 0.2, 0.2, seed=7)
    common = ["-i", str(s.imagery_dir), "-l", str(s.labels_dir)]
    out = run("train", "-c", str(config), *common, "-s", str(stats), "--split", str(tmp_path / "split.json"),
              "-o", str(tmp_path / "training"), "--epochs", "1", "--no-progress")  # fmt: skip
    assert "epochs run      1" in out
    bundle = tmp_path / "training" / "bundle"
    out = run("evaluate", str(bundle), *common, "--split", str(tmp_path / "split.json"), "-o", str(tmp_path / "ev"))
    assert "mIoU" in out and (tmp_path / "ev" / "metrics.json").is_file()
    assert "verified against torch" in run("export-onnx", str(bundle))
    assert (bundle / "model.onnx").is_file()

    missing = runner.invoke(app, ["model", "train", "-c", str(config), *common, "-s", str(stats), "-o", str(tmp_path)])
    assert missing.exit_code != 0 and isinstance(missing.exception, InputError)
    assert "--split" in str(missing.exception)
