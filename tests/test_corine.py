"""CORINE Land Cover through every entry point, against the Sentinel Hub stand-in's BYOC collection.

The stand-in derives its CORINE collection from the real ESRI land-cover maps of the sample patches
(`standins.sentinelhub.ESRI_TO_CLC_INDEX`), so every result is checked against that map warped onto the result's
grid: `labels.source: corine` (lulc run, the pipeline's labels step under kfp.local), `harmonized_corine` and
`only_corine` (lulc predict in-process and --url, the predictor's V1, V2 and original API), and the refusals at
configuration time (collection, credentials, label set without corine_codes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.warp import Resampling, reproject, transform_bounds
from standins import Fault
from standins.sentinelhub import CORINE_COLLECTION, ESRI_TO_CLC_INDEX, SentinelHubStandIn, load_patches
from typer.testing import CliRunner

from lulc_core.corine import CLC_CLASSES, corine_legend, corine_lookup
from lulc_core.errors import ConfigError, InputError
from lulc_core.geo import BBox
from lulc_core.labels import LabelSet

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
V3 = REPO / "conf" / "labels" / "v3.yaml"
CLIENT, SECRET = "lulc-test-client", "lulc-test-secret"
PATCH = "433D_629L_3_1"  # Araucanía, Chile: water, trees, crops, built, rangeland
START, END = "2020-04-03", "2020-04-16"
MODE = ("--fusion-mode", "only_corine")


@pytest.fixture(scope="module")
def sh() -> Iterator[SentinelHubStandIn]:
    """The stand-in (its CORINE comes from the bundled ESRI maps, data/sample/lulc) and credentials in the env."""
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    with pytest.MonkeyPatch.context() as mp, SentinelHubStandIn({CLIENT: SECRET}) as server:
        mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on 127.0.0.1
        mp.setenv("SH_CLIENT_ID", CLIENT)
        mp.setenv("SH_CLIENT_SECRET", SECRET)
        mp.delenv("SH_CREDENTIALS_DIR", raising=False)
        yield server  # type: ignore[misc]


def sentinelhub(server: Any, **kw: Any) -> dict[str, Any]:
    base = {"backoff_s": 0.01, "max_backoff_s": 0.05, "max_retries": 3, "timeout_s": 10.0}
    if server is not None:
        base |= {"base_url": server.url, "token_url": server.token_url, "byoc_corine_collection": CORINE_COLLECTION}
    return base | kw


def run_yaml(tmp: Path, server: Any, *, labels: dict[str, Any], **sh_kw: Any) -> Path:
    """A run on the Chilean sample patch (local imagery), 1 epoch, tiny windows."""
    cfg = {
        "name": "corine",
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
            "sentinelhub": sentinelhub(server, **sh_kw),
        },
        "labels": {"label_set": str(V3)} | labels,
        "training": {"epochs": 1, "batch_size": 8, "accelerator": "cpu"},
        "registry": {"model_name": "lulc-corine"},
        "serving": {"window": 64, "overlap": 16, "batch_size": 4, "edge_buffer_m": 0, "cache_size": 0},
    }
    path = tmp / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


CORINE_LABELS = {"source": "corine"}
OSM_LABELS = {"source": "file", "osm_file": str(SAMPLE / "osm" / "sample_osm.geojson")}


def expected_index(path_or_bytes: Path | bytes) -> np.ndarray:
    """The CLC legend index the stand-in serves, on the grid of a GeoTIFF: the ESRI map of the patch warped onto
    it (nearest neighbour, as the stand-in does) and mapped by ESRI_TO_CLC_INDEX (48 = no data -> 0)."""
    patch = next(p for p in load_patches() if p.id == PATCH)
    table = np.zeros(256, np.uint8)
    for esri, index in ESRI_TO_CLC_INDEX.items():
        table[esri] = 0 if index == 48 else index
    with (
        rasterio.MemoryFile(
            path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        ) as mem,
        mem.open() as dst,
    ):
        out = np.zeros((dst.height, dst.width), np.uint8)
        common = {"src_transform": patch.transform, "src_crs": patch.crs, "dst_crs": dst.crs}
        reproject(table[patch.lulc], out, dst_transform=dst.transform, resampling=Resampling.nearest, **common)
        return out


def patch_bbox(margin: float = 0.3) -> str:
    """A W,S,E,N box inside the Chilean patch (`margin` of its size off each side)."""
    patch = next(p for p in load_patches() if p.id == PATCH)
    w, s, e, n = transform_bounds(patch.crs, "EPSG:4326", *patch.bounds)
    dx, dy = (e - w) * margin, (n - s) * margin
    return ",".join(f"{v:.5f}" for v in (w + dx, s + dy, e - dx, n - dy))


def read_tif(data: Path | bytes) -> tuple[np.ndarray, dict[int, tuple[int, ...]], dict[str, str]]:
    raw = data if isinstance(data, bytes) else Path(data).read_bytes()
    with rasterio.MemoryFile(raw) as mem, mem.open() as src:
        return src.read(1), src.colormap(1), src.tags()


def assert_clc_colours(colormap: dict[int, tuple[int, ...]]) -> None:
    """The GeoTIFF colour table is the CLC legend: value = legend index, colour = the official colour."""
    for c in CLC_CLASSES:
        hex_ = c.color.lstrip("#")
        assert colormap[c.index][:3] == tuple(int(hex_[i : i + 2], 16) for i in (0, 2, 4)), c.code


# --- labels.source: corine ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lulc_run_trains_on_corine_labels(sh: SentinelHubStandIn, tmp_path: Path, v3_label_set: LabelSet) -> None:
    from lulc.cli import app

    config = run_yaml(tmp_path, sh, labels=CORINE_LABELS)
    result = CliRunner().invoke(app, ["run", "-c", str(config)])
    assert result.exit_code == 0, result.output
    job = json.loads((tmp_path / "work" / "runs" / "corine" / "job.json").read_text())
    assert job["model_ref"] == "lulc-corine@1" and Path(job["prediction"]).is_file()
    labels = sorted(Path(job["labels_dir"]).glob("*.tif"))
    assert len(labels) >= 6
    lookup = corine_lookup(v3_label_set)
    for path in labels:
        values, colormap, tags = read_tif(path)
        assert np.array_equal(values, lookup[expected_index(path)]), path.name
        assert tags["label_source"] == "corine" and colormap[v3_label_set.value_of("water")][:3] == (1, 25, 89)
    seen = np.unique(np.concatenate([read_tif(p)[0].ravel() for p in labels]))
    assert {v3_label_set.value_of(n) for n in ("forest", "farmland", "built-up", "grass")} <= set(seen.tolist())
    assert all(p["input"]["data"][0]["type"] == "byoc-" + CORINE_COLLECTION for p in sh.payloads[-len(labels) :])


def test_pipeline_labels_step_writes_corine_labels(
    sh: SentinelHubStandIn, tmp_path: Path, v3_label_set: LabelSet
) -> None:
    from kfp import dsl, local

    from components.area_grid import area_grid
    from components.configure import configure
    from components.labels import labels
    from lulc_core.config import load_run_config

    cfg = load_run_config(run_yaml(tmp_path, sh, labels=CORINE_LABELS), {"pipeline": {"shards": 2}})

    def corine_labels(run_config: str) -> dsl.Dataset:
        conf = configure(
            run_config=run_config,
            aoi_bbox=[],
            aoi_file="",
            time_frames=[],
            label_set="",
            imagery_store="",
            model_variant="",
            epochs=0,
            registry="",
        )
        grid = area_grid(config=conf.outputs["area_grid"])
        return labels(config=conf.outputs["labels"], tiles=grid.outputs["tiles"], shard=1).outputs["rasters"]

    corine_labels.__annotations__ = {"run_config": str, "return": dsl.Dataset}  # real types (module has PEP 563)
    pipeline = dsl.pipeline(name="corine-labels")(corine_labels)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = pipeline(run_config=cfg.model_dump_json())
    written = sorted(Path(task.output.path).glob("*.tif"))
    assert written and task.output.metadata["label_set"] == "v3"
    lookup = corine_lookup(v3_label_set)
    for path in written:
        assert np.array_equal(read_tif(path)[0], lookup[expected_index(path)]), path.name


def test_corine_requests_ride_out_upstream_faults(sh: SentinelHubStandIn, tmp_path: Path) -> None:
    """The CORINE source uses the one HTTP policy: a 503 and a 429 are retried, the answer is then cached."""
    from lulc_core.config import SentinelHubConfig
    from lulc_core.geo import tile_for_bbox
    from lulc_core.imagery.corine import CorineSource

    source = CorineSource(SentinelHubConfig.model_validate(sentinelhub(sh)), tmp_path / "cache")
    west, south, east, north = (float(v) for v in patch_bbox().split(","))
    area = BBox(west=west, south=south, east=east, north=north)
    tile = tile_for_bbox(area, 10.0, date.fromisoformat(START), date.fromisoformat(END))
    sh.faults.add("POST /api/v1/process", Fault.http(503), times=1)
    sh.faults.add("POST /api/v1/process", Fault.http(429, retry_after="10"), times=1)
    before = len(sh.payloads)
    codes = source.corine_codes(tile)
    assert set(np.unique(codes.data).tolist()) <= {0, *(c.code for c in CLC_CLASSES)} and codes.data.any()
    assert source.corine_codes(tile).data.tolist() == codes.data.tolist()
    assert len(sh.payloads) == before + 1  # the faults never reached the renderer; the second call was cached


# --- harmonized_corine and only_corine at prediction time --------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init SegFormer-b0 bundle on the sample bands with the v3 label set (corine_codes included)."""
    sys.path.insert(0, str(REPO / "tests"))
    from serving_helpers import make_bundle

    return make_bundle(tmp_path_factory.mktemp("corine-bundle") / "bundle")


