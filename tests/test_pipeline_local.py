"""The whole training pipeline with kfp.local (SubprocessRunner, this environment) on the bundled sample area.

One run (1 epoch, 2 shards, ~2 min on 2 cores) is shared by the assertions on its artifacts: tiles, imagery and label
rasters per shard and gathered, statistics and split, the model bundle, metrics, the registered version and
the skipped deploy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lulc_core.config import RunConfig, load_run_config
from lulc_core.errors import InputError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[RunConfig, Any, Path]:
    from pipelines.local import run_local

    work = tmp_path_factory.mktemp("kfp-local")
    # one epoch and two shards (not four: each shard is two more step processes, and two already prove the split,
    # the per-shard rasters and the gather); with int8 (registry.onnx_quantization): the evaluate step quantises,
    # register records it (1 epoch: looser gate)
    int8 = {"onnx_quantization": "int8", "int8_min_agreement": 0.97, "int8_max_miou_drop": 0.02}
    overrides = {"work_dir": str(work), "training": {"epochs": 1}, "pipeline": {"shards": 2}, "registry": int8}
    cfg = load_run_config(repo_root / "conf" / "run.yaml", overrides)
    run = run_local(cfg)
    run_dir = run.bundle_dir.parents[1]
    return cfg, run, run_dir


def test_tiles_and_rasters_per_shard_and_gathered(local_run: tuple[RunConfig, Any, Path]) -> None:
    from components._runtime import shard_count
    from lulc_core.grid import read_tiles
    from lulc_core.raster import read_geotiff

    cfg, run, run_dir = local_run
    assert run.pipeline_root == cfg.work_dir.resolve() / "kfp"
    tiles = read_tiles(run_dir / "area-grid" / "tiles" / "tiles.geojson")
    ids = {t.id for t in tiles}
    assert len(tiles) >= 6
    assert (run_dir / "area-grid" / "tiles" / "tiles.png").stat().st_size > 0
    assert "<img" in (run_dir / "area-grid" / "preview").read_text()
    shards = sorted(run_dir.glob("for-loop-*-iteration-*"))
    assert len(shards) == shard_count(len(tiles), cfg.pipeline.shards) > 1
    per_shard = [{p.stem for p in (s / "imagery" / "rasters").glob("*.tif")} for s in shards]
    assert set().union(*per_shard) == ids and sum(map(len, per_shard)) == len(ids)
    imagery = {p.stem: p for p in (run_dir / "gather" / "merged").glob("*.tif")}
    labels = {p.stem: p for p in (run_dir / "gather-2" / "merged").glob("*.tif")}
    assert set(imagery) == ids == set(labels)
    first = sorted(ids)[0]
    img, lab = read_geotiff(imagery[first]), read_geotiff(labels[first])
    assert img.band_names == cfg.imagery.bands and str(img.data.dtype) == "float32"
    assert lab.data.shape[0] == 1 and str(lab.data.dtype) == "uint8"
    assert (img.height, img.width) == (lab.height, lab.width) and img.transform == lab.transform


def test_statistics_and_split(local_run: tuple[RunConfig, Any, Path]) -> None:
    from lulc_core.grid import read_tiles
    from lulc_core.stats import DatasetStats

    cfg, _, run_dir = local_run
    stats = DatasetStats.load(run_dir / "statistics" / "stats")
    assert stats.band_names == cfg.imagery.bands and len(stats.mean) == len(stats.std) == len(cfg.imagery.bands)
    assert all(s > 0 for s in stats.std) and stats.class_weights[0] == 0
    split = json.loads((run_dir / "statistics" / "split").read_text())
    parts = [set(split[k]) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {t.id for t in read_tiles(run_dir / "area-grid" / "tiles" / "tiles.geojson")}
    assert "# Dataset statistics" in (run_dir / "statistics" / "report").read_text()


def test_bundle_metrics_and_reports(local_run: tuple[RunConfig, Any, Path]) -> None:
    from lulc_core.bundle import ModelBundle

    cfg, run, run_dir = local_run
    meta = ModelBundle.read_metadata(run.bundle_dir)
    assert meta.bands == cfg.imagery.bands and meta.variant == "b0"
    assert (run.bundle_dir / "model" / "model.safetensors").is_file()
    assert ModelBundle.read_metadata(run_dir / "train" / "bundle").variant == "b0"
    evaluation = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    assert 0 <= run.metrics["miou"] <= 1 and run.metrics["miou"] == pytest.approx(evaluation["miou"])
    assert run.metrics["overall_accuracy"] == pytest.approx(evaluation["overall_accuracy"])
    assert meta.metrics["miou"] == pytest.approx(evaluation["miou"])
    assert any(k.startswith("iou_") for k in run.metrics)
    output = json.loads((run_dir / "evaluate" / "executor_output.json").read_text())
    matrix = output["artifacts"]["confusion"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == evaluation["class_names"]
    assert [r["row"] for r in matrix["rows"]] == evaluation["confusion_matrix"]
    html = (run_dir / "evaluate" / "report").read_text()
    assert "Confusion matrix" in html and "Sample predictions" in html and html.count("data:image/png;base64") >= 2
    train_metrics = json.loads((run_dir / "train" / "executor_output.json").read_text())["artifacts"]["metrics"]
    assert train_metrics["artifacts"][0]["metadata"]["epochs_run"] == 1


def test_registered_version_and_gated_deploy(local_run: tuple[RunConfig, Any, Path]) -> None:
    from lulc_core.registry import build_registry

    cfg, run, run_dir = local_run
    reg = run.registration
    assert reg["ref"] == f"{cfg.registry.model_name}@1" and reg["backend"] == "mlflow" and reg["passed"] is True
    registry = build_registry(cfg.registry, cfg.work_dir)
    production = registry.get(f"{cfg.registry.model_name}@production")
    assert production.version == 1 and production.uri == reg["uri"]
    assert production.metrics["miou"] == pytest.approx(run.metrics["miou"])
    # the served default is onnxruntime: the register step exported model.onnx (registry.export_onnx: true)
    assert production.tags["lulc.onnx"] == "model.onnx"
    assert (registry.resolve(production.ref) / "model.onnx").is_file()
    # int8: quantised in the evaluate step (calibrated on training chips), its gate figures with the version
    assert 0.97 <= production.metrics["int8/agreement"] <= 1 and production.metrics["int8/miou_delta"] >= -0.02
    assert production.tags["lulc.int8"] == "model.int8.onnx"
    assert (registry.resolve(production.ref) / "model.int8.onnx").is_file()
    # the train step saw its slice of the configuration; the registered bundle records the whole one
    from lulc_core.bundle import ModelBundle

    registered = ModelBundle.read_metadata(registry.resolve(reg["ref"]))
    assert registered.run_config is not None and registered.run_config["area"] == cfg.model_dump(mode="json")["area"]
    assert registered.run_config["labels"]["osm_file"] == str(cfg.labels.osm_file)
    assert registered.provenance.area is not None and registered.provenance.area.startswith(cfg.area.name)
    # the train step logged its curves into the run the register step made the version from
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registry.tracking_uri)
    assert registered.provenance.tracking_run == production.run_id
    assert len(client.get_metric_history(str(production.run_id), "train_loss")) == 1  # epochs: 1
    assert "promoted to **production**" in (run_dir / "register" / "report").read_text()
    deploy = (run_dir / "deploy" / "report").read_text()
    assert "Deploy skipped (target 'local')" in deploy and f"{cfg.registry.model_name}@production" in deploy


def test_a_failing_step_is_a_clear_error(tmp_path: Path, repo_root: Path) -> None:
    from pipelines.local import LocalRunError, run_local

    overrides = {"work_dir": str(tmp_path), "area": {"aoi": str(tmp_path / "missing.geojson")}}
    cfg = load_run_config(repo_root / "conf" / "run.yaml", overrides)
    with pytest.raises(LocalRunError, match="area-grid"):
        run_local(cfg)
    with pytest.raises(InputError, match="deploy_target"):
        run_local(cfg, deploy_target="kserve")


def test_kfp_local_loop_parameter_bug_still_needs_the_workaround() -> None:
    """kfp.local 2.17 replaces task-output parameters passed into a ParallelFor by the loop item.

    pipelines.local.loop_parameter_fix puts them back; when this test fails, kfp fixed the bug and the
    workaround can go.
    """
    from kfp.local.orchestrator import task_spec_utils
    from kfp.pipeline_spec import pipeline_spec_pb2

    from pipelines.local import loop_parameter_fix

    spec = pipeline_spec_pb2.PipelineTaskSpec()
    spec.inputs.parameters["pipelinechannel--configure-Output"].task_output_parameter.producer_task = "configure"
    spec.inputs.parameters["pipelinechannel--configure-Output"].task_output_parameter.output_parameter_key = "Output"
    spec.parameter_iterator.item_input = "pipelinechannel--area-grid-Output-loop-item"
    spec.parameter_iterator.items.input_parameter = "pipelinechannel--area-grid-Output"
    broken = task_spec_utils.create_parameter_loop_iteration_task_spec(spec, 1, "for-loop-1")
    assert broken.inputs.parameters["pipelinechannel--configure-Output"].runtime_value.constant.number_value == 1
    with loop_parameter_fix():
        fixed = task_spec_utils.create_parameter_loop_iteration_task_spec(spec, 1, "for-loop-1")
    config_input = fixed.inputs.parameters["pipelinechannel--configure-Output"]
    assert config_input.task_output_parameter.producer_task == "configure"
    assert (
        fixed.inputs.parameters["pipelinechannel--area-grid-Output-loop-item"].runtime_value.constant.number_value == 1
    )
