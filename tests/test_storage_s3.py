"""Registry -> KServe through object storage: MLflow (SQLite tracking, `registry.artifact_root: s3://...`) stores
the bundle in a real S3 implementation on 127.0.0.1 (moto's server), the deploy step puts its `s3://` URI into the
InferenceService, KServe's own storage initializer (`kserve_storage.Storage`) downloads it, and the predictor
(`serving.predictor.LulcModel`) loads it and answers a V1 request."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BBOX, DATES, make_bundle, write_run_config
from standins.kubernetes_api import KubeApiStandIn
from standins.s3 import S3StandIn

from lulc.commands.registry import app as registry_app
from lulc_core.config import load_run_config
from lulc_core.errors import InputError

BUCKET = "lulc-models"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(registry_app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()  # stdout only: a log handler left by an earlier test may write to stderr


def _run_config(tmp_path: Path, **registry: Any) -> Path:
    path = write_run_config(tmp_path / "run.yaml", tmp_path / "work")
    cfg = yaml.safe_load(path.read_text())
    cfg["registry"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", **registry}
    path.write_text(yaml.safe_dump(cfg))
    return path


def _deploy_step(tmp_path: Path, version: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The pipeline's deploy step (components/deploy.py) against the Kubernetes API stand-in; the applied ISVC."""
    from kfp.dsl import Artifact, Markdown

    from components.deploy import deploy

    record = {k: version[k] for k in ("name", "version", "backend", "uri", "storage_uri")}
    (tmp_path / "registration.json").write_text(json.dumps(record | {"ref": f"{version['name']}@{version['version']}"}))
    with KubeApiStandIn(ready_after_polls=1) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
        config = load_run_config(tmp_path / "run.yaml").model_dump_json()
        deploy.python_func(
            config=config, registration=Artifact(uri=str(tmp_path / "registration.json")), target="kserve",
            namespace="lulc", image="ghcr.io/lulc/lulc:0.1.0", gpus=0, report=Markdown(uri=str(tmp_path / "report")),
        )  # fmt: skip
        (isvc,) = api.objects.values()
    return isvc


def _serve_one_request(model_dir: Path, config: Path) -> dict[str, Any]:
    from serving.predictor import LulcModel

    model = LulcModel("lulc", model_dir, load_run_config(config), device="cpu")
    assert model.load() and model.ready

    async def call() -> dict[str, Any]:
        batch = await model.preprocess({"instances": [{"area_coords": BBOX, **DATES}]})
        return dict(await model.postprocess(await model.predict(batch)))

    return asyncio.run(call())


def test_mlflow_s3_artifacts_reach_the_predictor_through_kserve_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kserve_storage import Storage

    with S3StandIn() as s3:
        s3.create_bucket(BUCKET)
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        config = _run_config(tmp_path, artifact_root=f"s3://{BUCKET}/mlflow")
        bundle = make_bundle(tmp_path / "bundle")

        assert _cli("register", str(bundle), "--config", str(config)) == "lulc-segformer@1"
        assert (
            _cli("promote", "@1", "--stage", "production", "--config", str(config)) == "lulc-segformer@1 -> production"
        )
        version = json.loads(_cli("show", "@production", "--config", str(config)))
        storage_uri = version["storage_uri"]
        assert storage_uri.startswith(f"s3://{BUCKET}/mlflow/") and storage_uri.endswith("/bundle")
        prefix = storage_uri.removeprefix(f"s3://{BUCKET}/")
        assert f"{prefix}/lulc.json" in s3.keys(BUCKET, prefix)  # the bundle really lives in the bucket

        isvc = _deploy_step(tmp_path, version, monkeypatch)
        env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
        assert env["STORAGE_URI"] == storage_uri

        mnt = tmp_path / "mnt" / "models"
        (got,) = Storage.download_files([env["STORAGE_URI"]], [str(mnt)])
        assert Path(got) == mnt and (mnt / "lulc.json").is_file()
        assert sorted(p.name for p in (mnt / "model").iterdir()) == ["config.json", "model.safetensors"]

    response = _serve_one_request(mnt, config)  # S3 is gone: the predictor needs only the downloaded directory
    (prediction,) = response["predictions"]
    classes = prediction["classes"]
    assert len(classes) > 10 and len(classes[0]) > 10
    assert {c for row in classes for c in row} <= set(range(1, 12))


def test_kserve_storage_reports_a_missing_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kserve_storage import Storage

    with S3StandIn() as s3:
        s3.create_bucket(BUCKET)
        for key, value in s3.env().items():
            monkeypatch.setenv(key, value)
        with pytest.raises(RuntimeError, match="No model found"):
            Storage.download_files([f"s3://{BUCKET}/mlflow/1/none/artifacts/bundle"], [str(tmp_path / "m")])


def test_deploy_refuses_a_local_artifact_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `registry.artifact_root` MLflow keeps artifacts on local disk (file://): KServe cannot fetch that."""
    config = _run_config(tmp_path)
    _cli("register", str(make_bundle(tmp_path / "bundle")), "--config", str(config))
    version = json.loads(_cli("show", "@1", "--config", str(config)))
    assert version["storage_uri"].startswith("file://")
    with pytest.raises(InputError, match=r"storage_uri.*registry.artifact_root: s3://"):
        _deploy_step(tmp_path, version, monkeypatch)


def test_artifact_root_is_checked_at_configuration_time(tmp_path: Path) -> None:
    from lulc_core.config import RegistryConfig

    with pytest.raises(ValueError, match=r"artifact_root[\s\S]*ftp://"):
        RegistryConfig(artifact_root="ftp://host/models")
    assert RegistryConfig(artifact_root="s3://b/p").artifact_root == "s3://b/p"
