"""A client and an operator of the original lulc-utility switch to lulc without changing anything.

Replays the original's request shapes (its README and `test/app/test_api.py`: start+end, end only, no dates, the
fusion modes, `POST /segment` without the slash, `/health`, `/segment/describe`, `/uncertainty`) against
`python -m serving` over real HTTP on 127.0.0.1, and checks status, media type, CRS (EPSG:4326), extent (the
requested box), the describe keys, bodies with fields lulc does not know (ignored, named in a `Warning` header),
the original's error status codes and `detail`, and the UTM opt-in. A second server starts the way an operator
of the original starts it: no arguments, only the variables of the original's `.env` (Neptune and Sentinel Hub
names, `LOG_LEVEL`, `ROOT_PATH`, no model named) plus `PORT`; as the original, it serves the newest staging
version from Neptune (the stand-in, tests/standins/neptune_api.py), each old name logs one deprecation line, and
the OpenAPI document and /docs carry the proxy's prefix. Neptune model-version ids (`CA-LULC-1`, as the original's
MODEL_VERSION) resolve to their bundle.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BBOX, REPO, free_port, make_bundle, write_run_config
from standins.neptune_api import NeptuneStandIn

from lulc_core.geo import BBox, tile_for_bbox
from lulc_core.inference.uncertainty import variance_and_entropy
from lulc_core.labels import LabelSet
from lulc_core.legacy_env import LEGACY_ENV, apply_legacy_env
from lulc_core.registry import ModelRef, is_model_ref
from serving.process import local_server

LABELS = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")
# The original's test bodies, on the bundled sample's area and dates (its imagery store was a random fixture).
START_END = {"area_coords": BBOX, "start_date": "2017-10-25", "end_date": "2017-11-04"}
END_ONLY = {"area_coords": BBOX, "end_date": "2017-11-04"}
NO_TIME = {"area_coords": BBOX}
SECRET = "sh-secret-value-0123456789"  # pragma: allowlist secret


def _tif(content: bytes) -> rasterio.io.MemoryFile:
    return rasterio.io.MemoryFile(io.BytesIO(content))


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("compat")
    bundle = make_bundle(tmp / "bundle")
    config = write_run_config(tmp / "run.yaml", tmp / "work")
    with local_server(bundle, config, log_path=tmp / "server.log", ready_timeout_s=240) as (base, _):
        yield base


def post(url: str, path: str, body: Any, **kw: Any) -> requests.Response:
    return requests.post(url + path, json=body, timeout=180, **kw)


# --- the original's request shapes ------------------------------------------------------------------------------


def test_health_as_the_original(url: str) -> None:
    r = requests.get(url + "/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_segment_is_a_geotiff_in_wgs84_clipped_to_the_box(url: str) -> None:
    r = post(url, "/segment", START_END)  # the original's test posts without the trailing slash
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/geotiff"
    assert "warning" not in r.headers
    with _tif(r.content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 4326
        assert tuple(src.bounds) == pytest.approx(tuple(BBOX), abs=1e-9)  # exactly the requested box
        assert src.count == 1 and src.dtypes[0] == "uint8"
        # about the model's 10 m resolution: 0.015 deg x 0.008 deg at 57 N is ~ 90 x 89 px
        assert 80 <= src.width <= 100 and 80 <= src.height <= 100
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        for value, rgba in LABELS.colormap().items():
            assert src.colormap(1)[value] == rgba
        assert set(np.unique(src.read(1))) <= set(range(LABELS.num_classes))
        assert src.tags()["START"] == "2017-10-25" and src.tags()["END"] == "2017-11-04"
    assert post(url, "/segment/", START_END).content == r.content  # the documented path answers the same


def test_start_date_defaults_to_a_week_before_end_date(url: str) -> None:
    r = post(url, "/segment/", END_ONLY)
    assert r.status_code == 200, r.text
    with _tif(r.content) as mem, mem.open() as src:
        assert (src.tags()["START"], src.tags()["END"]) == ("2017-10-28", "2017-11-04")


def test_no_dates_means_the_week_before_today(url: str) -> None:
    today = date.today()
    r = post(url, "/segment/", NO_TIME)
    assert r.status_code == 200, r.text  # the local sample store serves its scenes for any dates
    with _tif(r.content) as mem, mem.open() as src:
        assert (src.tags()["START"], src.tags()["END"]) == (str(today - timedelta(days=7)), str(today))


def test_extra_fields_are_ignored_and_named_in_a_warning(url: str) -> None:
    body = START_END | {"model_version": "CA-LULC-21", "colour": "red", 'we"ird': 1}
    r = post(url, "/segment/", body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/geotiff"
    warning = r.headers["warning"]
    assert warning.startswith('299 - "ignored unknown fields: ') and warning.endswith('"')
    assert "colour" in warning and "model_version" in warning and "we?ird" in warning
    assert r.content == post(url, "/segment/", START_END).content  # same answer as without them
    png = post(url, "/segment/preview", body)
    assert png.status_code == 200 and "colour" in png.headers["warning"]
    # the KServe protocols stay strict
    v1 = post(url, "/v1/models/lulc:predict", {"instances": [START_END | {"colour": "red"}]})
    assert v1.status_code == 400 and "colour" in v1.json()["field"]


def test_utm_grid_on_request(url: str) -> None:
    r = post(url, "/segment/", START_END | {"grid": "utm"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/geotiff"
    with _tif(r.content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 32632 and src.res == (10.0, 10.0)
        grid = tile_for_bbox(BBox.from_sequence(BBOX), 10.0, date(2017, 10, 25), date(2017, 11, 4))
        assert tuple(src.bounds) == pytest.approx(grid.bounds)  # the box on its UTM zone, whole pixels


def test_swapped_corners_are_put_in_order_as_the_original_did(url: str) -> None:
    w, s, e, n = BBOX
    r = post(url, "/segment/", START_END | {"area_coords": [e, n, w, s]})
    assert r.status_code == 200, r.text
    with _tif(r.content) as mem, mem.open() as src:
        assert tuple(src.bounds) == pytest.approx(tuple(BBOX), abs=1e-9)


@pytest.mark.parametrize("mode", ["favour_osm", "favour_model", "mean_mixin", "only_osm"])
def test_fusion_modes(url: str, mode: str) -> None:
    r = post(url, "/segment/", START_END | {"fusion_mode": mode})
    assert r.status_code == 200, r.text
    with _tif(r.content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 4326 and set(np.unique(src.read(1))) <= set(range(LABELS.num_classes))


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/segment/", START_END | {"threshold": 1.5}, 422, "threshold"),
        ("/segment/", START_END | {"area_coords": [-200, 57.2, 9.85, 57.23]}, 422, "area_coords"),
        ("/segment/", START_END | {"area_coords": [9.8, 95, 9.85, 57.23]}, 422, "area_coords"),
        ("/segment/", START_END | {"area_coords": [9.8, 57.2, 9.85]}, 422, "area_coords"),
        ("/segment/", START_END | {"fusion_mode": "best"}, 422, "fusion_mode"),
        ("/segment/", START_END | {"end_date": "June"}, 422, "end_date"),
        ("/segment/", {"start_date": "2017-10-25"}, 422, "area_coords"),
        ("/uncertainty/", START_END | {"fusion_mode": "favour_osm"}, 400, "fusion_mode"),
        ("/uncertainty/preview", START_END | {"fusion_mode": "mean_mixin"}, 400, "fusion_mode"),
    ],
)
def test_errors_have_the_original_status_and_detail(url: str, path: str, body: Any, status: int, field: str) -> None:
    r = post(url, path, body)
    assert r.status_code == status, r.text
    answer = r.json()
    assert answer["field"].startswith(field) and answer["fix"]
    if status == 422:  # FastAPI's validation list, as the original answered
        assert answer["detail"][0]["loc"][:2] == ["body", field]
    else:
        assert "does not support an uncertainty" in answer["detail"]


def test_describe_carries_the_original_keys(url: str) -> None:
    info = requests.get(url + "/segment/describe", timeout=30).json()
    assert [c["name"] for c in info["classes"]] == LABELS.names  # lulc's keys stay
    assert list(info["osm"]) == LABELS.names
    for value, name in enumerate(LABELS.names):
        label = info["osm"][name]
        assert label["raster_value"] == value and label["name"] == name
        assert label["color"] == list(LABELS.colormap()[value][:3])
    assert info["osm"]["forest"]["osm_filter"] and info["osm"]["unknown"]["osm_filter"] is None
    corine = info["corine"]
    assert len(corine) == 45 and corine["unknown"]["raster_value"] == 0
    assert corine["Continuous urban fabric"] == corine["Continuous urban fabric"] | {
        "raster_value": 1,
        "color": [230, 0, 77],
    }
    assert corine["Port areas"]["color"] == [230, 204, 204] and corine["Sea and ocean"]["raster_value"] == 44
    mapped = {c["osm_ref"] for c in corine.values()} - {None}
    assert mapped and mapped <= set(LABELS.names)  # harmonised onto the label set's classes


def test_uncertainty_geotiff_and_previews(url: str) -> None:
    r = post(url, "/uncertainty", START_END)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/geotiff"
    with _tif(r.content) as mem, mem.open() as src:
        assert src.crs.to_epsg() == 4326 and src.count == 2
        assert tuple(src.bounds) == pytest.approx(tuple(BBOX), abs=1e-9)
        assert src.descriptions == ("variance", "entropy")
        variance, entropy = src.read()
        assert np.nanmin(variance) >= 0 and np.nanmax(variance) <= 0.25 + 1e-6
        assert np.nanmin(entropy) >= 0 and np.nanmax(entropy) <= 1 + 1e-6 and np.nanmean(entropy) > 0
    for path in ("/uncertainty/preview", "/segment/preview"):
        png = post(url, path, START_END)
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_uncertainty_bands_are_the_originals_formulas() -> None:
    """variance = max over classes of the variance across augmentations; entropy = entropy(mean p, base=N)."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(8, 4, 3, 3)) * 3  # 8 augmentations, 4 classes, 3 x 3 px
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    variance, entropy = variance_and_entropy(p.mean(axis=0), (p * p).mean(axis=0))
    np.testing.assert_allclose(variance, np.var(p, axis=0).max(axis=0), atol=1e-6)
    mean = p.mean(axis=0)
    np.testing.assert_allclose(entropy, -(mean * np.log(mean)).sum(axis=0) / np.log(4), atol=1e-5)
    winner_variance = np.take_along_axis(np.var(p, axis=0), mean.argmax(axis=0)[None], axis=0)[0]
    assert (variance >= winner_variance - 1e-7).all() and (variance > winner_variance + 1e-4).any()


