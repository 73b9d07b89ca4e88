"""The compiled mapping pipeline `lulc-mapping`: steps and wiring, the ParallelFor fan-out, GPU and resources on the
predict step, caching and retries — read from the IR YAML and its protobuf form — a golden file, and `lulc map
submit` with the real kfp.Client against the KFP API stand-in.

Refresh the golden file after an intended change with:  pytest tests/test_mapping_compile.py --update-golden
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from pipeline_helpers import IMAGE, NODE_LABEL, pipeline_run_config
from standins.kfp_api import KfpApiStandIn, parse_pipeline
from typer.testing import CliRunner

from lulc_core.config import RunConfig

GOLDEN = Path(__file__).parent / "golden" / "mapping.yaml"
TOKEN = "map-token"


def mapping_config(gpu: bool = True) -> RunConfig:
    cfg = pipeline_run_config(gpu=gpu)
    mapping = {"model": "lulc-segformer@production", "shards": 16, "parallelism": 5, "block_px": 10240}
    mapping["accelerator_type"] = "nvidia.com/gpu" if gpu else None
    return cfg.model_copy(update={"mapping": cfg.mapping.model_validate(mapping)})


def _compile(tmp: Path, cfg: RunConfig) -> Path:
    from pipelines.compile import compile_pipeline

    return compile_pipeline(cfg, tmp / "mapping.yaml", which="mapping")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _compile(tmp_path_factory.mktemp("map-gpu"), mapping_config())


@pytest.fixture(scope="module")
def docs(package: Path) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(package.read_text()))


@pytest.fixture(scope="module")
def spec(docs: list[dict[str, Any]]) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec())


@pytest.fixture(scope="module")
def platform(docs: list[dict[str, Any]]) -> dict[str, Any]:
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _loop(spec: pipeline_spec_pb2.PipelineSpec) -> Any:
    return next(t for n, t in spec.root.dag.tasks.items() if n.startswith("for-loop"))


def _resources(spec: pipeline_spec_pb2.PipelineSpec, component: str) -> dict[str, Any]:
    label = spec.components[component].executor_label
    container = json_format.MessageToDict(spec.deployment_spec)["executors"][label]["container"]
    return dict(container.get("resources", {}))


def test_steps_wiring_and_parameters(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    assert spec.pipeline_info.name == "lulc-mapping"
    tasks = spec.root.dag.tasks
    assert {"configure", "map-plan", "map-assemble", "map-areas", "map-gaps"} <= set(tasks)
    loop = _loop(spec)
    body = spec.components[loop.component_ref.name].dag.tasks
    assert set(body) == {"map-blocks"}
    assert body["map-blocks"].inputs.artifacts["bundle"].component_input_artifact == "pipelinechannel--map-plan-bundle"
    assert tasks["map-assemble"].inputs.artifacts["statuses"].task_output_artifact.producer_task == loop.task_info.name
    for name in ("map-areas", "map-gaps"):
        assert tasks[name].inputs.artifacts["catalog"].task_output_artifact.producer_task == "map-assemble"
    params = spec.root.input_definitions.parameters
    kinds = {k: pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(v.parameter_type) for k, v in params.items()}
    assert kinds == {
        "run_config": "STRING",
        "model": "STRING",
        "aoi_file": "STRING",
        "time_frames": "LIST",
        "image": "STRING",
    }
    assert params["model"].default_value.string_value == "lulc-segformer@production"
    assert params["image"].default_value.string_value == IMAGE
    embedded = RunConfig.model_validate_json(params["run_config"].default_value.string_value)
    assert embedded.mapping.shards == 16
    outputs = spec.root.output_definitions.artifacts
    assert set(outputs) == {"catalog", "areas", "gaps", "metrics"}


def test_fan_out_gpu_and_resources(spec: pipeline_spec_pb2.PipelineSpec, platform: dict[str, Any]) -> None:
    loop = _loop(spec)
    assert loop.iterator_policy.parallelism_limit == 5
    items = loop.parameter_iterator.items.input_parameter
    assert loop.inputs.parameters[items].task_output_parameter.producer_task == "map-plan"
    out = spec.components["comp-map-plan"].output_definitions.parameters["Output"]
    assert pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(out.parameter_type) == "LIST"
    blocks = _resources(spec, "comp-map-blocks")
    assert (blocks["accelerator"]["resourceType"], blocks["accelerator"]["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert (blocks["resourceCpuLimit"], blocks["resourceMemoryLimit"]) == ("8", "24Gi")
    assert "accelerator" not in _resources(spec, "comp-map-assemble")
    assert _resources(spec, "comp-map-assemble")["resourceMemoryLimit"] == "24Gi"
    exec_blocks = platform["exec-map-blocks"]
    assert exec_blocks["nodeSelector"]["labels"] == dict([NODE_LABEL])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in exec_blocks["tolerations"]
    assert exec_blocks["secretAsEnv"][0]["secretName"] == "lulc-sentinelhub"
    for step in ("exec-map-blocks", "exec-map-assemble", "exec-map-areas", "exec-map-gaps"):  # s3:// outputs
        (output,) = [e for e in platform[step]["secretAsEnv"] if e["secretName"] == "lulc-map-output"]
        assert output["optional"] and {k["envVar"] for k in output["keyToEnv"]} >= {"AWS_ENDPOINT_URL"}
    assert exec_blocks["pvcMount"][0]["mountPath"] == "/var/cache/lulc"
    assert {s["secretName"] for s in platform["exec-map-plan"]["secretAsEnv"]} == {"lulc-mlflow", "lulc-neptune"}
    executors = spec.deployment_spec["executors"]
    for name, executor in executors.items():
        container = executor["container"]
        assert container["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        assert "pip install" not in " ".join(container["command"]), name


def test_caching_and_retries(spec: pipeline_spec_pb2.PipelineSpec) -> None:
    tasks = spec.root.dag.tasks
    body = spec.components[_loop(spec).component_ref.name].dag.tasks
    # planning resolves a stage and predicting resumes by itself: never cached
    assert not tasks["map-plan"].caching_options.enable_cache
    assert not body["map-blocks"].caching_options.enable_cache
    assert not tasks["map-assemble"].caching_options.enable_cache
    assert tasks["map-areas"].caching_options.enable_cache and tasks["configure"].caching_options.enable_cache
    for task in (tasks["map-plan"], body["map-blocks"], tasks["map-gaps"]):
        assert task.retry_policy.max_retry_count == 2 and task.retry_policy.backoff_factor == 2.0
    assert not tasks["map-areas"].HasField("retry_policy")


def test_cpu_configuration_differs_only_in_task_settings(tmp_path: Path, spec: pipeline_spec_pb2.PipelineSpec) -> None:
    doc, cpu_platform = yaml.safe_load_all(_compile(tmp_path, mapping_config(gpu=False)).read_text())
    cpu = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec())
    assert set(cpu.root.dag.tasks) == set(spec.root.dag.tasks)
    assert "accelerator" not in _resources(cpu, "comp-map-blocks")
    blocks = cpu_platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-map-blocks"]
    assert "tolerations" not in blocks and "nodeSelector" not in blocks
    assert _resources(cpu, "comp-map-blocks")["resourceCpuLimit"] == "8"  # unset: pipeline.cpu_limit


def test_cpu_per_worker_sets_the_predict_task_cpu_request_and_limit(tmp_path: Path) -> None:
    cfg = mapping_config(gpu=False)
    cfg = cfg.model_copy(update={"mapping": cfg.mapping.model_copy(update={"cpu_per_worker": 1.5})})
    compiled = json_format.ParseDict(
        next(yaml.safe_load_all(_compile(tmp_path, cfg).read_text())), pipeline_spec_pb2.PipelineSpec()
    )
    blocks = _resources(compiled, "comp-map-blocks")
    assert (blocks["resourceCpuRequest"], blocks["resourceCpuLimit"]) == ("1.5", "1.5")
    assert _resources(compiled, "comp-map-assemble")["resourceCpuLimit"] == "8"  # the other heavy steps keep theirs


def _normalised(text: str) -> list[Any]:
    docs = list(yaml.safe_load_all(text))
    docs[0]["root"]["inputDefinitions"]["parameters"]["run_config"]["defaultValue"] = "<RunConfig JSON>"
    return docs


def test_compiled_yaml_matches_golden(package: Path, request: pytest.FixtureRequest) -> None:
    current = _normalised(package.read_text())
    if request.config.getoption("--update-golden"):
        GOLDEN.write_text(yaml.safe_dump_all(current, sort_keys=True, width=120))
    assert GOLDEN.is_file(), f"{GOLDEN} is missing: run pytest {__file__} --update-golden"
    golden = list(yaml.safe_load_all(GOLDEN.read_text()))
    if golden != current:
        diff = [k for k in sorted(set(golden[0]) | set(current[0])) if golden[0].get(k) != current[0].get(k)]
        pytest.fail(f"compiled mapping pipeline differs from {GOLDEN.name} (keys {diff}); if intended: --update-golden")


@pytest.fixture()
def kfp_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[KfpApiStandIn]:
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    monkeypatch.setenv("HOME", str(tmp_path))
    with KfpApiStandIn(token=TOKEN) as api:
        yield api


def test_cli_compile_and_submit(kfp_api: KfpApiStandIn, tmp_path: Path, repo_root: Path) -> None:
    from lulc.cli import app

    runner = CliRunner()
    conf = str(repo_root / "conf" / "run.yaml")
    out = tmp_path / "m.yaml"
    compiled = runner.invoke(app, ["map", "compile", "-o", str(out), "-c", conf, "--image", IMAGE])
    assert compiled.exit_code == 0, compiled.output
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "lulc-mapping"
    args = ["map", "submit", "--host", kfp_api.url, "-c", conf, "--image", IMAGE, "--model", "lulc-sample@production"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = next(iter(kfp_api.runs.values()))
    assert run["runtime_config"]["parameters"] == {"model": "lulc-sample@production"}
    spec, _ = parse_pipeline(run["pipeline_spec"])
    assert spec.pipeline_info.name == "lulc-mapping"
    default = json.loads(spec.root.input_definitions.parameters["run_config"].default_value.string_value)
    assert default["mapping"]["model"] == "lulc-sample@production"
