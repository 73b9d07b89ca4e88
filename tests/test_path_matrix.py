"""The path matrix: every entry point a user calls x every label source x every registry backend.

Entry points: `lulc run`, the training pipeline under kfp.local (`lulc pipeline run --local`: each source and
each registry, see PIPELINE_CELLS), `lulc predict`, and `lulc serve` answering V1, V2 and the original REST API. Label sources: a local OSM file, the ohsome API (its
stand-in), CORINE from Sentinel Hub BYOC (its stand-in). Registries: MLflow (embedded SQLite) and Neptune (its
stand-in). Every cell runs end to end here; none is refused. A combination that cannot work is refused when the
configuration is validated (one line naming the field and the fix) — `test_refused_at_configuration_time` holds
the cases that exist, and no cell may fail deep inside a step.

The training cells (run, pipeline) use one sample patch (North Jutland, 9 tiles of 64 px) and one epoch; the
prediction cells share one registered model per registry (random weights: the cells prove the joints, not skill).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

os.environ.setdefault("NEPTUNE_RETRIES_TIMEOUT", "2")  # read once when neptune is imported: keep failures short

import numpy as np
import pytest
import rasterio
import requests
import yaml
from conftest import make_registry_bundle
from standins.neptune_api import NeptuneStandIn
from standins.ohsome import OhsomeStandIn
from standins.sentinelhub import CORINE_COLLECTION, SentinelHubStandIn
from typer.testing import CliRunner

from lulc.cli import app
from lulc_core.config import load_run_config
from lulc_core.errors import ConfigError
from lulc_core.registry import build_registry
from serving.process import local_server

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
START, END = "2017-10-25", "2017-11-04"  # selects the North Jutland part of the sample AOI only
BBOX = [9.8300, 57.2240, 9.8420, 57.2320]  # inside that patch
SOURCES = ["file", "ohsome", "corine"]
REGISTRIES = ["mlflow", "neptune"]
CELLS = [(s, r) for s in SOURCES for r in REGISTRIES]
# The pipeline passes the label source to its labels step and the registry to its register step, two steps that do
# not read each other's setting: each source and each registry runs once under kfp.local here (file x mlflow is
# tests/test_pipeline_local.py's run), every pairing through `lulc run` (the same steps, in process). A kfp.local
# run costs ~40 s, so the other pairings would add minutes to the suite and no joint.
PIPELINE_CELLS = [("ohsome", "neptune"), ("corine", "mlflow")]
CLIENT, SECRET = "lulc-matrix-client", "lulc-matrix-secret"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The three stand-ins, and the environment a user would set for them (credentials, plain http)."""
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    neptune_dir = tmp_path_factory.mktemp("neptune-queue")
    with (
        pytest.MonkeyPatch.context() as mp,
        OhsomeStandIn() as ohsome,
        SentinelHubStandIn({CLIENT: SECRET}) as sh,
        NeptuneStandIn() as neptune,
    ):
        mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
        mp.setenv("SH_CLIENT_ID", CLIENT)
        mp.setenv("SH_CLIENT_SECRET", SECRET)
        mp.delenv("SH_CREDENTIALS_DIR", raising=False)
        mp.setenv("NEPTUNE_API_TOKEN", neptune.api_token)
        mp.setenv("NEPTUNE_PROJECT", neptune.project)
        mp.delenv("NEPTUNE_MODE", raising=False)
        mp.chdir(neptune_dir)  # neptune keeps its queue in ./.neptune
        yield {"ohsome": ohsome, "sh": sh, "neptune": neptune}


def labels_section(source: str, services: dict[str, Any]) -> dict[str, Any]:
    label_set = str(REPO / "conf" / "labels" / "v3.yaml")
    if source == "file":
        return {"label_set": label_set, "source": "file", "osm_file": str(SAMPLE / "osm" / "sample_osm.geojson")}
    if source == "ohsome":
        return {"label_set": label_set, "source": "ohsome", "ohsome_url": services["ohsome"].api_url}
    return {"label_set": label_set, "source": "corine"}


