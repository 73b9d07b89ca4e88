"""Neptune backend through the real neptune 1.x client against the stand-in server (tests/standins/neptune_api.py)."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

os.environ.setdefault("NEPTUNE_RETRIES_TIMEOUT", "2")  # read once when neptune is imported: keep failures short

import pytest
import torch
from conftest import make_registry_bundle
from standins.neptune_api import NeptuneStandIn
from typer.testing import CliRunner

from lulc.commands.registry import app as registry_app
from lulc_core.bundle import ModelBundle
from lulc_core.config import GateConfig, RegistryConfig
from lulc_core.errors import InputError, NotFoundError, UpstreamError
from lulc_core.registry import build_registry
from lulc_core.registry.gate import apply_gate
from lulc_core.registry.neptune_backend import NeptuneRegistry, sync_offline

CFG = RegistryConfig(backend="neptune")


@pytest.fixture(scope="module")
def neptune_server():
    with NeptuneStandIn() as server:
        yield server


@pytest.fixture
def neptune_env(neptune_server: NeptuneStandIn, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> NeptuneStandIn:
    monkeypatch.setenv("NEPTUNE_API_TOKEN", neptune_server.api_token)
    monkeypatch.setenv("NEPTUNE_PROJECT", neptune_server.project)
    monkeypatch.delenv("NEPTUNE_MODE", raising=False)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # the stand-in speaks plain http on 127.0.0.1
    monkeypatch.chdir(tmp_path)  # neptune keeps its queue in ./.neptune
    return neptune_server


def test_register_promote_gate_resolve_predict(neptune_env: NeptuneStandIn, registry_tiny_bundle: Path) -> None:
    server = neptune_env
    registry = build_registry(CFG, Path("work"))
    v1 = registry.register(registry_tiny_bundle)
    better = make_registry_bundle(Path("better"), miou=0.6, accuracy=0.9)
    v2 = registry.register(better)
    assert (str(v1), str(v2)) == ("LULC@1", "LULC@2")
    model_id = f"{server.project_key}-LULC"
    stored = server.find(f"{model_id}-1")
    assert stored.type == "modelVersion" and stored.attrs["sys/model_id"].value == model_id
    assert set(stored.files["bundle"]) == {"lulc.json", "model/config.json", "model/model.safetensors", "model.onnx"}
    assert server.called("/api/leaderboard/v1/attributes/storage/fileset/upload/finish") >= 2  # multipart weights
    assert stored.attrs["metrics/miou"].value == pytest.approx(0.42)
    assert stored.attrs["label_set/name"].value == "v3" and "forest" in stored.attrs["label_set/yaml"].value
    assert stored.attrs["hyperparameters/training.learning_rate"].value == "0.0006"
    assert stored.attrs["provenance/area"].value == "test bbox"

    assert [(v.version, v.stage) for v in registry.list_versions()] == [(2, "none"), (1, "none")]
    assert registry.list_models() == ["LULC"]
    assert registry.promote(v1, "production").stage == "production"
    assert server.find(f"{model_id}-1").attrs["sys/stage"].value == "production"

    decision = apply_gate(registry, v2, GateConfig(min_miou=0.5))
    assert decision.passed and decision.numbers.production_miou == pytest.approx(0.42)
    assert decision.numbers.same_test_set is True
    stages = {v.version: v.stage for v in registry.list_versions()}
    assert stages == {2: "production", 1: "archived"}
    info = registry.get("LULC@production")
    assert info.version_id == f"{model_id}-2" and info.gate_passed is True
    assert info.tags["lulc.gate.min_miou"] == "0.5"
    assert info.storage_uri == f"neptune://{server.project}/{model_id}-2"

    path = registry.resolve("@production")
    assert path.name == "2" and (path / "lulc.json").is_file()
    assert registry.resolve("lulc-segformer@2") == path  # the configured model name maps to the key; cache hit
    bundle = ModelBundle.load(path)
    assert bundle.metadata.metrics["miou"] == pytest.approx(0.6)
    with torch.no_grad():
        logits = bundle.model(pixel_values=torch.zeros(1, 3, 64, 64)).logits
    assert logits.shape == (1, 7, 16, 16)
    assert server.called("/api/leaderboard/v1/leaderboard/entries/search") > 0

    listed = CliRunner().invoke(registry_app, ["list", "--backend", "neptune", "--work-dir", "work"])
    assert listed.exit_code == 0, listed.output
    assert any(line.split()[:3] == ["LULC", "2", "production"] for line in listed.stdout.splitlines())


def test_bad_refs_and_stages(neptune_env: NeptuneStandIn) -> None:
    registry = build_registry(CFG, Path("work"))
    with pytest.raises(NotFoundError, match="has no version 99"):
        registry.get("LULC@99")
    with pytest.raises(NotFoundError, match="no Neptune model"):
        registry.get("OTHER@1")
    with pytest.raises(InputError, match="no alias 'champion'"):
        registry.get("LULC@champion")
    with pytest.raises(InputError, match="the stage is empty"):
        registry.promote("LULC@1", " ")
    with pytest.raises(InputError, match="unknown stage 'prod'"):
        registry.promote("LULC@1", "prod")
    with pytest.raises(InputError, match="not a Neptune model key"):
        registry.get("lower-case-name@1")


def test_missing_or_bad_credentials(neptune_env: NeptuneStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NEPTUNE_API_TOKEN")
    with pytest.raises(InputError) as err:
        build_registry(CFG, Path("work"))
    assert err.value.field == "NEPTUNE_API_TOKEN" and "NEPTUNE_PROJECT" in str(err.value)
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "not-a-token")
    with pytest.raises(InputError, match="not a valid Neptune API token"):
        build_registry(CFG, Path("work")).list_models()
    monkeypatch.setenv("NEPTUNE_API_TOKEN", neptune_env.api_token)
    monkeypatch.delenv("NEPTUNE_PROJECT")
    with pytest.raises(InputError) as err:
        build_registry(CFG, Path("work"))
    assert err.value.field == "NEPTUNE_PROJECT"
    monkeypatch.setenv("NEPTUNE_PROJECT", "nobody/nothing")
    with pytest.raises(InputError, match="project 'nobody/nothing' not found"):
        build_registry(CFG, Path("work")).list_models()
    monkeypatch.setenv("NEPTUNE_MODE", "turbo")
    with pytest.raises(InputError, match="unknown mode 'turbo'"):
        build_registry(CFG, Path("work"))
    with pytest.raises(InputError, match="neptune_model_key"):
        NeptuneRegistry("a/b", "t", "lulc", Path("c"))


def test_unreachable_server_fails_fast(neptune_env: NeptuneStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import base64

    token = base64.b64encode(json.dumps({"api_address": f"http://127.0.0.1:{port}", "api_key": "k"}).encode())
    monkeypatch.setenv("NEPTUNE_API_TOKEN", token.decode())
    start = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        build_registry(CFG, Path("work")).get("LULC@production")
    assert time.monotonic() - start < 30
    assert err.value.status_code == 503 and "cannot reach the Neptune server" in str(err.value)


def test_offline_mode_writes_run_for_sync(
    neptune_env: NeptuneStandIn, monkeypatch: pytest.MonkeyPatch, registry_tiny_bundle: Path
) -> None:
    server = neptune_env
    monkeypatch.setenv("NEPTUNE_MODE", "offline")
    monkeypatch.delenv("NEPTUNE_API_TOKEN")
    registry = build_registry(CFG, Path("work"))
    assert str(registry.register(registry_tiny_bundle)) == "LULC@offline"
    runs = list(Path(".neptune/offline").glob("run__*"))
    assert len(runs) == 1
    assert (runs[0] / "metadata.json").is_file()
    ops = [json.loads(line)["obj"] for line in (runs[0] / "data-1.log").read_text().splitlines()]
    by_path = {"/".join(op["path"]): op for op in ops}
    assert by_path["metrics/miou"] == {"type": "AssignFloat", "path": ["metrics", "miou"], "value": 0.42}
    assert by_path["model_key"]["value"] == "LULC"
    assert set(by_path["sys/tags"]["values"]) == {"lulc-model-candidate", "model:LULC"}
    (bundle_glob,) = by_path["bundle"]["file_globs"]
    assert Path(bundle_glob, "lulc.json").is_file() and ".neptune/lulc-bundles/" in bundle_glob
    with pytest.raises(InputError, match="offline mode cannot read"):
        registry.resolve("LULC@1")

    monkeypatch.setenv("NEPTUNE_API_TOKEN", server.api_token)
    with pytest.raises(InputError, match="NEPTUNE_PROJECT"):
        sync_offline(None, Path())
    sync_offline(server.project, Path())
    synced = [c for c in server.containers.values() if c.type == "run" and "model:LULC" in c.attrs["sys/tags"].value]
    assert len(synced) == 1
    assert synced[0].attrs["metrics/miou"].value == pytest.approx(0.42)
    assert any(name.endswith("model/model.safetensors") for name in synced[0].files["bundle"])


def test_a_version_still_being_registered_is_not_resolved(
    neptune_env: NeptuneStandIn, registry_tiny_bundle: Path
) -> None:
    """Neptune lists a version as soon as it exists; while another process uploads its bundle (its
    lulc/registration is "in progress", as `register` writes it first), `@latest` is the newest complete version and
    the pending one by number is a clear 404-style error, not a missing-field error from the client."""
    import neptune

    from lulc_core.registry.neptune_backend import TAG_REGISTRATION, _tag_path

    registry = build_registry(CFG, Path("work"))
    done = registry.register(registry_tiny_bundle)
    model_id = f"{neptune_env.project_key}-LULC"
    pending = neptune.init_model_version(model=model_id, mode="sync")  # what a concurrent `register` has written
    try:
        pending[_tag_path(TAG_REGISTRATION)] = "in progress"
        pending_id = str(pending["sys/id"].fetch())
    finally:
        pending.stop()
    number = int(pending_id.rsplit("-", 1)[1])
    assert number == (done.version or 0) + 1
    assert [v.version for v in registry.list_versions()][:2] == [number, done.version]  # listed, with its tag
    assert registry.get("LULC@latest").version == done.version
    assert registry.resolve("LULC@latest").name == str(done.version)
    with pytest.raises(NotFoundError, match=f"{pending_id} is still being registered"):
        registry.get(f"LULC@{number}")
    assert registry.get(f"LULC@{done.version}").tags[TAG_REGISTRATION] == "complete"


def test_client_errors_name_the_problem_without_colour_codes() -> None:
    from neptune.exceptions import MissingFieldException

    from lulc_core.registry.neptune_backend import _first_line

    assert _first_line(MissingFieldException("bundle")) == 'The field "bundle" was not found.'
