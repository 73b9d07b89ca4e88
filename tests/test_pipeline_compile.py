"""The compiled training pipeline: every step, GPU and resources, Kubernetes settings, caching, retries, the
ParallelFor fan-out and the gated deploy — read from the IR YAML and its protobuf form — plus a golden file.

Refresh the golden file after an intended change with:  .venv/bin/pytest tests/test_pipeline_compile.py --update-golden
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from pipeline_helpers import IMAGE, NODE_LABEL, pipeline_run_config

from lulc_core.config import RunConfig
from lulc_core.errors import ConfigError, InputError

GOLDEN = Path(__file__).parent / "golden" / "pipeline_gpu.yaml"
STEPS = ["configure", "area-grid", "gather", "gather-2", "statistics", "train", "evaluate", "register"]


def _compile(tmp: Path, cfg: RunConfig, image: str | None = None) -> Path:
    from pipelines.compile import compile_pipeline

    return compile_pipeline(cfg, tmp / "pipeline.yaml", image)


@pytest.fixture(scope="module")
def gpu_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(tmp_path_factory.mktemp("gpu"), pipeline_run_config(gpu=True))


@pytest.fixture(scope="module")
def docs(gpu_package: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    pipeline, platform = yaml.safe_load_all(gpu_package.read_text())
    return pipeline, platform


@pytest.fixture(scope="module")
def spec(docs: tuple[dict[str, Any], dict[str, Any]]) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())


@pytest.fixture(scope="module")
def platform(docs: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())  # valid against the proto
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _dag(spec: pipeline_spec_pb2.PipelineSpec, name: str) -> Any:
    return spec.components[name].dag


def _executor(spec: pipeline_spec_pb2.PipelineSpec, component: str) -> Any:
    label = spec.components[component].executor_label
    return spec.deployment_spec["executors"][label]["container"]


def test_every_step_is_present_and_wired(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    tasks = spec.root.dag.tasks
    assert set(STEPS) <= set(tasks)
    loop = next(t for n, t in tasks.items() if n.startswith("for-loop"))
    body = _dag(spec, loop.component_ref.name).tasks
    assert {"imagery", "labels"} <= set(body)
    gate = next(t for n, t in tasks.items() if n.startswith("condition"))
    assert "deploy" in _dag(spec, gate.component_ref.name).tasks
    assert set(tasks["train"].dependent_tasks) >= {"statistics", "gather", "gather-2"}
    assert tasks["register"].inputs.artifacts["bundle"].task_output_artifact.producer_task == "evaluate"
    # imagery and labels are gathered from the loop (dsl.Collected) before statistics and training
    for name in ("gather", "gather-2"):
        assert tasks[name].inputs.artifacts["shards"].task_output_artifact.producer_task == loop.task_info.name
    assert spec.pipeline_info.name == "lulc-training"


def test_typed_parameters_and_pinned_image(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    params = spec.root.input_definitions.parameters
    expected = {
        "run_config": "STRING",
        "aoi_bbox": "LIST",
        "aoi_file": "STRING",
        "time_frames": "LIST",
        "label_set": "STRING",
        "imagery_store": "STRING",
        "model_variant": "STRING",
        "epochs": "NUMBER_INTEGER",
        "registry": "STRING",
        "deploy_target": "STRING",
        "deploy_namespace": "STRING",
        "image": "STRING",
    }
    types = {k: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(v.parameter_type) for k, v in params.items()}
    assert types == expected
    assert params["image"].default_value.string_value == IMAGE
    assert params["deploy_target"].default_value.string_value == "none"
    embedded = RunConfig.model_validate_json(params["run_config"].default_value.string_value)
    assert embedded.name == "golden" and embedded.pipeline.accelerator_type == "nvidia.com/gpu"


def test_components_are_containerised_without_runtime_installs(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    executors = spec.deployment_spec["executors"]
    assert len(executors) >= 10
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        command = " ".join(container["command"])
        assert "pip install" not in command, name
        assert "kfp.dsl.executor_main" in command, name


def test_training_task_has_gpu_and_resources(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    resources = _executor(spec, "comp-train")["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    assert (resources["resourceCpuRequest"], resources["resourceCpuLimit"]) == ("4", "8")
    assert (resources["resourceMemoryRequest"], resources["resourceMemoryLimit"]) == ("16Gi", "24Gi")
    evaluate = _executor(spec, "comp-evaluate")["resources"]
    assert "accelerator" not in evaluate and evaluate["resourceMemoryLimit"] == "24Gi"
    assert "resources" not in _executor(spec, "comp-register")


def test_kubernetes_platform_settings(platform: dict[str, Any]) -> None:
    train = platform["exec-train"]
    assert train["nodeSelector"]["labels"] == dict([NODE_LABEL])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    secrets = {s["secretName"]: s for s in train["secretAsEnv"]}
    assert set(secrets) == {"lulc-neptune", "lulc-mlflow"}
    envs = {m["envVar"] for s in secrets.values() for m in s["keyToEnv"]}
    assert {"NEPTUNE_API_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= envs
    assert all(s.get("optional") is True for s in secrets.values())
    imagery = platform["exec-imagery"]
    assert imagery["secretAsEnv"][0]["secretName"] == "lulc-sentinelhub"
    assert {m["envVar"] for m in imagery["secretAsEnv"][0]["keyToEnv"]} == {"SH_CLIENT_ID", "SH_CLIENT_SECRET"}
    for step in ("exec-imagery", "exec-labels"):
        assert platform[step]["pvcMount"][0]["mountPath"] == "/var/cache/lulc"
        assert platform[step]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "lulc-cache"
    assert "tolerations" not in imagery and "nodeSelector" not in imagery
    assert "secretAsEnv" in platform["exec-register"]


def test_cache_env_points_at_the_pvc(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    env = {e["name"]: e["value"] for e in _executor(spec, "comp-imagery")["env"]}
    assert env == {"LULC_CACHE_DIR": "/var/cache/lulc"}


def test_caching_and_retries(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    root = spec.root.dag.tasks
    loop = next(t for n, t in root.items() if n.startswith("for-loop"))
    body = _dag(spec, loop.component_ref.name).tasks
    gate = next(t for n, t in root.items() if n.startswith("condition"))
    deploy = _dag(spec, gate.component_ref.name).tasks["deploy"]
    for name in ("configure", "area-grid", "gather", "gather-2", "statistics", "train", "evaluate"):
        assert root[name].caching_options.enable_cache, name
    assert body["imagery"].caching_options.enable_cache and body["labels"].caching_options.enable_cache
    assert not root["register"].caching_options.enable_cache
    assert not deploy.caching_options.enable_cache
    for task in (body["imagery"], body["labels"], root["register"], deploy):
        policy = task.retry_policy
        assert policy.max_retry_count == 2
        assert policy.backoff_duration.seconds == 30 and policy.backoff_factor == 2.0
        assert policy.backoff_max_duration.seconds == 1800
    for name in ("train", "evaluate", "statistics"):
        assert not root[name].HasField("retry_policy"), name


def test_parallel_for_parallelism(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    loop = next(t for n, t in spec.root.dag.tasks.items() if n.startswith("for-loop"))
    assert loop.iterator_policy.parallelism_limit == 3
    items = loop.parameter_iterator.items.input_parameter
    assert loop.inputs.parameters[items].task_output_parameter.producer_task == "area-grid"


def test_deploy_runs_only_when_the_gate_passes(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    gate = next(t for n, t in spec.root.dag.tasks.items() if n.startswith("condition"))
    assert gate.trigger_policy.condition == "inputs.parameter_values['pipelinechannel--register-Output'] == true"
    assert "register" in gate.dependent_tasks
    deploy = _dag(spec, gate.component_ref.name).tasks["deploy"]
    assert deploy.inputs.artifacts["registration"].component_input_artifact == "pipelinechannel--register-registration"
    out = spec.components["comp-register"].output_definitions.parameters["Output"]
    assert pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(out.parameter_type) == "BOOLEAN"


def test_cpu_configuration_differs_only_in_task_settings(tmp_path: Path, spec: pipeline_spec_pb2.PipelineSpec) -> None:
    cpu_yaml = _compile(tmp_path, pipeline_run_config(gpu=False))
    cpu_doc, cpu_platform = yaml.safe_load_all(cpu_yaml.read_text())
    cpu = json_format.ParseDict(cpu_doc, pipeline_spec_pb2.PipelineSpec())
    assert set(cpu.root.dag.tasks) == set(spec.root.dag.tasks)
    assert "accelerator" not in _executor(cpu, "comp-train")["resources"]
    train = cpu_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert "tolerations" not in train and "nodeSelector" not in train
    assert _executor(cpu, "comp-train")["command"] == _executor(spec, "comp-train")["command"]


def _normalised(text: str) -> list[Any]:
    """The compiled documents with the embedded run configuration replaced by a marker.

    The run configuration's JSON grows whenever a config model gains a field; its content is checked by
    test_typed_parameters_and_pinned_image, the structure of the pipeline by this golden comparison.
    """
    docs = list(yaml.safe_load_all(text))
    docs[0]["root"]["inputDefinitions"]["parameters"]["run_config"]["defaultValue"] = "<RunConfig JSON>"
    return docs


def test_compiled_yaml_matches_golden(gpu_package: Path, request: pytest.FixtureRequest) -> None:
    current = _normalised(gpu_package.read_text())
    if request.config.getoption("--update-golden"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(yaml.safe_dump_all(current, sort_keys=True, width=120))
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: run pytest {__file__} --update-golden"
    golden = list(yaml.safe_load_all(GOLDEN.read_text()))
    if golden != current:
        diff = [k for k in sorted(set(golden[0]) | set(current[0])) if golden[0].get(k) != current[0].get(k)]
        pytest.fail(
            f"compiled pipeline differs from {GOLDEN.name} (top-level keys {diff}, platform spec equal: "
            f"{golden[1:] == current[1:]}); if intended: pytest tests/test_pipeline_compile.py --update-golden"
        )


def test_compile_rejects_unpinned_images_and_bad_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components._image import check_image, resolve_image

    cfg = pipeline_run_config()
    with pytest.raises(ConfigError, match="latest"):
        _compile(tmp_path, cfg, image="ghcr.io/lulc/lulc:latest")
    with pytest.raises(ConfigError, match="no tag"):
        _compile(tmp_path, cfg, image="ghcr.io/lulc/lulc")
    with pytest.raises(ConfigError, match="no tag"):
        check_image("localhost:5000/lulc")
    assert check_image("localhost:5000/lulc:0.2") == "localhost:5000/lulc:0.2"
    assert check_image("ghcr.io/lulc/lulc@sha256:" + "a" * 64).endswith("a" * 64)
    monkeypatch.setenv("LULC_IMAGE", "ghcr.io/lulc/lulc:latest")
    with pytest.raises(ConfigError) as err:
        resolve_image(None, IMAGE)
    assert err.value.field == "LULC_IMAGE"
    monkeypatch.setenv("LULC_IMAGE", "ghcr.io/lulc/lulc:9.9.9")
    assert resolve_image(None, IMAGE) == "ghcr.io/lulc/lulc:9.9.9"
    assert resolve_image("ghcr.io/x/y:1", IMAGE) == "ghcr.io/x/y:1"
    from pipelines.compile import compile_pipeline

    with pytest.raises(InputError, match=r"\.yaml"):
        compile_pipeline(cfg, tmp_path / "pipeline.json")
    assert not list(tmp_path.glob("*.part")), "no partial file left behind"


def test_cli_compile_writes_yaml(tmp_path: Path, repo_root: Path) -> None:
    from typer.testing import CliRunner

    from lulc.cli import app

    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(
        app, ["pipeline", "compile", "-o", str(out), "-c", str(repo_root / "conf" / "run.yaml"), "--image", IMAGE]
    )
    assert result.exit_code == 0, result.output
    doc = next(yaml.safe_load_all(out.read_text()))
    default = json.loads(doc["root"]["inputDefinitions"]["parameters"]["run_config"]["defaultValue"])
    assert default["imagery"]["store"] == "local" and Path(default["imagery"]["local_dir"]).is_dir()
    assert doc["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == IMAGE