def write_config(
    tmp: Path, source: str, registry: str, services: dict[str, Any], model_name: str, tracking: Path | None = None
) -> Path:
    """A user's run YAML for one cell: the sample patch, local imagery, the cell's label source and registry.

    `tracking`: the MLflow database (default `<tmp>/mlflow.db`); the in-process cells share one, as a user's runs do.
    """
    sh = services["sh"]
    cfg = {
        "name": f"matrix-{source}-{registry}",
        "work_dir": str(tmp / "work"),
        "area": {
            "name": "sample",
            "aoi": str(SAMPLE / "aoi.geojson"),
            "time_frames": [{"start": START, "end": END}],
            "tile_size_m": 640,
            "min_land_share": 0.9,
        },
        "imagery": {
            "store": "local",
            "local_dir": str(SAMPLE / "imagery"),
            "concurrency": 2,
            "sentinelhub": {
                "base_url": sh.url,
                "token_url": sh.token_url,
                "byoc_corine_collection": CORINE_COLLECTION,
                "max_retries": 2,
                "backoff_s": 0.01,
                "timeout_s": 20,
            },
        },
        "labels": labels_section(source, services),
        "training": {"epochs": 1, "batch_size": 8, "accelerator": "cpu", "num_workers": 0},
        "registry": {
            "backend": registry,
            "model_name": model_name,
            "tracking_uri": f"sqlite:///{tracking or tmp / 'mlflow.db'}",
        },
        "serving": {"window": 64, "overlap": 16, "batch_size": 4, "edge_buffer_m": 0, "cache_size": 0},
        "pipeline": {"shards": 1, "parallelism": 1},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedded MLflow database for the module's in-process cells (each its own model name), as one user's runs
    share it: created by the first cell, not once per cell (creating one runs MLflow's schema migrations, seconds
    each)."""
    return tmp_path_factory.mktemp("matrix-mlflow") / "mlflow.db"


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def registered(config: Path) -> Path:
    """The bundle of the cell's newest registered version, resolved through the cell's registry."""
    cfg = load_run_config(config)
    return build_registry(cfg.registry, cfg.work_dir).resolve(f"{cfg.registry.model_name}@latest")


def assert_classes(tif: Path | bytes) -> None:
    with rasterio.MemoryFile(tif if isinstance(tif, bytes) else Path(tif).read_bytes()) as mem, mem.open() as src:
        data = src.read(1)
        assert src.count == 1 and src.crs is not None and data.size > 0
        assert int(data.max()) <= 6 and src.colormap(1)  # v3 classes with the colour table


# --- training entry points: lulc run, the pipeline under kfp.local ---------------------------------------------


@pytest.mark.parametrize(("source", "registry"), CELLS)
def test_lulc_run(source: str, registry: str, services: dict[str, Any], tmp_path: Path, mlflow_db: Path) -> None:
    config = write_config(tmp_path, source, registry, services, f"matrix-run-{source}", mlflow_db)
    invoke("run", "--config", str(config), "--epochs", "1")
    bundle = registered(config)
    assert (bundle / "lulc.json").is_file()
    provenance = (bundle / "lulc.json").read_text()
    assert source in provenance or (source == "file" and "sample_osm" in provenance)


@pytest.fixture(scope="module", autouse=True)
def pipeline_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[tuple[str, str], tuple[Path, subprocess.Popen[bytes], Path]]]:
    """The selected kfp.local cells, each `lulc pipeline run --local` in its own process, started when the module
    starts: they run side by side, and beside the in-process cells before them (each mostly waits on its own step
    processes; one after the other they took ~40 s each). Each has its own MLflow database (no SQLite writer
    shares it). Yields config, process and log per cell; test_pipeline_local waits for its cell."""
    cells = {
        tuple(item.callspec.params[k] for k in ("source", "registry"))
        for item in request.session.items
        if item.module is request.module and item.originalname == "test_pipeline_local"
    }
    if not cells or shutil.which("node") is None:  # nothing to start (without node the cells skip)
        yield {}
        return
    services = request.getfixturevalue("services")
    runs: dict[tuple[str, str], tuple[Path, subprocess.Popen[bytes], Path]] = {}
    try:
        for source, registry in sorted(cells):
            tmp = tmp_path_factory.mktemp(f"matrix-kfp-{source}-{registry}")
            config = write_config(tmp, source, registry, services, f"matrix-kfp-{source}")
            log = tmp / "pipeline.log"
            args = ["pipeline", "run", "--local", "--config", str(config), "--epochs", "1", "--deploy-target", "none"]
            with log.open("wb") as out:
                process = subprocess.Popen([sys.executable, "-m", "lulc.cli", *args], stdout=out, stderr=out)
            runs[(source, registry)] = (config, process, log)
        yield runs
    finally:
        for _, process, _ in runs.values():
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.mark.parametrize(("source", "registry"), PIPELINE_CELLS)
def test_pipeline_local(
    source: str,
    registry: str,
    services: dict[str, Any],
    pipeline_runs: dict[tuple[str, str], tuple[Path, subprocess.Popen[bytes], Path]],
) -> None:
    config, process, log = pipeline_runs[(source, registry)]
    assert process.wait(timeout=900) == 0, log.read_text()[-4000:]
    assert (registered(config) / "lulc.json").is_file()


# --- prediction entry points: lulc predict, lulc serve (V1, V2, original API) ---------------------------------


@pytest.fixture(scope="module")
def production(services: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, mlflow_db: Path) -> dict[str, Path]:
    """One model per registry, registered and promoted with the CLI; returns each registry's run YAML per source."""
    configs: dict[str, Path] = {}
    bundle = make_registry_bundle(tmp_path_factory.mktemp("matrix-bundle") / "bundle")
    for registry in REGISTRIES:
        root = tmp_path_factory.mktemp(f"matrix-{registry}")
        for source in SOURCES:
            (root / source).mkdir()
            configs[f"{source}-{registry}"] = write_config(
                root / source, source, registry, services, "matrix", mlflow_db
            )
            # the three sources of one registry share its store (same tracking URI / Neptune project)
            text = configs[f"{source}-{registry}"].read_text().replace(str(root / source), str(root))
            configs[f"{source}-{registry}"].write_text(text)
        config = str(configs[f"file-{registry}"])
        invoke("registry", "register", str(bundle), "--config", config)
        invoke("registry", "promote", "matrix@latest", "--stage", "production", "--config", config)
    return configs


def predict_args(fusion: str = "favour_osm") -> list[str]:
    bbox = ",".join(f"{v:.4f}" for v in BBOX)
    return ["--bbox", bbox, "--start", START, "--end", END, "--fusion-mode", fusion]


@pytest.mark.parametrize(("source", "registry"), CELLS)
def test_lulc_predict(source: str, registry: str, production: dict[str, Path], tmp_path: Path) -> None:
    config = production[f"{source}-{registry}"]
    out = tmp_path / "pred.tif"
    invoke("predict", "--model", "matrix@production", "--config", str(config), *predict_args(), "-o", str(out))
    assert_classes(out)


def terminate(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def servers(production: dict[str, Path]) -> Iterator[dict[str, str]]:
    """One `lulc serve` per cell (label source x registry), each with that cell's run YAML, started side by side
    (each waits mostly on its own imports and warm-up; one at a time they took minutes)."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(production)) as pool:
        started = {
            cell: pool.submit(
                stack.enter_context, local_server("matrix@production", cfg, cli=True, ready_timeout_s=600)
            )
            for cell, cfg in production.items()
        }
        wait(started.values())  # every server up (or failed) before any is used or the stack stops them
        servers = {cell: future.result() for cell, future in started.items()}
        # on exit, SIGTERM all at once (then each context waits for its own): graceful shutdowns overlap
        stack.callback(terminate, [pid for _, pid in servers.values()])
        yield {cell: url for cell, (url, _) in servers.items()}


AREA = {"area_coords": BBOX, "start_date": START, "end_date": END, "fusion_mode": "favour_osm"}


@pytest.mark.parametrize(("source", "registry"), CELLS)
def test_serve_original_api(source: str, registry: str, servers: dict[str, str]) -> None:
    response = requests.post(f"{servers[f'{source}-{registry}']}/segment/", json=AREA, timeout=120)
    assert response.status_code == 200, response.text
    assert_classes(response.content)


@pytest.mark.parametrize(("source", "registry"), CELLS)
def test_serve_v1(source: str, registry: str, servers: dict[str, str]) -> None:
    url = f"{servers[f'{source}-{registry}']}/v1/models/lulc:predict"
    instance = {"area_coords": BBOX, "start_date": START, "end_date": END, "fusion_mode": "favour_osm"}
    response = requests.post(url, json={"instances": [instance]}, timeout=120)
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    classes = np.asarray(prediction["classes"])
    assert classes.ndim == 2 and classes.size > 0 and int(classes.max()) <= 6


@pytest.mark.parametrize(("source", "registry"), CELLS)
def test_serve_v2(source: str, registry: str, servers: dict[str, str]) -> None:
    url = f"{servers[f'{source}-{registry}']}/v2/models/lulc/infer"
    body = {
        "inputs": [{"name": "area_coords", "shape": [4], "datatype": "FP64", "data": BBOX}],
        "parameters": {"start_date": START, "end_date": END, "fusion_mode": "favour_osm"},
    }
    response = requests.post(url, json=body, timeout=120)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["classes"]["shape"][0] > 0 and max(outputs["classes"]["data"]) <= 6


# --- refused at configuration time ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"labels": {"source": "corine"}, "imagery": {"sentinelhub": {"byoc_corine_collection": None}}}, "byoc"),
        ({"labels": {"source": "file", "osm_file": None}}, "osm_file"),
        ({"registry": {"backend": "wandb"}}, "registry.backend"),
    ],
)
def test_refused_at_configuration_time(override: dict[str, Any], field: str, tmp_path: Path) -> None:
    services = {"ohsome": None, "sh": type("SH", (), {"url": "http://127.0.0.1:9", "token_url": "http://x"})()}
    config = write_config(tmp_path, "file", "mlflow", services, "refused")
    with pytest.raises(ConfigError) as info:
        load_run_config(config, override)
    message = str(info.value)
    assert field in message and "\n" not in message
