"""Training is tracked: `lulc run` logs loss and mIoU per epoch live to the registry's tracker, in the run that
becomes (MLflow) or is linked to (Neptune, against the stand-in on 127.0.0.1) the registered version."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NEPTUNE_RETRIES_TIMEOUT", "2")  # read once when neptune is imported: keep failures short

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standins.neptune_api import NeptuneStandIn

from lulc.cli import app
from lulc_core.config import load_run_config

REPO = Path(__file__).resolve().parents[1]
CURVES = ("train_loss", "val_loss", "val_miou")


def _lulc_run(tmp_path: Path, **registry: Any) -> dict[str, Any]:
    """`lulc run` on the bundled sample (2 epochs, MLflow/Neptune per `registry`); returns job.json and epochs."""
    cfg = load_run_config(REPO / "conf" / "run.yaml", {"work_dir": str(tmp_path / "work"), "registry": registry})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["run", "-c", str(config), "--epochs", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    job = json.loads((tmp_path / "work" / "runs" / "sample" / "job.json").read_text())
    trained = json.loads((tmp_path / "work" / "runs" / "sample" / "training" / "train_result.json").read_text())
    assert trained["epochs_run"] == 2
    return job | {"epochs_run": trained["epochs_run"]}


def test_lulc_run_logs_curves_into_the_registered_versions_mlflow_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    before = os.environ.get("MLFLOW_TRACKING_URI")
    job = _lulc_run(tmp_path)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'work' / 'mlflow.db'}")
    name, version = job["model_ref"].split("@")
    mv = client.get_model_version(name, version)
    run = client.get_run(mv.run_id)
    for metric in CURVES:
        history = client.get_metric_history(mv.run_id, metric)
        assert len(history) == job["epochs_run"], metric  # one point per epoch
        assert [h.step for h in history] == sorted({h.step for h in history})
    assert 0.0 <= client.get_metric_history(mv.run_id, "val_miou")[-1].value <= 1.0
    assert "miou" in run.data.metrics and "overall_accuracy" in run.data.metrics  # test metrics of registration
    assert run.data.tags["lulc.lineage.tracking_run"] == mv.run_id
    assert run.data.tags["lulc.kind"] == "training" and run.info.status == "FINISHED"
    assert "lulc.json" in {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(mv.run_id, "bundle")}
    runs = client.search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in runs] == [mv.run_id]  # no separate registration run
    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # Lightning's MLFlowLogger set it; closing restores it


def test_lulc_run_logs_curves_to_a_neptune_run_linked_to_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NeptuneStandIn() as server:
        for key, value in server.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("NEPTUNE_MODE", raising=False)
        monkeypatch.chdir(tmp_path)  # neptune keeps its queue in ./.neptune
        job = _lulc_run(tmp_path, backend="neptune")
        (run,) = [c for c in server.containers.values() if c.type == "run"]
        version = server.find(f"{server.project_key}-LULC-1")
    run_id = run.attrs["sys/id"].value
    for metric in CURVES:
        points = run.series[f"training/{metric}"]
        assert len(points) == job["epochs_run"], metric  # one point per epoch, appended live
        assert [step for step, _ in points] == sorted({step for step, _ in points})
    assert "lulc-training" in run.attrs["sys/tags"].value
    assert version.attrs["training_run"].value == run_id
    assert version.attrs["run_url"].value.endswith(f"/{run_id}")  # the version links to the training run
    assert version.attrs["lulc/lulc.lineage.tracking_run"].value == run_id
    assert run.attrs["model_version"].value == version.attrs["sys/id"].value
    assert job["model_ref"] == "LULC@1"


def test_tracking_can_be_switched_off(tmp_path: Path) -> None:
    from lulc_core.registry import tracked

    cfg = load_run_config(
        REPO / "conf" / "run.yaml", {"work_dir": str(tmp_path), "registry": {"track_training": False}}
    )
    with tracked(cfg) as run:
        assert run is None
    assert not (tmp_path / "mlflow.db").exists()  # not even the tracking store was opened
