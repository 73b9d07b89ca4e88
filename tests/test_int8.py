"""int8 ONNX as a registration option (`registry.onnx_quantization: int8`), through the user's entry points.

`lulc run` on the bundled sample quantises the evaluated bundle (calibrated on training chips), the gate's figures
go into the registered version, and `lulc serve` answers from the int8 session (the GeoTIFF's ENGINE tag).
Unsupported combinations are refused when the configuration is validated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
import yaml

from lulc_core.config import load_run_config
from lulc_core.errors import ConfigError


def _config(repo_root: Path, tmp_path: Path, serving: dict[str, object] | None = None, **registry: object) -> Path:
    cfg = load_run_config(repo_root / "conf" / "run.yaml", {"work_dir": str(tmp_path / "work")})
    raw = cfg.model_dump(mode="json")
    raw["registry"].update(registry)
    raw["serving"].update(serving or {})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("registry", "serving", "fix"),
    [
        ({"export_onnx": False}, {}, "set registry.export_onnx true"),
        ({}, {"precision": "bf16"}, "set serving.precision fp32"),
    ],
)
def test_unsupported_int8_combinations_are_refused_in_one_line(
    repo_root: Path, tmp_path: Path, registry: dict[str, object], serving: dict[str, object], fix: str
) -> None:
    path = _config(repo_root, tmp_path, serving, **{"onnx_quantization": "int8", **registry})
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    message = str(info.value)
    assert "registry.onnx_quantization" in message and fix in message and "\n" not in message


@pytest.mark.slow
def test_lulc_run_registers_int8_and_lulc_serve_answers_from_it(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hardening_helpers import run_lulc

    from lulc_core.bundle import INT8_FILE, ONNX_FILE, ModelBundle
    from lulc_core.inference.runtime import engine
    from lulc_core.quantization import quantize_bundle
    from lulc_core.registry import build_registry
    from lulc_core.registry.base import RegistrationInfo, prepare_registration
    from serving.process import local_server

    # thresholds as the defaults; a 1-epoch model is less decided than a trained one, so allow it a little more
    config = _config(repo_root, tmp_path, onnx_quantization="int8", int8_min_agreement=0.97, int8_max_miou_drop=0.02)
    out = tmp_path / "out"
    code, log = run_lulc(capsys, "run", "-c", str(config), "--epochs", "1", "-o", str(out))
    assert code == 0, log[-3000:]
    assert "is a verified export of these weights: kept" in log  # registration did not export it a second time
    cfg = load_run_config(config)
    version = build_registry(cfg.registry, cfg.work_dir).get(f"{cfg.registry.model_name}@1")
    metrics = version.metrics
    figures = json.loads((out / "training" / "bundle" / "lulc.json").read_text())["metrics"]["int8"]
    assert metrics["int8/agreement"] == pytest.approx(figures["agreement"]) and 0.97 <= figures["agreement"] <= 1
    assert metrics["int8/miou"] == pytest.approx(figures["miou"])
    assert metrics["int8/miou_delta"] == pytest.approx(figures["miou"] - figures["miou_fp32"])
    assert figures["miou_delta"] >= -0.02 and figures["calibration_chips"] > 0 and figures["accepted"] is True
    assert version.tags["lulc.int8"] == INT8_FILE
    with rasterio.open(out / "prediction.tif") as src:  # lulc run's own prediction through the registry
        tags = src.tags()
    assert tags["ENGINE"] == f"onnxruntime:{INT8_FILE}"

    body = {"area_coords": json.loads((out / "job.json").read_text())["predict_bbox"], "fusion_mode": "only_model"}
    body.update(start_date=tags["START"], end_date=tags["END"])
    if isinstance(body["area_coords"], dict):
        body["area_coords"] = [body["area_coords"][k] for k in ("west", "south", "east", "north")]
    with local_server(f"{cfg.registry.model_name}@1", config, cli=True, ready_timeout_s=240) as (url, _):
        response = requests.post(f"{url}/segment/", json=body, timeout=120)
    assert response.status_code == 200, response.text
    served = tmp_path / "served.tif"
    served.write_bytes(response.content)
    with rasterio.open(served) as src:
        assert src.tags()["ENGINE"] == f"onnxruntime:{INT8_FILE}"
        classes = src.read(1)
    assert classes.size > 0 and int(np.max(classes)) <= 6
    split = json.loads((out / "split.json").read_text())

    # the fallback: an int8 model below the required agreement is not kept, fp32 is served, the reason recorded
    rejected = tmp_path / "rejected"
    shutil.copytree(out / "training" / "bundle", rejected)
    report = quantize_bundle(
        rejected, out / "imagery", out / "labels", split["train"], split["test"], min_agreement=1.0, max_miou_drop=0.0
    )
    perfect = report.agreement == 1.0 and report.miou_delta >= 0
    assert report.accepted is perfect and (rejected / INT8_FILE).is_file() is perfect
    if not perfect:
        assert engine(ModelBundle.load(rejected), "auto") == f"onnxruntime:{ONNX_FILE}"
        tags = prepare_registration(rejected, RegistrationInfo(export_onnx=False), "x").version_tags
        assert tags["lulc.int8"].startswith("rejected: agreement") and "\n" not in tags["lulc.int8"]


def test_int8_quantises_the_weight_matmuls_and_keeps_attention_products_fp32(
    registry_tiny_bundle: Path, tmp_path: Path
) -> None:
    """Only MatMuls with constant weights are int8; the attention's Q x K and its Softmax stay fp32."""
    import onnx

    from lulc_core.bundle import export_onnx
    from lulc_core.quantization import CalibrationChips, int8_nodes, quantize_onnx

    fp32 = export_onnx(registry_tiny_bundle, tmp_path / "model.onnx")
    graph = onnx.load(str(fp32)).graph
    weights = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    chosen = set(int8_nodes(fp32))

    def from_weights(name: str) -> bool:
        node = producers.get(name)
        return name in weights or (node is not None and node.op_type == "Transpose" and from_weights(node.input[0]))

    activation_products = {n.name for n in graph.node if n.op_type == "MatMul" and not from_weights(n.input[1])}
    assert chosen and activation_products and not chosen & activation_products
    channels = len(json.loads((registry_tiny_bundle / "lulc.json").read_text())["bands"])
    rng = np.random.default_rng(0)
    chips = CalibrationChips([rng.standard_normal((channels, 64, 64)).astype(np.float32) for _ in range(2)])
    int8 = onnx.load(str(quantize_onnx(fp32, tmp_path / "model.int8.onnx", chips))).graph
    kinds = {out: node.op_type for node in int8.node for out in node.output}
    assert sum(n.op_type == "DequantizeLinear" for n in int8.node) >= 2 * len(chosen)  # weight and activation
    assert {kinds.get(i) for n in int8.node if n.op_type == "Softmax" for i in n.input}.isdisjoint({"DequantizeLinear"})
    assert not [n for n in int8.node if n.op_type == "Conv" and kinds.get(n.input[1]) == "DequantizeLinear"]
