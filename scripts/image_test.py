"""Host-side helpers of `make image-test` (scripts/image_test.sh); run with the project's venv.

prepare DIR          a model bundle (random weights), the predictor's run.yaml (paths as mounted in the
                     container) and a PEP 503 index of torch's CPU wheel and its dependencies (from pip's local
                     configuration) for the build's TORCH_INDEX
check URL            /health, the original POST /segment/ (a GeoTIFF) and V2 infer against the running predictor
component DIR        the compiled pipeline's `configure` step as `docker run` arguments (command + args of the IR,
                     an executor input with its outputs under DIR), printed NUL-separated
component-check DIR  the step's outputs are the configuration's slices
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

log = logging.getLogger("image-test")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
BBOX = [9.835, 57.222, 9.850, 57.230]
DATES = {"start_date": "2017-10-25", "end_date": "2017-11-04"}


def prepare(out: Path) -> None:
    import yaml
    from serving_helpers import make_bundle

    out.mkdir(parents=True, exist_ok=True)
    make_bundle(out / "bundle")
    cfg = {
        "name": "image-test",
        "work_dir": "/tmp/lulc",
        "area": {"name": "t", "bbox": BBOX, "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}]},
        "imagery": {"store": "local", "local_dir": "/data/sample/imagery", "resolution": 10},
        "labels": {
            "label_set": "/app/conf/labels/v3.yaml",
            "source": "file",
            "osm_file": "/data/sample/osm/sample_osm.geojson",
        },
        "serving": {"window": 64, "overlap": 16, "max_pixels": 250_000, "edge_buffer_m": 50},
    }
    (out / "run.yaml").write_text(yaml.safe_dump(cfg))
    # torch + its dependencies as a simple index (download.pytorch.org is not reachable from every build machine)
    wheels = out / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(wheels), "torch==2.13.0"],
        check=True,
    )
    simple = out / "simple"
    for wheel in sorted(wheels.glob("*.whl")):
        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        (simple / project).mkdir(parents=True, exist_ok=True)
        (simple / project / wheel.name).write_bytes(wheel.read_bytes())
        links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted((simple / project).glob("*.whl")))
        (simple / project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


def _post(url: str, body: dict) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        return resp.status, resp.read(), resp.headers.get("Content-Type", "")


def check(url: str) -> None:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as resp:
        health = json.loads(resp.read())
    log.info(f"GET /health -> {resp.status} {health}")
    status, tif, media = _post(f"{url}/segment/", {"area_coords": BBOX, **DATES, "fusion_mode": "only_model"})
    assert status == 200 and tif[:4] in (b"II*\x00", b"MM\x00*"), (status, media, tif[:40])
    log.info(f"POST /segment/ -> {status} {media}, {len(tif)} bytes GeoTIFF")
    body = {
        "inputs": [{"name": "area_coords", "shape": [4], "datatype": "FP64", "data": BBOX}],
        "parameters": {**DATES, "outputs": "classes"},
    }
    status, raw, _ = _post(f"{url}/v2/models/lulc/infer", body)
    outputs = {o["name"]: o for o in json.loads(raw)["outputs"]}
    classes = outputs["classes"]
    assert status == 200 and len(classes["data"]) == classes["shape"][-1] * classes["shape"][-2], classes["shape"]
    log.info(f"POST /v2/models/lulc/infer -> {status}, classes {classes['shape']}")


def component(out: Path) -> None:
    import yaml

    from lulc_core.config import load_run_config
    from pipelines.compile import compile_pipeline

    cfg = load_run_config(REPO / "conf" / "cluster.yaml")
    package = compile_pipeline(cfg, out / "pipeline.yaml", "lulc:image-test")
    pipeline = next(yaml.safe_load_all(package.read_text()))
    container = pipeline["deploymentSpec"]["executors"]["exec-configure"]["container"]
    outputs = pipeline["components"]["comp-configure"]["outputDefinitions"]["parameters"]
    executor_input = {
        "inputs": {
            "parameterValues": {
                "run_config": cfg.model_dump_json(),
                "aoi_bbox": BBOX,
                "aoi_file": "",
                "time_frames": [],
                "label_set": "",
                "imagery_store": "",
                "model_variant": "",
                "epochs": 3,
                "registry": "",
            }
        },
        "outputs": {
            "parameters": {name: {"outputFile": f"/out/{name}"} for name in outputs},
            "outputFile": "/out/executor_output.json",
        },
    }
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container["args"]]
    sys.stdout.write("\0".join([*container["command"], *args]))


def component_check(out: Path) -> None:
    from lulc_core.config import RunConfig

    result = json.loads((out / "executor_output.json").read_text())
    params = result.get("parameterValues") or {}
    full = RunConfig.model_validate_json(params["full"])
    assert full.training.epochs == 3 and full.area.bbox == BBOX, full.area
    log.info(
        f"configure step in the image: {len(params)} outputs, epochs {full.training.epochs}, bbox {full.area.bbox}"
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="image-test: %(message)s", stream=sys.stderr)
    command, arg = sys.argv[1], sys.argv[2]
    {"prepare": lambda: prepare(Path(arg)), "check": lambda: check(arg), "component": lambda: component(Path(arg)),
     "component-check": lambda: component_check(Path(arg))}[command]()  # fmt: skip