def test_openapi_documents_the_original_body(url: str) -> None:
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    body = spec["components"]["schemas"]["OriginalRequest"]
    original = {"area_coords", "start_date", "end_date", "threshold", "fusion_mode"}
    assert original | {"grid", "tta", "edge_buffer_m"} == set(body["properties"])  # lulc's opt-in extensions
    assert "image/geotiff" in spec["paths"]["/segment/"]["post"]["responses"]["200"]["content"]


# --- settings and models -----------------------------------------------------------------------------------------


def test_legacy_names_map_to_lulc_names_and_the_new_name_wins() -> None:
    env = {"SENTINELHUB_API_ID": "id", "NEPTUNE_PROJECT_ID": "ws/p", "NEPTUNE_PROJECT": "ws/new", "LOG_LEVEL": ""}
    env["MODEL_VERSION"] = "CA-LULC-21"
    notices = apply_legacy_env(env)
    assert env["SH_CLIENT_ID"] == "id" and env["NEPTUNE_PROJECT"] == "ws/new" and env["LULC_MODEL"] == "CA-LULC-21"
    assert "LULC_LOG_LEVEL" not in env  # empty, as docker's --env-file passes a blank line of the template
    assert notices == [
        "SENTINELHUB_API_ID is deprecated (lulc-utility name); set SH_CLIENT_ID instead",
        "NEPTUNE_PROJECT_ID is deprecated (lulc-utility name) and ignored: NEPTUNE_PROJECT is set and wins",
        "MODEL_VERSION is deprecated (lulc-utility name); set LULC_MODEL instead",
    ]


