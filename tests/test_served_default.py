"""The served default is the fast path: `lulc run` registers model.onnx and the predictor serves it with onnxruntime.

The export happens at registration (`registry.export_onnx`, default true) in every entry point that registers:
`lulc run` (here), the pipeline's register step (tests/test_pipeline_local.py), `lulc registry register`
(tests/test_registry_mlflow.py) and the demo (which runs the pipeline).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lulc_core.config import load_run_config
from lulc_core.registry import registration_info

pytestmark = pytest.mark.slow


def _config(repo_root: Path, tmp_path: Path, **registry: object) -> Path:
    cfg = load_run_config(repo_root / "conf" / "run.yaml", {"work_dir": str(tmp_path / "work")})
    raw = cfg.model_dump(mode="json")
    raw["registry"].update(registry)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_lulc_run_registers_onnx_and_the_predictor_serves_it(
    repo_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hardening_helpers import run_lulc

    from lulc_core.bundle import ONNX_FILE, ModelBundle
    from lulc_core.inference.runtime import resolve_runtime
    from lulc_core.registry import build_registry

    config = _config(repo_root, tmp_path)
    code, log = run_lulc(capsys, "run", "-c", str(config), "--epochs", "1", "-o", str(tmp_path / "out"))
    assert code == 0, log[-3000:]
    cfg = load_run_config(config)
    registry = build_registry(cfg.registry, cfg.work_dir)
    version = registry.get(f"{cfg.registry.model_name}@1")
    assert version.tags["lulc.onnx"] == ONNX_FILE
    bundle = ModelBundle.load(registry.resolve(version.ref))
    assert (bundle.path / ONNX_FILE).is_file()
    assert resolve_runtime(bundle) == "onnx"
    assert "ONNX matches torch" in log, "the export was not verified against torch"
    assert "inference on onnxruntime" in log, "the prediction did not use onnxruntime"
    assert (tmp_path / "out" / "prediction.tif").is_file()


def test_export_onnx_opt_out_reaches_the_registration(repo_root: Path, tmp_path: Path) -> None:
    on = load_run_config(_config(repo_root, tmp_path))
    off = load_run_config(_config(repo_root, tmp_path, export_onnx=False))
    assert registration_info(on).export_onnx is True
    assert registration_info(off).export_onnx is False