def predict(config: Path, bundle: Path, out: Path, mode: str, *extra: str) -> Any:
    from lulc.cli import app

    args = ["predict", "--model", str(bundle), "-c", str(config), "--bbox", patch_bbox(), "--start", START]
    return CliRunner().invoke(app, [*args, "--end", END, "-o", str(out), "--fusion-mode", mode, *extra])


def test_lulc_predict_only_corine_and_harmonized(
    sh: SentinelHubStandIn, tmp_path: Path, bundle_dir: Path, v3_label_set: LabelSet
) -> None:
    # a model trained on OSM labels, served with CORINE available (imagery.sentinelhub.byoc_corine_collection)
    config = run_yaml(tmp_path, sh, labels=OSM_LABELS)
    raw = predict(config, bundle_dir, tmp_path / "raw.tif", "only_corine", "--preview", str(tmp_path / "raw.png"))
    assert raw.exit_code == 0, raw.output
    values, colormap, tags = read_tif(tmp_path / "raw.tif")
    assert np.array_equal(values, expected_index(tmp_path / "raw.tif"))
    assert {25, 12, 2, 41} <= set(np.unique(values).tolist())  # mixed forest, arable land, urban, water bodies
    assert_clc_colours(colormap)
    assert tags["LABEL_SET"] == "corine_clc" and tags["CLASS_25"] == "313 Mixed forest"
    assert tags["FUSION_MODE"] == "only_corine"
    assert (tmp_path / "raw.png").read_bytes()[:4] == b"\x89PNG"
    no_probabilities = predict(config, bundle_dir, tmp_path / "p.tif", "only_corine", "--probabilities")
    assert isinstance(no_probabilities.exception, InputError)
    assert no_probabilities.exception.field == "options.probabilities"

    harmonized = predict(config, bundle_dir, tmp_path / "harmonized.tif", "harmonized_corine", "--probabilities")
    assert harmonized.exit_code == 0, harmonized.output
    classes, colormap, tags = read_tif(tmp_path / "harmonized.tif")
    assert np.array_equal(classes, corine_lookup(v3_label_set)[values])
    assert colormap[v3_label_set.value_of("forest")][:3] == (100, 126, 67) and tags["LABEL_SET"] == "v3"
    with rasterio.open(tmp_path / "harmonized.probabilities.tif") as src:
        assert src.count == 6 and np.array_equal(src.read().argmax(0) + 1, np.where(classes > 0, classes, 1))


