"""Each pipeline step receives only its slice of the run configuration, so KFP's cache survives unrelated changes.

A KFP cache key is made of the task's component spec (image, command, args) and its inputs (parameters and input
artifacts). The tests compile the pipeline for two configurations that differ only in training settings and show
that the data steps' component specs are identical and that the slice each receives — computed by the configure
step's own code from the compiled default — is byte-identical; training's slice differs. A changed
`imagery.resolution` changes the imagery and grid slices.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pipeline_helpers import pipeline_run_config

from lulc_core.config import RunConfig
from lulc_core.errors import InputError
from lulc_core.steps import DEPENDENCIES, FULL, PLACEHOLDER, step_config, step_configs

DATA_TASKS = ("area-grid", "imagery", "labels", "gather", "gather-2", "statistics")
DATA_SLICES = ("area_grid", "imagery", "labels", "statistics", "evaluate")


def _changed(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    raw = cfg.model_dump(mode="json")
    for name, values in sections.items():
        raw[name] |= values
    return RunConfig.model_validate(raw)


def _compile(tmp: Path, cfg: RunConfig) -> dict[str, Any]:
    from pipelines.compile import compile_pipeline

    return next(yaml.safe_load_all(compile_pipeline(cfg, tmp / "pipeline.yaml").read_text()))


def _configure(ir: dict[str, Any], **overrides: Any) -> dict[str, str]:
    """The configure step's outputs for the compiled pipeline's default run_config (its own code, in-process)."""
    from components._runtime import CONFIGURE_OUTPUTS
    from components.configure import configure

    default = ir["root"]["inputDefinitions"]["parameters"]["run_config"]["defaultValue"]
    params: dict[str, Any] = {"aoi_bbox": [], "aoi_file": "", "time_frames": [], "label_set": "", "imagery_store": ""}
    params |= {"model_variant": "", "epochs": 0, "registry": ""} | overrides
    outputs = configure.python_func(run_config=default, **params)
    return dict(zip(CONFIGURE_OUTPUTS, outputs, strict=True))


def _task_spec(ir: dict[str, Any], task: str) -> tuple[Any, Any]:
    """(component spec, executor) of a task: what, with its inputs, makes the task's cache key."""
    name = f"comp-{task}"
    label = ir["components"][name]["executorLabel"]
    return ir["components"][name], ir["deploymentSpec"]["executors"][label]


@pytest.fixture(scope="module")
def base() -> RunConfig:
    return pipeline_run_config(gpu=True)


