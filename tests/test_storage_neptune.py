"""Registry -> KServe for Neptune: a version's storage URI is `neptune://<workspace>/<project>/<version id>`, the
deploy step puts it into the InferenceService, and the ClusterStorageContainer of
`manifests/cluster/neptune-storage` fetches it: its container command plus KServe's two arguments (URI,
/mnt/models) is run here as the init container would run it, against the Neptune stand-in on 127.0.0.1, and the
predictor loads what it wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("NEPTUNE_RETRIES_TIMEOUT", "2")  # read once when neptune is imported: keep failures short

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import REPO, make_bundle, write_run_config
from standins.neptune_api import NeptuneStandIn
from test_storage_s3 import _deploy_step, _serve_one_request

from lulc.commands.registry import app as registry_app
from lulc_core.errors import InputError
from lulc_core.registry.neptune_backend import parse_storage_uri

CSC_DIR = REPO / "manifests" / "cluster" / "neptune-storage"
CSC_SCHEMA = (
    REPO.parent / "shared" / "schemas" / "jsonschema" / "serving.kserve.io" / "clusterstoragecontainer_v1alpha1.json"
)
KSERVE_MOUNT = "/mnt/models"  # constants.DefaultModelLocalMountPath, KServe's second init-container argument


def _cli(*args: str) -> str:
    result = CliRunner().invoke(registry_app, [*args, "--backend", "neptune"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout.strip()  # stdout only: a log handler left by an earlier test may write to stderr


def _storage_container() -> dict[str, Any]:
    """The rendered ClusterStorageContainer (kustomize through kubectl, else the plain resource file)."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(CSC_DIR)], capture_output=True, text=True, check=True)
        (doc,) = [d for d in yaml.safe_load_all(out.stdout) if d]
    else:
        doc = yaml.safe_load((CSC_DIR / "clusterstoragecontainer.yaml").read_text())
    return dict(doc)