def test_lulc_predict_corine_with_a_corine_label_source(
    sh: SentinelHubStandIn, tmp_path: Path, bundle_dir: Path
) -> None:
    """labels.source: corine alone gives CORINE to every mode (favour_osm fuses with harmonised CORINE)."""
    config = run_yaml(tmp_path, sh, labels=CORINE_LABELS)
    only = predict(config, bundle_dir, tmp_path / "osm.tif", "only_osm")
    assert only.exit_code == 0, only.output
    harmonized = predict(config, bundle_dir, tmp_path / "harmonized.tif", "harmonized_corine")
    assert harmonized.exit_code == 0, harmonized.output
    assert np.array_equal(read_tif(tmp_path / "osm.tif")[0], read_tif(tmp_path / "harmonized.tif")[0])


def test_http_predictor_serves_corine_on_v1_v2_and_the_original_api(
    sh: SentinelHubStandIn, tmp_path: Path, bundle_dir: Path, v3_label_set: LabelSet
) -> None:
    import requests

    from lulc.cli import app
    from serving.process import local_server

    config = run_yaml(tmp_path, sh, labels=OSM_LABELS)
    w, s, e, n = (float(v) for v in patch_bbox().split(","))
    area = {"area_coords": [w, s, e, n], "start_date": START, "end_date": END}
    names = corine_legend().names
    with local_server(bundle_dir, config, ready_timeout_s=120) as (url, _):
        utm = {"fusion_mode": "only_corine", "grid": "utm"}  # the stand-in's grid (default: the original's EPSG:4326)
        r = requests.post(f"{url}/segment/", json=area | utm, timeout=120)
        assert r.status_code == 200, r.text
        values, colormap, _ = read_tif(r.content)
        assert np.array_equal(values, expected_index(r.content))
        assert_clc_colours(colormap)
        r = requests.post(f"{url}/segment/preview", json=area | {"fusion_mode": "only_corine"}, timeout=120)
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        describe = requests.get(f"{url}/segment/describe", timeout=30).json()
        assert {"value": 41, "code": 512, "name": "Water bodies", "color": "#80F2E6"} in describe["corine_legend"][
            "classes"
        ]
        assert describe["corine"]["Water bodies"]["raster_value"] == 41  # the original utility's shape
        assert describe["classes"][2]["corine_codes"] == [311, 312, 313]

        v1 = requests.post(
            f"{url}/v1/models/lulc:predict", json={"instances": [area | {"fusion_mode": "only_corine"}]}, timeout=120
        )
        assert v1.status_code == 200, v1.text
        (p,) = v1.json()["predictions"]
        assert np.array_equal(np.asarray(p["classes"]), values)
        assert p["class_names"] == names and p["colors"][41] == "#80F2E6"

        v2_body = {
            "inputs": [{"name": "area_coords", "shape": [4], "datatype": "FP64", "data": area["area_coords"]}],
            "parameters": {"start_date": START, "end_date": END, "fusion_mode": "harmonized_corine"},
        }
        v2 = requests.post(f"{url}/v2/models/lulc/infer", json=v2_body, timeout=120)
        assert v2.status_code == 200, v2.text
        out = v2.json()["outputs"][0]
        harmonized = np.asarray(out["data"], np.uint8).reshape(out["shape"])
        assert np.array_equal(harmonized, corine_lookup(v3_label_set)[values])
        assert json.loads(v2.json()["parameters"]["class_names"]) == v3_label_set.names

        remote_tif = tmp_path / "remote.tif"
        remote = CliRunner().invoke(
            app,
            [
                "predict",
                "--url",
                url,
                "--bbox",
                patch_bbox(),
                "--start",
                START,
                "--end",
                END,
                "-o",
                str(remote_tif),
                *MODE,
            ],
        )
        assert remote.exit_code == 0, remote.output
        assert np.array_equal(read_tif(tmp_path / "remote.tif")[0], values)


