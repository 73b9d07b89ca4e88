"""The components' shared run-time helpers: configuration overrides, shards, merging, the cache directory."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from components._runtime import (
    apply_overrides,
    cache_dir,
    load_config,
    merge_dirs,
    parse_time_frames,
    select_shard,
    shard_count,
)
from lulc_core.config import RunConfig
from lulc_core.errors import ConfigError, InputError
from lulc_core.geo import Tile


@pytest.fixture()
def base_json(repo_root: Path) -> str:
    from lulc_core.config import load_run_config

    return load_run_config(repo_root / "conf" / "run.yaml").model_dump_json()


def _tiles(n: int) -> list[Tile]:
    return [
        Tile(
            id=f"t{i}",
            crs="EPSG:32632",
            bounds=(0, 0, 640, 640),
            resolution=10,
            start=date(2023, 1, 1),
            end=date(2023, 2, 1),
        )
        for i in range(n)
    ]


def test_empty_overrides_keep_the_config(base_json: str) -> None:
    assert apply_overrides(base_json).model_dump_json() == base_json


def test_overrides_apply_to_their_sections(base_json: str) -> None:
    cfg = apply_overrides(
        base_json,
        aoi_bbox=[26.93, 60.52, 26.97, 60.54],
        time_frames=["2023-05-01/2023-06-30", {"start": "2022-05-01", "end": "2022-06-30"}],
        label_set="/app/conf/labels/v3.yaml",
        model_variant="b2",
        epochs=3,
        registry="neptune",
    )
    assert cfg.area.bbox == [26.93, 60.52, 26.97, 60.54] and cfg.area.aoi is None
    assert [(t.start.isoformat(), t.end.isoformat()) for t in cfg.area.time_frames] == [
        ("2023-05-01", "2023-06-30"),
        ("2022-05-01", "2022-06-30"),
    ]
    assert str(cfg.labels.label_set) == "/app/conf/labels/v3.yaml"
    assert (cfg.model.variant, cfg.training.epochs, cfg.registry.backend) == ("b2", 3, "neptune")
    assert cfg.imagery == RunConfig.model_validate_json(base_json).imagery
    assert apply_overrides(base_json, aoi_file="/data/aoi.geojson").area.aoi == Path("/data/aoi.geojson")


def test_bad_overrides_name_the_field(base_json: str) -> None:
    with pytest.raises(InputError, match=r"time_frames\[0\]"):
        apply_overrides(base_json, time_frames=["2023-06-30/2023-05-01"])
    with pytest.raises(InputError, match=r"time_frames\[1\]"):
        parse_time_frames(["2023-05-01/2023-06-30", "last summer"])
    with pytest.raises(InputError, match="aoi_bbox"):
        apply_overrides(base_json, aoi_bbox=[1, 2, 3, 4], aoi_file="/a.geojson")
    with pytest.raises(ConfigError) as err:
        apply_overrides(base_json, model_variant="b9")
    assert err.value.field == "model.variant"
    with pytest.raises(ConfigError) as err:
        apply_overrides(base_json, imagery_store="s3")
    assert err.value.field == "imagery.store"
    with pytest.raises(InputError, match="bbox"):
        apply_overrides(base_json, aoi_bbox=[10, 50, 9, 51])


def test_load_config_errors() -> None:
    with pytest.raises(ConfigError, match="empty"):
        load_config("")
    with pytest.raises(ConfigError) as err:
        load_config(json.dumps({"name": "x"}))
    assert err.value.field.startswith("run_config.")


def test_shards_cover_every_tile_once() -> None:
    tiles = _tiles(7)
    assert shard_count(7, 3) == 3 and shard_count(2, 4) == 2 and shard_count(0, 4) == 1
    shards = [select_shard(tiles, i, 3) for i in range(3)]
    assert sorted(t.id for s in shards for t in s) == sorted(t.id for t in tiles)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [t.id for t in select_shard(tiles[:2], 1, 4)] == ["t1"]
    with pytest.raises(InputError, match="shard"):
        select_shard(tiles[:2], 2, 4)


def test_merge_dirs_gathers_shards_and_rejects_overlaps(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "t0.tif").write_bytes(b"0")
    (b / "t1.tif").write_bytes(b"1")
    (b / ".t2.tif.part").write_bytes(b"partial")
    assert merge_dirs([a, b], tmp_path / "all") == 2
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["t0.tif", "t1.tif"]
    (b / "t0.tif").write_bytes(b"again")
    with pytest.raises(InputError, match=r"t0\.tif"):
        merge_dirs([a, b], tmp_path / "again")


def test_cache_dir_prefers_the_mounted_pvc(base_json: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(base_json)
    monkeypatch.delenv("LULC_CACHE_DIR", raising=False)
    assert cache_dir(cfg, "imagery") == cfg.work_dir / "cache" / "imagery"
    monkeypatch.setenv("LULC_CACHE_DIR", "/var/cache/lulc")
    assert cache_dir(cfg, "osm") == Path("/var/cache/lulc/osm")


def _registration(tmp_path: Path, storage_uri: str | None = "s3://models/lulc/1/bundle") -> Any:
    from kfp.dsl import Artifact

    path = tmp_path / "registration"
    record = {"ref": "lulc-sample@1", "name": "lulc-sample", "version": 1, "storage_uri": storage_uri, "passed": True}
    path.write_text(json.dumps(record))
    return Artifact(uri=str(path))


def test_deploy_component_skips_kubernetes_for_local_targets(base_json: str, tmp_path: Path) -> None:
    from kfp.dsl import Markdown

    from components.deploy import deploy

    report = Markdown(uri=str(tmp_path / "report"))
    url = deploy.python_func(
        config=base_json, registration=_registration(tmp_path), target="local", namespace="lulc",
        image="ghcr.io/lulc/lulc:0.1.0", gpus=0, report=report,
    )  # fmt: skip
    assert url == "" and "lulc serve --model lulc-sample@production" in Path(report.path).read_text()
    with pytest.raises(InputError, match="deploy_target"):
        deploy.python_func(
            config=base_json, registration=_registration(tmp_path), target="k8s", namespace="lulc",
            image="ghcr.io/lulc/lulc:0.1.0", gpus=0, report=report,
        )  # fmt: skip
    with pytest.raises(InputError, match="storage URI"):
        deploy.python_func(
            config=base_json, registration=_registration(tmp_path, None), target="kserve", namespace="lulc",
            image="ghcr.io/lulc/lulc:0.1.0", gpus=0, report=report,
        )  # fmt: skip


def test_deploy_component_applies_the_inference_service(
    base_json: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Target 'kserve' goes through serving.deploy with the real kubernetes client (API stand-in on 127.0.0.1)."""
    from kfp.dsl import Markdown
    from standins.kubernetes_api import KubeApiStandIn

    from components.deploy import deploy

    with KubeApiStandIn(ready_after_polls=1) as api:
        api.write_kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
        # the kubernetes client reads KUBECONFIG once, at import: point its default at the file as a new process would
        monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "kubeconfig"))
        report = Markdown(uri=str(tmp_path / "report"))
        url = deploy.python_func(
            config=base_json, registration=_registration(tmp_path), target="kserve", namespace="lulc-test",
            image="ghcr.io/lulc/lulc:0.1.0", gpus=1, report=report,
        )  # fmt: skip
        # named as in manifests/base, not after the registered model (lulc-sample)
        isvc = api.objects[("lulc-test", "inferenceservices", "lulc")]
    assert url == "http://lulc.lulc-test.example.com"
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"  # serving.* defaults
    predictor = json.dumps(isvc["spec"]["predictor"])
    assert "s3://models/lulc/1/bundle" in predictor and "ghcr.io/lulc/lulc:0.1.0" in predictor
    assert "nvidia.com/gpu" in predictor
    assert "created `lulc-test/lulc`" in Path(report.path).read_text()