@pytest.fixture
def neptune(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    with NeptuneStandIn() as server:
        for key, value in server.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("NEPTUNE_MODE", raising=False)
        monkeypatch.chdir(tmp_path)  # neptune keeps its queue in ./.neptune
        yield server


def _init_container(csc: dict[str, Any], storage_uri: str, tmp_path: Path, token: str) -> subprocess.CompletedProcess:
    """Run the storage container as KServe's webhook builds it: its command + [storageUri, /mnt/models], its env
    (the Secret reference resolved to `token`); /mnt/models and /tmp are mapped below `tmp_path`."""
    container = csc["spec"]["container"]
    command = [sys.executable, "-m", "lulc.cli", *container["command"][1:]] if container["command"][0] == "lulc" else []
    assert command, f"the storage container runs {container['command']}, not the lulc CLI"
    local = {KSERVE_MOUNT: str(tmp_path / "mnt" / "models"), "/tmp": str(tmp_path / "init-tmp")}

    def mapped(value: str) -> str:
        for prefix, target in local.items():
            if value.startswith(prefix):
                return target + value.removeprefix(prefix)
        return value

    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEPTUNE_API_TOKEN", "NEPTUNE_PROJECT"))}
    for var in container["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("lulc-neptune", "NEPTUNE_API_TOKEN")
            env[var["name"]] = token
        else:
            env[var["name"]] = mapped(var["value"])
    cwd = Path(mapped(container.get("workingDir", "/tmp")))
    cwd.mkdir(parents=True, exist_ok=True)
    args = [storage_uri, mapped(KSERVE_MOUNT)]
    return subprocess.run([*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=180)


def test_neptune_version_reaches_the_predictor_through_the_storage_container(
    neptune: NeptuneStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_run_config(tmp_path / "run.yaml", tmp_path / "work")
    assert _cli("register", str(make_bundle(tmp_path / "bundle"))) == "LULC@1"
    assert _cli("promote", "LULC@1", "--stage", "production") == "LULC@1 -> production"
    version = json.loads(_cli("show", "LULC@production"))
    storage_uri = version["storage_uri"]
    assert storage_uri == f"neptune://{neptune.project}/{neptune.project_key}-LULC-1"
    assert parse_storage_uri(storage_uri) == (neptune.project, f"{neptune.project_key}-LULC-1")

    isvc = _deploy_step(tmp_path, version, monkeypatch)
    env = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}
    assert env["STORAGE_URI"] == storage_uri

    csc = _storage_container()
    assert any(storage_uri.startswith(f["prefix"]) for f in csc["spec"]["supportedUriFormats"])
    run = _init_container(csc, env["STORAGE_URI"], tmp_path, neptune.api_token)
    assert run.returncode == 0, run.stderr[-3000:]
    models = tmp_path / "mnt" / "models"
    assert run.stdout.strip() == str(models)
    assert sorted(p.name for p in models.iterdir()) == ["lulc.json", "model", "model.onnx"]  # registry.export_onnx

    response = _serve_one_request(models, config)
    (prediction,) = response["predictions"]
    assert len(prediction["classes"]) > 10


def test_pull_by_reference_and_its_errors(neptune: NeptuneStandIn, tmp_path: Path) -> None:
    from conftest import make_registry_bundle

    _cli("register", str(make_registry_bundle(tmp_path / "bundle")))
    _cli("promote", "LULC@1", "--stage", "staging")
    assert _cli("pull", "LULC@staging", str(tmp_path / "a")) == str(tmp_path / "a")
    assert (tmp_path / "a" / "lulc.json").is_file() and not list((tmp_path / "a").glob(".lulc-pull-*"))

    runner = CliRunner()
    odd = runner.invoke(registry_app, ["pull", "LULC@1"])
    assert odd.exit_code != 0 and "SOURCE DEST" in str(odd.exception)
    s3 = runner.invoke(registry_app, ["pull", "s3://bucket/bundle", str(tmp_path / "b")])
    assert isinstance(s3.exception, InputError) and "storage initializer" in str(s3.exception)
    with pytest.raises(InputError, match="not a Neptune model version URI"):
        parse_storage_uri("neptune://just-a-project/LREG-LULC-1")
    missing = runner.invoke(registry_app, ["pull", f"neptune://{neptune.project}/LREG-LULC-9", str(tmp_path / "c")])
    assert missing.exit_code != 0 and "no version 9" in str(missing.exception)


def test_pull_with_a_wrong_token_fails_with_the_fix(
    neptune: NeptuneStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lulc.cli import app

    monkeypatch.setenv("NEPTUNE_API_TOKEN", neptune.api_token[:-4] + "AAA=")
    uri = f"neptune://{neptune.project}/{neptune.project_key}-LULC-1"
    result = CliRunner().invoke(app, ["registry", "pull", uri, str(tmp_path / "m")])
    assert isinstance(result.exception, InputError) and "NEPTUNE_API_TOKEN" in str(result.exception)
    assert not (tmp_path / "m").exists()


def test_storage_container_matches_the_kserve_contract() -> None:
    csc = _storage_container()
    container = csc["spec"]["container"]
    assert csc["kind"] == "ClusterStorageContainer" and "namespace" not in csc["metadata"]
    assert container["name"] == "storage-initializer"  # KServe recognises its init container by this name
    assert "args" not in container  # KServe supplies the arguments (URI, /mnt/models); args here would replace them
    assert csc["spec"].get("workloadType", "initContainer") == "initContainer"
    assert container["securityContext"]["runAsNonRoot"] is True
    assert all("value" not in e or "TOKEN" not in e["name"] for e in container["env"])  # secrets by reference


def test_storage_container_validates_against_the_crd() -> None:
    if not CSC_SCHEMA.is_file():
        pytest.skip("../shared/schemas is missing — cannot validate the ClusterStorageContainer against its CRD")
    csc = _storage_container()
    validator = jsonschema.Draft202012Validator(json.loads(CSC_SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(csc)] == []
    typo = json.loads(json.dumps(csc))
    typo["spec"]["supportedUriFormat"] = typo["spec"].pop("supportedUriFormats")
    assert any("supportedUriFormat" in e.message for e in validator.iter_errors(typo))
