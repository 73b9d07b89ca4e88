"""`lulc pipeline submit` / `schedule` with the real kfp.Client against a KFP v2 REST API stand-in on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pipeline_helpers import IMAGE, pipeline_run_config
from standins.kfp_api import KfpApiStandIn, parse_pipeline
from typer.testing import CliRunner

from lulc_core.errors import InputError, UpstreamError
from pipelines.schedule import schedule, to_kfp_cron
from pipelines.submit import RunFailedError, submit

TOKEN = "test-token-123"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.compile import compile_pipeline

    return compile_pipeline(pipeline_run_config(gpu=True), tmp_path_factory.mktemp("pkg") / "pipeline.yaml")


@pytest.fixture()
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KfpApiStandIn]:
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))  # kfp.Client reads ~/.config/kfp/context.json
    with KfpApiStandIn(token=TOKEN) as api:
        yield api


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_submit_creates_a_run_with_the_compiled_spec_and_waits(kfp_api: KfpApiStandIn, package: Path) -> None:
    result = submit(package, kfp_api.url, experiment="lulc-test", params={"epochs": 3}, wait=True, poll_s=0.05)
    assert result.state == "SUCCEEDED"
    assert result.url == f"{kfp_api.url}/#/runs/details/{result.run_id}"
    assert kfp_api.paths()[:4] == [
        "GET /apis/v2beta1/healthz",
        "GET /apis/v2beta1/healthz",
        "GET /apis/v2beta1/experiments",
        "POST /apis/v2beta1/experiments",
    ]
    assert "POST /apis/v2beta1/runs" in kfp_api.paths()
    assert kfp_api.paths()[-1] == f"GET /apis/v2beta1/runs/{result.run_id}"
    assert all(r["headers"].get("authorization") == f"Bearer {TOKEN}" for r in kfp_api.requests)
    run = kfp_api.runs[result.run_id]
    assert run["experiment_id"] == result.experiment_id
    assert kfp_api.experiments[result.experiment_id]["display_name"] == "lulc-test"
    assert run["runtime_config"]["parameters"] == {"epochs": 3}
    spec, platform = parse_pipeline(run["pipeline_spec"])
    assert spec.pipeline_info.name == "lulc-training"
    executors = platform.platforms["kubernetes"].deployment_spec.executors
    assert executors["exec-train"]["nodeSelector"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A10G"
    # a second submission reuses the experiment
    again = submit(package, kfp_api.url, experiment="lulc-test")
    assert again.experiment_id == result.experiment_id and len(kfp_api.experiments) == 1


def test_submit_with_upload_runs_the_uploaded_version(kfp_api: KfpApiStandIn, package: Path) -> None:
    result = submit(package, kfp_api.url, upload=True, service_account="lulc-pipeline")
    assert result.pipeline_id in kfp_api.pipelines
    upload = next(r for r in kfp_api.requests if r["path"].endswith("/pipelines/upload"))
    assert upload["headers"]["content-type"].startswith("multipart/form-data")
    assert b"lulc-training" in kfp_api.uploads[kfp_api.versions[result.pipeline_id][0]["pipeline_version_id"]]
    run = kfp_api.runs[result.run_id]
    assert run["pipeline_version_reference"]["pipeline_id"] == result.pipeline_id
    assert run["service_account"] == "lulc-pipeline" and "pipeline_spec" not in run


def test_failed_run_and_rejected_parameters(package: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiStandIn(final_state="FAILED") as api:
        with pytest.raises(RunFailedError, match="FAILED"):
            submit(package, api.url, wait=True, poll_s=0.05)
        with pytest.raises(InputError, match="unrecognized input parameters"):
            submit(package, api.url, params={"epochz": 3})


def test_schedule_creates_a_recurring_run(kfp_api: KfpApiStandIn, package: Path) -> None:
    result = schedule(package, kfp_api.url, "0 3 * * 1", name="weekly", params={"epochs": 5})
    job = kfp_api.recurring_runs[result.recurring_run_id]
    assert result.cron == "0 0 3 * * 1" == job["trigger"]["cron_schedule"]["cron"]
    assert job["display_name"] == "weekly" and job["mode"] == "ENABLE" and job["no_catchup"] is True
    assert job["max_concurrency"] == "1" or job["max_concurrency"] == 1
    assert job["runtime_config"]["parameters"] == {"epochs": 5}
    assert to_kfp_cron("*/30 * * * * *") == "*/30 * * * * *"
    with pytest.raises(InputError, match="--cron"):
        to_kfp_cron("daily")


def test_401_is_a_clear_error_without_client_retries(package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KFP_TOKEN", "wrong")
    with KfpApiStandIn(token=TOKEN) as api:
        started = time.monotonic()
        with pytest.raises(InputError) as err:
            submit(package, api.url)
        assert time.monotonic() - started < 5
        assert api.paths() == ["GET /apis/v2beta1/healthz"]
    assert err.value.field == "KFP_TOKEN"
    assert "401 Unauthorized" in str(err.value) and "Unauthenticated" in str(err.value)
    monkeypatch.delenv("KFP_TOKEN")
    with KfpApiStandIn(token=TOKEN) as api, pytest.raises(InputError, match="401"):
        schedule(package, api.url, "0 3 * * *")


def test_unreachable_host_and_bad_input(package: Path, tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(UpstreamError, match="cannot reach the KFP API") as err:
        submit(package, host, token="x")
    assert err.value.status_code == 503 and host in str(err.value)
    with pytest.raises(InputError, match="--host"):
        submit(package, "ml-pipeline:8888")
    with pytest.raises(InputError, match="compile it first"):
        submit(tmp_path / "missing.yaml", host)


def test_cli_submit_and_schedule(kfp_api: KfpApiStandIn, package: Path, repo_root: Path) -> None:
    from lulc.cli import app

    runner = CliRunner()
    args = ["pipeline", "submit", "--host", kfp_api.url, "--package", str(package), "--experiment", "cli"]
    result = runner.invoke(
        app, [*args, "-p", "epochs=2", "-p", "aoi_bbox=[26.9, 60.5, 27.0, 60.6]", "--wait", "--poll-interval", "0.05"]
    )
    assert result.exit_code == 0, result.output
    assert "finished SUCCEEDED" in result.output
    run = next(iter(kfp_api.runs.values()))
    assert run["runtime_config"]["parameters"] == {"epochs": 2, "aoi_bbox": [26.9, 60.5, 27.0, 60.6]}
    bad = runner.invoke(app, [*args, "-p", "epochz=2"])
    assert isinstance(bad.exception, InputError) and "epochz" in str(bad.exception)
    assert len(kfp_api.runs) == 1, "an unknown parameter is refused before anything is sent"
    sched = runner.invoke(
        app, ["pipeline", "schedule", "--host", kfp_api.url, "--package", str(package), "--cron", "0 2 * * *"]
    )
    assert sched.exit_code == 0, sched.output
    assert "(0 0 2 * * *)" in sched.output
    compiled = runner.invoke(
        app, ["pipeline", "submit", "--host", kfp_api.url, "-c", str(repo_root / "conf" / "run.yaml"), "--image", IMAGE]
    )
    assert compiled.exit_code == 0, compiled.output
    specs = [parse_pipeline(r["pipeline_spec"])[0] for r in kfp_api.runs.values() if r.get("pipeline_spec")]
    defaults = [json.loads(s.root.input_definitions.parameters["run_config"].default_value.string_value) for s in specs]
    assert {d["name"] for d in defaults} == {"golden", "sample"}
    assert yaml.safe_load(Path(package).read_text().split("\n---\n")[0])["pipelineInfo"]["name"] == "lulc-training"


def test_kserve_deploy_with_a_local_mlflow_registry_is_refused_before_anything_runs(
    kfp_api: KfpApiStandIn, package: Path, tmp_path: Path, repo_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy_target=kserve with MLflow artifacts KServe cannot fetch: one line at submission (what the config
    names) and in the configure step (with the cluster's environment) — not after training, in the deploy step.
    The combinations KServe can fetch from still pass."""
    from components._runtime import CONFIGURE_OUTPUTS
    from components.configure import configure
    from lulc.cli import app
    from lulc_core.config import load_run_config
    from lulc_core.errors import ConfigError

    runner = CliRunner()
    local = load_run_config(repo_root / "conf" / "run.yaml").model_dump(mode="json")
    local["registry"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the embedded registry, named
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(local))
    submit_local = ["pipeline", "submit", "--host", kfp_api.url, "-c", str(tmp_path / "run.yaml"), "--image", IMAGE]
    refused = runner.invoke(app, [*submit_local, "-p", "deploy_target=kserve"])
    message = str(refused.exception)
    assert isinstance(refused.exception, ConfigError) and refused.exit_code != 0, refused.output
    assert message.startswith("registry.artifact_root:") and "s3://" in message and "\n" not in message
    schedule = ["pipeline", "schedule", "--host", kfp_api.url, "-c", str(tmp_path / "run.yaml"), "--image", IMAGE]
    scheduled = runner.invoke(app, [*schedule, "--cron", "0 2 * * *", "-p", "deploy_target=kserve"])
    assert isinstance(scheduled.exception, ConfigError)
    assert not kfp_api.runs and not kfp_api.recurring_runs, "refused before anything is sent"
    neptune = runner.invoke(app, [*submit_local, "-p", "deploy_target=kserve", "-p", "registry=neptune"])
    assert neptune.exit_code == 0, neptune.output  # neptune:// versions reach KServe through its storage container
    # no tracking_uri in the configuration: the cluster's MLFLOW_TRACKING_URI decides, so the configure step judges
    unnamed = ["pipeline", "submit", "--host", kfp_api.url, "--package", str(package), "-p", "deploy_target=kserve"]
    assert runner.invoke(app, unnamed).exit_code == 0

    params: dict[str, object] = {"aoi_bbox": [], "aoi_file": "", "time_frames": [], "label_set": "", "epochs": 0}
    params |= {"imagery_store": "", "model_variant": "", "registry": ""}
    cfg = pipeline_run_config()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the step's environment: the embedded registry
    with pytest.raises(ConfigError, match=r"^registry\.artifact_root: deploy_target kserve"):
        configure.python_func(run_config=cfg.model_dump_json(), deploy_target="kserve", **params)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.mlflow:5000")  # a tracking server in the cluster
    assert len(configure.python_func(run_config=cfg.model_dump_json(), deploy_target="kserve", **params)) == len(
        CONFIGURE_OUTPUTS
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    for artifact_root in ("s3://models/mlflow", "gs://models/mlflow"):  # the embedded SQLite registry stays
        cfg.registry.artifact_root = artifact_root
        configure.python_func(run_config=cfg.model_dump_json(), deploy_target="kserve", **params)
    for artifact_root in (str(tmp_path / "mlruns"), "wasbs://models@acct.blob.core.windows.net/mlflow"):
        cfg.registry.artifact_root = artifact_root
        with pytest.raises(ConfigError, match="artifact_root"):
            configure.python_func(run_config=cfg.model_dump_json(), deploy_target="kserve", **params)
    cfg.registry.artifact_root = None
    configure.python_func(run_config=cfg.model_dump_json(), deploy_target="local", **params)  # kfp.local's target