# --- refused at configuration time, in one line naming the field and the fix --------------------------------------


def lulc_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lulc.cli", *args], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )


def no_codes_label_set(tmp: Path) -> Path:
    raw = yaml.safe_load(V3.read_text())
    for cls in raw:
        cls.pop("corine_codes")
    path = tmp / "nocodes.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def clean_env(**set_: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SH_")} | set_
    return env | {"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}


REFUSALS = {
    "no-collection": ({"byoc_corine_collection": None}, {}, "imagery.sentinelhub.byoc_corine_collection"),
    "no-credentials": ({}, {}, "SH_CLIENT_ID"),
    "no-corine-codes": ({}, {"label_set": "NOCODES"}, "labels.label_set"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_lulc_run_refuses_misconfigured_corine_before_any_step(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lulc.cli import app

    sh_kw, labels, field = REFUSALS[case]
    labels = {k: str(no_codes_label_set(tmp_path)) if v == "NOCODES" else v for k, v in labels.items()}
    config = run_yaml(tmp_path, SimpleServer(), labels=CORINE_LABELS | labels, **sh_kw)
    creds = {} if case == "no-credentials" else {"SH_CLIENT_ID": CLIENT, "SH_CLIENT_SECRET": SECRET}
    if case == "no-collection":  # the real command once: its whole output is one line on stderr, exit code 2
        result = lulc_cli("run", "-c", str(config), env=clean_env(**creds))
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0] and " — " in lines[0], result.stderr
    else:
        for key in ("SH_CLIENT_ID", "SH_CLIENT_SECRET", "SH_CREDENTIALS_DIR"):
            monkeypatch.delenv(key, raising=False)
        for key, value in creds.items():
            monkeypatch.setenv(key, value)
        outcome = CliRunner().invoke(app, ["run", "-c", str(config)])
        assert isinstance(outcome.exception, ConfigError), outcome.output
        assert field in str(outcome.exception) and "\n" not in str(outcome.exception) and outcome.exception.fix
    assert not (tmp_path / "work" / "runs").exists(), "refused before any step ran"


@pytest.mark.parametrize("case", ["no-credentials", "no-corine-codes"])
def test_pipeline_refuses_misconfigured_corine_before_any_step(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lulc_core.config import load_run_config
    from pipelines.local import run_local

    sh_kw, labels, field = REFUSALS[case]
    labels = {k: str(no_codes_label_set(tmp_path)) if v == "NOCODES" else v for k, v in labels.items()}
    for key in ("SH_CLIENT_ID", "SH_CLIENT_SECRET", "SH_CREDENTIALS_DIR"):
        monkeypatch.delenv(key, raising=False)
    if case != "no-credentials":
        monkeypatch.setenv("SH_CLIENT_ID", CLIENT)
        monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)
    cfg = load_run_config(run_yaml(tmp_path, SimpleServer(), labels=CORINE_LABELS | labels, **sh_kw))
    with pytest.raises(ConfigError) as err:
        run_local(cfg, tmp_path / "kfp")
    assert field in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "kfp").exists()


def test_configure_step_refuses_a_label_set_without_corine_codes(tmp_path: Path) -> None:
    from components._runtime import apply_overrides
    from lulc_core.corine import check_corine_config

    cfg = apply_overrides(
        json.dumps(yaml.safe_load(run_yaml(tmp_path, SimpleServer(), labels=CORINE_LABELS).read_text())),
        label_set=str(no_codes_label_set(tmp_path)),
    )
    with pytest.raises(ConfigError, match=r"labels\.label_set: label set 'nocodes' has no corine_codes"):
        check_corine_config(cfg, credentials=False)


def test_predictor_refuses_to_start_without_credentials(tmp_path: Path, bundle_dir: Path) -> None:
    config = run_yaml(tmp_path, SimpleServer(), labels=CORINE_LABELS)
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--model", str(bundle_dir), "--config", str(config), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert "cannot start" in result.stderr and "SH_CLIENT_ID" in result.stderr


def test_corine_modes_without_a_collection_are_refused_by_lulc_predict(tmp_path: Path, bundle_dir: Path) -> None:
    config = run_yaml(tmp_path, None, labels=OSM_LABELS)
    for mode in ("only_corine", "harmonized_corine"):
        result = predict(config, bundle_dir, tmp_path / "x.tif", mode)
        assert isinstance(result.exception, InputError), result.output
        assert result.exception.field == "fusion_mode" and "byoc_corine_collection" in str(result.exception)
    assert not (tmp_path / "x.tif").exists()


def test_harmonized_corine_needs_corine_codes_in_the_model_label_set(v3_label_set: LabelSet) -> None:
    from lulc_core.inference import FusionMode
    from lulc_core.inference.fusion import check_fusion

    stripped = LabelSet(name="plain", classes=[c.model_copy(update={"corine_codes": []}) for c in v3_label_set.classes])

    class Codes:
        def corine_codes(self, tile: object) -> object:
            raise AssertionError("never fetched")

    with pytest.raises(InputError, match="no corine_codes") as err:
        check_fusion(FusionMode.HARMONIZED_CORINE, None, Codes(), stripped)
    assert err.value.field == "fusion_mode" and "only_corine" in (err.value.fix or "")
    check_fusion(FusionMode.ONLY_CORINE, None, Codes(), stripped)  # raw CORINE needs no mapping


def test_the_clc_legend_is_complete_and_attributed() -> None:
    legend = corine_legend()
    assert legend.num_classes == 45 and len({c.code for c in CLC_CLASSES}) == 44
    assert [c.index for c in CLC_CLASSES] == list(range(1, 45))
    assert legend.names[41] == "512 Water bodies" and legend.colors[23] == "#80FF00"  # 311 broad-leaved forest
    assert "European Environment Agency" in (REPO / "lulc_core" / "data" / "clc_legend.csv").read_text()


class SimpleServer:
    """Endpoints for a refusal test: nothing listens there, since nothing may be requested."""

    url = "http://127.0.0.1:9"
    token_url = "http://127.0.0.1:9/auth/realms/main/protocol/openid-connect/token"