def test_neptune_version_ids_are_model_refs() -> None:
    assert ModelRef.parse("LULC-SEG-2") == ModelRef(name="LULC-SEG", version=2)
    assert ModelRef.parse("CA-LULC-21") == ModelRef(name="CA-LULC", version=21)
    assert is_model_ref("LULC-SEG-2") and is_model_ref("lulc@production") and not is_model_ref("models/bundle")
    assert ModelRef.parse("lulc-segformer-2") == ModelRef(name="lulc-segformer-2")  # MLflow names stay names


@pytest.fixture(scope="module")
def operator_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NeptuneStandIn, Path, dict[str, str]]]:
    """The Neptune stand-in (project key CA) holding CA-LULC-1 in staging, and an operator's `.env` of the original."""
    from lulc_core.registry.neptune_backend import NeptuneRegistry

    tmp = tmp_path_factory.mktemp("operator")
    with NeptuneStandIn(project_key="CA") as server, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
        mp.setenv("NEPTUNE_RETRIES_TIMEOUT", "2")
        mp.chdir(tmp)  # neptune keeps its queue in ./.neptune
        registry = NeptuneRegistry(
            server.project, server.api_token, "LULC", tmp / "registry-cache"
        )  # the original's key
        assert str(registry.register(make_bundle(tmp / "bundle"))) == "LULC@1"
        registry.promote("LULC@1", "staging")
        env_file = tmp / ".env"
        env_file.write_text(  # the original's .env_template, filled in, plus its README's LOG_LEVEL and ROOT_PATH
            f"NEPTUNE_PROJECT_API_TOKEN={server.api_token}\n"
            f"NEPTUNE_PROJECT_ID={server.project}\n\n"
            "# Required for the SentinelHub image store\n"
            f"SENTINELHUB_API_ID=sh-client-id\nSENTINELHUB_API_SECRET={SECRET}\n\n"
            "MINIO_HOST=\nMINIO_PORT=\nMINIO_ACCESS_KEY=\nMINIO_SECRET_KEY=\nMINIO_BUCKET=\nMINIO_SECURE=\n"
            "LULC_UVICORN_WORKERS=\n"
            "NEPTUNE_MODE=read-only\nLOG_LEVEL=debug\nROOT_PATH=/lulc\n"
        )
        yield server, tmp, read_env_file(env_file)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as `docker run --env-file` reads them (comments and blank lines skipped)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_an_operators_env_of_the_original_starts_the_server(operator_env: Any) -> None:
    server, tmp, env_vars = operator_env
    cwd = tmp / "app"  # the image's working directory: conf/run.yaml holds the imagery store and OSM source
    (cwd / "conf").mkdir(parents=True)
    write_run_config(cwd / "conf" / "run.yaml", tmp / "work")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("NEPTUNE_", "SH_", "LULC_", "ROOT_PATH"))}
    port = free_port()
    env = keep | env_vars | {"PORT": str(port), "OAUTHLIB_INSECURE_TRANSPORT": "1", "NEPTUNE_RETRIES_TIMEOUT": "2"}
    log = tmp / "server.log"
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(base + "/health", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "not ready in 240 s"
            time.sleep(0.5)
        text = log.read_text()
        for old in ("SENTINELHUB_API_ID", "SENTINELHUB_API_SECRET", "NEPTUNE_PROJECT_API_TOKEN", "NEPTUNE_PROJECT_ID"):
            assert f"{old} is deprecated (lulc-utility name); set {LEGACY_ENV[old]} instead" in text
        assert "LOG_LEVEL is deprecated (lulc-utility name); set LULC_LOG_LEVEL instead" in text
        assert "NEPTUNE_MODE is deprecated" not in text  # the Neptune client's own name, read as it is
        assert SECRET not in text and server.api_token not in text
        assert "serving CA-LULC-1, the newest staging version on Neptune" in text  # as the original, unnamed
        assert server.called("/api/leaderboard/v1/leaderboard/entries/search") > 0

        # behind a proxy at /lulc: the documents link the prefix; requests arrive with or without it
        spec = requests.get(base + "/openapi.json", timeout=30).json()
        assert spec["servers"][0]["url"] == "/lulc"
        assert requests.get(base + "/lulc/openapi.json", timeout=30).json()["paths"] == spec["paths"]
        docs = requests.get(base + "/docs", timeout=30)
        assert docs.status_code == 200 and "'/lulc/openapi.json'" in docs.text
        r = requests.post(base + "/lulc/segment/", json=START_END, timeout=180)
        assert r.status_code == 200 and r.headers["content-type"] == "image/geotiff", r.text
    finally:
        proc.terminate()
        proc.wait(60)


def test_neptune_version_ids_resolve_in_their_project(operator_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from lulc_core.config import RegistryConfig, load_run_config
    from lulc_core.errors import NotFoundError
    from lulc_core.model_source import resolve_source
    from lulc_core.registry import build_registry

    server, tmp, _ = operator_env
    monkeypatch.setenv("NEPTUNE_API_TOKEN", server.api_token)
    monkeypatch.setenv("NEPTUNE_PROJECT", server.project)
    registry = build_registry(RegistryConfig(), tmp / "work", ref="CA-LULC-1")  # mlflow configured: Neptune wins
    assert registry.backend == "neptune"
    with pytest.raises(NotFoundError, match="key 'LULC'"):
        registry.get("LULC-SEG-2")  # a version id of another project
    config = load_run_config(write_run_config(tmp / "resolve.yaml", tmp / "work"))  # registry.backend: mlflow
    path, _ = resolve_source("CA-LULC-1", config)  # what python -m serving does with LULC_MODEL=CA-LULC-1
    assert (path / "lulc.json").is_file() and path.name == "1"