@pytest.fixture(scope="module")
def base_ir(base: RunConfig, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _compile(tmp_path_factory.mktemp("base"), base)


def test_training_settings_leave_the_data_steps_cache_keys_equal(
    base: RunConfig, base_ir: dict[str, Any], tmp_path: Path
) -> None:
    other = _changed(base, training={"epochs": 3, "learning_rate": 1e-3})
    other_ir = _compile(tmp_path, other)
    for task in DATA_TASKS:
        assert _task_spec(base_ir, task) == _task_spec(other_ir, task), task
    a, b = _configure(base_ir), _configure(other_ir)
    for step in DATA_SLICES:
        assert a[step] == b[step], step
    assert a["train"] != b["train"] and a["full"] != b["full"]
    assert json.loads(b["train"])["training"]["epochs"] == 3
    # the same through the pipeline's `epochs` parameter
    assert {k: v for k, v in _configure(base_ir, epochs=7).items() if k in DATA_SLICES} == {
        k: a[k] for k in DATA_SLICES
    }


def test_a_changed_resolution_changes_the_imagery_slice(
    base: RunConfig, base_ir: dict[str, Any], tmp_path: Path
) -> None:
    other_ir = _compile(tmp_path, _changed(base, imagery={"resolution": 20.0}))
    a, b = _configure(base_ir), _configure(other_ir)
    for step in ("imagery", "area_grid", "train"):
        assert a[step] != b[step], step
        assert json.loads(b[step])["imagery"]["resolution"] == 20.0
    # labels and statistics see the new grid through the area grid's tiles artifact (a new input artifact)
    assert a["labels"] == b["labels"] and a["statistics"] == b["statistics"]


def test_each_step_is_wired_to_its_own_slice(base_ir: dict[str, Any]) -> None:
    from components._runtime import CONFIGURE_OUTPUTS

    outputs = base_ir["components"]["comp-configure"]["outputDefinitions"]["parameters"]
    assert list(outputs) == sorted(CONFIGURE_OUTPUTS)
    root = base_ir["root"]["dag"]["tasks"]
    loop = next(t for n, t in root.items() if n.startswith("for-loop"))
    body = base_ir["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    gate = next(t for n, t in root.items() if n.startswith("condition"))
    gated = base_ir["components"][gate["componentRef"]["name"]]["dag"]["tasks"]
    wanted = {"area-grid": "area_grid", "statistics": "statistics", "train": "train", "evaluate": "evaluate"}
    wanted |= {"register": "full"}
    for task, output in wanted.items():
        source = root[task]["inputs"]["parameters"]["config"]["taskOutputParameter"]
        assert source == {"producerTask": "configure", "outputParameterKey": output}, task
    for task, tasks, parent in (("imagery", body, loop), ("labels", body, loop), ("deploy", gated, gate)):
        channel = tasks[task]["inputs"]["parameters"]["config"]["componentInputParameter"]
        source = parent["inputs"]["parameters"][channel]["taskOutputParameter"]
        assert source == {"producerTask": "configure", "outputParameterKey": task}, task


def test_a_slice_holds_exactly_what_its_step_declares(base: RunConfig) -> None:
    full = base.model_dump(mode="json")
    blank = RunConfig.model_validate(PLACEHOLDER).model_dump(mode="json")
    for step, paths in DEPENDENCIES.items():
        got = step_config(base, step).model_dump(mode="json")
        if paths == FULL:
            assert got == full
            continue
        expected = json.loads(json.dumps(blank))
        for path in paths:
            *parents, leaf = path.split(".")
            src, dst = full, expected
            for key in parents:
                src, dst = src[key], dst[key]
            dst[leaf] = src[leaf]
        assert got == expected, step
    slices = step_configs(base)
    assert json.loads(slices["imagery"])["labels"]["label_set"] == PLACEHOLDER["labels"]["label_set"]
    assert json.loads(slices["labels"])["labels"] == full["labels"]
    with pytest.raises(InputError, match="step"):
        step_config(base, "predict")


def test_register_records_the_whole_configuration(base: RunConfig, tmp_path: Path) -> None:
    """The train step saw its slice; the registered bundle carries the whole configuration and its provenance."""
    from conftest import make_registry_bundle

    from lulc_core.bundle import ModelBundle
    from lulc_core.lineage import record_run_config

    bundle = make_registry_bundle(tmp_path / "bundle")
    before = ModelBundle.read_metadata(bundle)
    record_run_config(bundle, base)
    meta = ModelBundle.read_metadata(bundle)
    assert meta.run_config == base.model_dump(mode="json")
    assert meta.provenance.config_hash == base.fingerprint()
    assert meta.provenance.area is not None and meta.provenance.area.startswith(base.area.name)
    assert meta.provenance.created_at == before.provenance.created_at and meta.metrics == before.metrics


def _reads(source: str, root: str = "cfg") -> set[str]:
    """Dotted configuration paths read as `cfg.a.b...` in `source` (fields only, methods and properties skipped)."""
    import ast
    import textwrap

    paths: set[str] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(source))):
        chain: list[str] = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id == root and chain and chain[0] in RunConfig.model_fields:
            paths.add(".".join(chain))
    return paths


def _covered(path: str, declared: tuple[str, ...]) -> bool:
    return declared == FULL or any(path == d or path.startswith(d + ".") or d.startswith(path + ".") for d in declared)


@pytest.mark.parametrize("step", [s for s in DEPENDENCIES if DEPENDENCIES[s] != FULL])
def test_what_a_step_reads_is_declared(step: str) -> None:
    """Every `cfg.<section>.<field>` a component (and, for training, the training code it calls) reads is in its slice.

    A read outside the slice would silently get a default in the pipeline; this catches it when a step changes.
    """
    import importlib
    import inspect

    from lulc_core import datamodule, training

    sources = [(Path(importlib.import_module(f"components.{step}").__file__ or "").read_text(), "cfg")]
    if step == "train":
        sources += [(inspect.getsource(f), "cfg") for f in (training.train, training.check_stats)]
        sources += [(inspect.getsource(datamodule.LulcDataModule.from_config), "cfg")]
    reads = set().union(*(_reads(text, root) for text, root in sources))
    assert reads or not DEPENDENCIES[step], f"found no configuration reads in {step}"
    undeclared = sorted(p for p in reads if not _covered(p, DEPENDENCIES[step]))
    assert not undeclared, f"{step} reads {undeclared}: add them to lulc_core.steps.DEPENDENCIES[{step!r}]"
