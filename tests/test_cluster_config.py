"""conf/cluster.yaml: a real area on a GPU cluster — it validates, its cluster-side paths exist in the image, and
`lulc pipeline compile -c conf/cluster.yaml` yields a pipeline whose train task requests the accelerator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from lulc.cli import app
from lulc_core.config import RunConfig, load_run_config
from lulc_core.grid import build_grid
from lulc_core.imagery.sentinelhub import resolve_endpoint

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "conf" / "cluster.yaml"
IMAGE_CONF = Path("/app/conf")  # the Dockerfile copies conf/ there


@pytest.fixture(scope="module")
def cfg() -> RunConfig:
    return load_run_config(CLUSTER)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, Any]]:
    out = tmp_path_factory.mktemp("cluster") / "pipeline.yaml"
    result = CliRunner().invoke(app, ["pipeline", "compile", "-c", str(CLUSTER), "-o", str(out)])
    assert result.exit_code == 0, result.output
    pipeline, platform = yaml.safe_load_all(out.read_text())
    return pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _in_repo(path: Path) -> Path:
    """A cluster-side path under /app/conf, as the file in this checkout that the image ships."""
    assert path.is_absolute() and path.is_relative_to(IMAGE_CONF), f"{path} is not a file in the image"
    return REPO / "conf" / path.relative_to(IMAGE_CONF)


def test_cluster_paths_name_files_in_the_image(cfg: RunConfig) -> None:
    assert cfg.area.aoi is not None and _in_repo(cfg.area.aoi).is_file()
    assert _in_repo(cfg.labels.label_set).is_file()
    assert cfg.work_dir == Path("/tmp/lulc")  # writable under a read-only root filesystem (emptyDir /tmp)


def test_cluster_services(cfg: RunConfig) -> None:
    endpoint = resolve_endpoint(cfg.imagery.sentinelhub)
    assert (cfg.imagery.store, endpoint.name) == ("sentinelhub", "cdse")
    assert endpoint.base_url == "https://sh.dataspace.copernicus.eu"
    assert cfg.labels.source == "ohsome"
    assert cfg.registry.backend == "mlflow" and cfg.registry.tracking_uri
    assert cfg.registry.tracking_uri.startswith("http://") and ".svc.cluster.local" in cfg.registry.tracking_uri
    assert cfg.training.accelerator == "gpu" and cfg.pipeline.cache_pvc


def test_area_is_sized_for_the_shards(cfg: RunConfig) -> None:
    """The AOI makes hundreds of tile fetches, spread over the shards with a few dozen each."""
    local = cfg.area.model_copy(update={"aoi": _in_repo(cfg.area.aoi or Path())})
    tiles = build_grid(local, cfg.imagery.resolution)
    assert 300 <= len(tiles) <= 2000, len(tiles)
    assert cfg.pipeline.parallelism <= cfg.pipeline.shards <= len(tiles) // 10
    # the cluster-wide request rate of the parallel steps stays modest for CDSE and the public ohsome API
    assert cfg.pipeline.parallelism * cfg.imagery.sentinelhub.max_requests_per_second <= 5
    assert cfg.pipeline.parallelism * cfg.labels.max_requests_per_second <= 5


def test_compiled_train_task_requests_the_accelerator(
    cfg: RunConfig, compiled: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    pipeline, executors = compiled
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert (train["accelerator"]["resourceType"], train["accelerator"]["resourceCount"]) == ("nvidia.com/gpu", "1")
    assert "accelerator" not in pipeline["deploymentSpec"]["executors"]["exec-evaluate"]["container"]["resources"]
    platform = executors["exec-train"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in platform["tolerations"]
    assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    for step in ("exec-imagery", "exec-labels"):
        assert executors[step]["pvcMount"][0]["pvcNameParameter"]["runtimeValue"]["constant"] == "lulc-cache"
    mlflow = next(s for s in platform["secretAsEnv"] if s["secretName"] == "lulc-mlflow")
    assert "MLFLOW_S3_ENDPOINT_URL" in {m["envVar"] for m in mlflow["keyToEnv"]}
    loop = next(t for n, t in pipeline["root"]["dag"]["tasks"].items() if n.startswith("for-loop"))
    assert loop["iteratorPolicy"]["parallelismLimit"] == cfg.pipeline.parallelism
    embedded = pipeline["root"]["inputDefinitions"]["parameters"]["run_config"]["defaultValue"]
    assert RunConfig.model_validate_json(embedded) == cfg


def test_ci_retrains_with_the_cluster_configuration() -> None:
    retrain = yaml.safe_load((REPO / ".github" / "workflows" / "retrain.yml").read_text())
    dispatch = retrain[True]["workflow_dispatch"]["inputs"]["config"]  # PyYAML reads the key `on` as True
    assert dispatch["default"] == "conf/cluster.yaml"
    assert "'conf/cluster.yaml'" in retrain["jobs"]["retrain"]["env"]["LULC_CONFIG"]
    assert 'config="${LULC_CONFIG:-conf/cluster.yaml}"' in (REPO / "scripts" / "retrain.sh").read_text()
