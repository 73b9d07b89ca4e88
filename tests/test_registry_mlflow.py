"""MLflow backend end to end on SQLite: register -> promote -> resolve -> load bundle -> predict; gate; CLI."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_bundle, make_registry_bundle
from typer.testing import CliRunner

from lulc.commands.registry import app as registry_app
from lulc_core.bundle import ModelBundle
from lulc_core.config import GateConfig, RegistryConfig
from lulc_core.errors import InputError, NotFoundError, UpstreamError
from lulc_core.model import logits_at_input_size
from lulc_core.registry import ModelRef, RegistrationInfo, build_registry, default_tracking_uri
from lulc_core.registry.gate import apply_gate
from lulc_core.registry.mlflow_backend import MlflowRegistry

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="module")
def mlflow_work(tmp_path_factory: pytest.TempPathFactory, registry_tiny_bundle_source: Path) -> dict:
    """One SQLite registry with two versions (v1 production, v2 registered) shared by the tests of this module."""
    work = tmp_path_factory.mktemp("mlflow_work")
    registry = build_registry(RegistryConfig(), work)
    bundle = copy_bundle(registry_tiny_bundle_source, work / "first-bundle")  # registering exports into it
    v1 = registry.register(bundle, RegistrationInfo(description="first"))
    registry.promote(v1, "production")
    better = make_registry_bundle(work / "better-bundle", miou=0.55, accuracy=0.86)
    v2 = registry.register(better, RegistrationInfo(run_name="better"))
    return {"work": work, "registry": registry, "v1": v1, "v2": v2}


def test_embedded_default_is_sqlite_with_local_artifacts(mlflow_work: dict) -> None:
    work: Path = mlflow_work["work"]
    registry = mlflow_work["registry"]
    assert isinstance(registry, MlflowRegistry)
    assert registry.tracking_uri == default_tracking_uri(work) == f"sqlite:///{(work / 'mlflow.db').resolve()}"
    assert (work / "mlflow.db").is_file()
    info = registry.get("lulc-segformer@1")
    assert info.source == f"runs:/{info.run_id}/bundle"
    assert info.uri == "models:/lulc-segformer/1"
    assert info.storage_uri == (work / "mlruns").resolve().as_uri() + f"/{info.run_id}/artifacts/bundle"
    assert Path(info.storage_uri.removeprefix("file://"), "lulc.json").is_file()


def test_version_records_metrics_lineage_and_label_set(mlflow_work: dict) -> None:
    from mlflow import MlflowClient

    registry = mlflow_work["registry"]
    info = registry.get(mlflow_work["v1"])
    assert info.metrics["miou"] == pytest.approx(0.42)
    assert info.metrics["per_class/forest/iou"] == pytest.approx(0.42)
    assert info.tags["lulc.label_set"].startswith("v3:")
    assert info.tags["lulc.lineage.area"] == "test bbox"
    assert info.tags["lulc.lineage.code_version"]
    assert info.test_set and info.description == "first"
    run = MlflowClient(registry.tracking_uri).get_run(info.run_id)
    assert run.data.params["training.learning_rate"] == "0.0006"
    assert run.data.metrics["overall_accuracy"] == pytest.approx(0.81)
    assert run.data.tags["lulc.lineage.time_frames"] == "2023-06-01/2023-06-30"
    artifacts = {a.path for a in MlflowClient(registry.tracking_uri).list_artifacts(info.run_id)}
    assert {"bundle", "label_set.yaml"} <= artifacts


def test_promote_resolve_load_predict(mlflow_work: dict) -> None:
    registry = mlflow_work["registry"]
    assert registry.get("lulc-segformer@production").version == 1
    assert registry.get("lulc-segformer").version == 2  # latest
    path = registry.resolve("lulc-segformer@production")
    assert path == mlflow_work["work"] / "registry-cache" / "lulc-segformer" / "1"
    marker = (path / ".lulc-cache.json").stat().st_mtime_ns
    assert registry.resolve("models:/lulc-segformer/1") == path  # cache hit: not downloaded again
    assert (path / ".lulc-cache.json").stat().st_mtime_ns == marker
    bundle = ModelBundle.load(path)
    assert bundle.metadata.bands == ["B02", "B03", "B04"]
    with torch.no_grad():
        logits = logits_at_input_size(bundle.model, torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, bundle.metadata.label_set.num_classes, 64, 64)


def test_stages_move_and_displace(mlflow_work: dict, registry_tiny_bundle: Path) -> None:
    registry = build_registry(RegistryConfig(model_name="stages"), mlflow_work["work"])  # same database
    a = registry.register(registry_tiny_bundle)
    b = registry.register(registry_tiny_bundle)
    assert registry.promote(a, "staging").stage == "staging"
    assert registry.promote(a, "production").aliases == ["production"]  # leaves staging
    assert registry.promote(b, "production").stage == "production"
    stages = {v.version: v.stage for v in registry.list_versions()}
    assert stages == {2: "production", 1: "archived"}
    assert registry.get("stages@archived").version == 1
    assert registry.promote(b, "none").stage == "none"
    with pytest.raises(NotFoundError, match="no version in 'production'"):
        registry.get("stages@production")


def test_bad_input_errors(mlflow_work: dict) -> None:
    registry = mlflow_work["registry"]
    with pytest.raises(NotFoundError, match=r"has no version 9 \(versions: 1, 2\)"):
        registry.get("lulc-segformer@9")
    with pytest.raises(NotFoundError, match="no registered model 'nope'"):
        registry.resolve("nope@production")
    with pytest.raises(NotFoundError, match="no version in 'staging'"):
        registry.get("lulc-segformer@staging")
    with pytest.raises(InputError, match="the stage is empty") as err:
        registry.promote("lulc-segformer@1", "")
    assert err.value.field == "stage"
    with pytest.raises(InputError, match="unknown stage 'live'"):
        registry.promote("lulc-segformer@1", "live")
    with pytest.raises(InputError, match="more than one '@'"):
        registry.get("lulc-segformer@1@2")
    with pytest.raises(InputError, match=r"registry\.tracking_uri"):
        MlflowRegistry("ftp://example", "m", Path("cache"))


def test_unreachable_tracking_server_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = build_registry(RegistryConfig(tracking_uri=f"http://127.0.0.1:{port}"), tmp_path)
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        registry.list_models()
    assert time.monotonic() - start < 30
    assert err.value.status_code == 503
    assert f"127.0.0.1:{port}" in str(err.value) and "tracking_uri" in str(err.value)


def test_gate_records_decision_and_promotes(mlflow_work: dict) -> None:
    registry = mlflow_work["registry"]
    rejected = apply_gate(registry, mlflow_work["v2"], GateConfig(min_miou=0.6))
    assert not rejected.passed
    info = registry.get(mlflow_work["v2"])
    assert info.gate_passed is False and info.stage == "none"
    assert info.tags["lulc.gate.min_miou"] == "0.6"
    assert info.tags["lulc.gate.production_version"] == "1"
    assert info.tags["lulc.gate.same_test_set"] == "true"  # both bundles were tested on t0..t2
    passed = apply_gate(registry, mlflow_work["v2"], GateConfig(min_miou=0.5))
    assert passed.passed and passed.numbers.production_miou == pytest.approx(0.42)
    assert registry.get("lulc-segformer@production").version == 2
    assert registry.get("lulc-segformer@1").stage == "archived"
    # A worse candidate is registered but not promoted.
    worse = make_registry_bundle(mlflow_work["work"] / "worse-bundle", miou=0.5, accuracy=0.86)
    v3 = registry.register(worse)
    decision = apply_gate(registry, v3, GateConfig(min_miou=0.1))
    assert not decision.passed
    assert any("worse than production version 2" in r for r in decision.reasons)
    assert registry.get("lulc-segformer@production").version == 2
    registry.promote(mlflow_work["v1"], "production")  # restore for the other tests
    registry.promote(ModelRef(name="lulc-segformer", version=2), "none")


def test_cli_list_show_promote_resolve_gate(mlflow_work: dict) -> None:
    runner = CliRunner()
    work = ["--work-dir", str(mlflow_work["work"])]
    listed = runner.invoke(registry_app, ["list", *work])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert lines[0].split()[:3] == ["NAME", "VER", "STAGE"]
    assert any(line.split()[:3] == ["lulc-segformer", "1", "production"] for line in lines)
    as_json = json.loads(runner.invoke(registry_app, ["list", "lulc-segformer", "--json", *work]).stdout)
    assert [v["version"] for v in as_json][-1] == 1
    shown = runner.invoke(registry_app, ["show", "@production", *work])
    assert shown.exit_code == 0
    assert json.loads(shown.stdout)["storage_uri"].endswith("/artifacts/bundle")
    resolved = runner.invoke(registry_app, ["resolve", "lulc-segformer@production", *work])
    assert Path(resolved.stdout.strip(), "lulc.json").is_file()
    gate = runner.invoke(registry_app, ["gate", "lulc-segformer@2", "--min-miou", "0.99", "--no-promote", *work])
    assert gate.exit_code == 1
    assert "gate REJECTED for lulc-segformer@2" in gate.output and "candidate_miou       0.55" in gate.output
    promoted = runner.invoke(registry_app, ["promote", "lulc-segformer@2", "--stage", "staging", *work])
    assert promoted.exit_code == 0 and "lulc-segformer@2 -> staging" in promoted.output
    bad = runner.invoke(registry_app, ["promote", "lulc-segformer@2", "--stage", "", *work])
    assert isinstance(bad.exception, InputError)
    missing = runner.invoke(registry_app, ["show", "lulc-segformer@42", *work])
    assert isinstance(missing.exception, NotFoundError)


def test_cli_register_and_export_onnx(mlflow_work: dict, registry_tiny_bundle: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    runner = CliRunner()
    work = ["--work-dir", str(mlflow_work["work"])]
    out = runner.invoke(registry_app, ["register", str(registry_tiny_bundle), "--name", "onnx-test", *work])
    assert out.exit_code == 0, out.output
    assert out.stdout.strip() == "onnx-test@1"
    registered = mlflow_work["registry"].get("onnx-test@1")
    assert registered.tags["lulc.onnx"] == "model.onnx"  # exported at registration by default
    assert Path(registered.storage_uri.removeprefix("file://"), "model.onnx").is_file()
    exported = runner.invoke(registry_app, ["export-onnx", "onnx-test@1", *work])
    assert exported.exit_code == 0, exported.output
    onnx_path = Path(exported.stdout.strip())
    session = ort.InferenceSession(str(onnx_path))
    (logits,) = session.run(None, {"pixel_values": np.zeros((1, 3, 96, 64), np.float32)})
    assert logits.shape == (1, 7, 24, 16)
    registry = mlflow_work["registry"]
    info = registry.get("onnx-test@1")
    assert info.tags["lulc.onnx"] == "model.onnx"
    assert Path(info.storage_uri.removeprefix("file://"), "model.onnx").is_file()  # stored in the registry
    assert registry.resolve("onnx-test@1") == onnx_path.parent  # cache still valid


def test_cli_register_no_onnx_opts_out(mlflow_work: dict, tmp_path: Path) -> None:
    bundle = make_registry_bundle(tmp_path / "bundle", miou=0.3, accuracy=0.7)
    work = ["--work-dir", str(mlflow_work["work"])]
    out = CliRunner().invoke(registry_app, ["register", str(bundle), "--name", "torch-only", "--no-onnx", *work])
    assert out.exit_code == 0, out.output
    info = mlflow_work["registry"].get("torch-only@1")
    assert "lulc.onnx" not in info.tags
    assert not (bundle / "model.onnx").exists()
    assert not Path(info.storage_uri.removeprefix("file://"), "model.onnx").exists()
