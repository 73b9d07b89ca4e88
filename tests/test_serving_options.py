"""`serving.tta` and `serving.edge_buffer_m` reach every prediction path: `lulc predict --model` (in process),
`python -m serving` over HTTP (original API and V1), and `lulc predict --url` (sent in the request); `--config`
with `--url` is refused at parse time.

The server runs a tiny random-init bundle with `serving.tta: true` and `edge_buffer_m: 50`. Every class GeoTIFF
records what was used (tags TTA_VARIANTS and EDGE_BUFFER_M), and the classes themselves change with TTA.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import requests
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BBOX, DATES, REPO, make_bundle, write_run_config

from lulc.cli import app
from lulc_core.errors import InputError

BODY = {"area_coords": BBOX, **DATES}
AREA = ["--bbox", ",".join(map(str, BBOX)), "--start", DATES["start_date"], "--end", DATES["end_date"]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("serving-options")
    return make_bundle(tmp / "bundle"), write_run_config(tmp / "run.yaml", tmp / "work", tta=True)


@pytest.fixture(scope="module")
def url(setup: tuple[Path, Path]) -> Iterator[str]:
    from serving.process import local_server

    bundle, config = setup
    with local_server(bundle, config, cwd=REPO, ready_timeout_s=120) as (base, _):
        yield base


def _read(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with rasterio.open(path) as src:
        return src.read(1), src.tags()


def _segment(url: str, **fields: Any) -> tuple[np.ndarray, dict[str, str]]:
    response = requests.post(url + "/segment/", json=BODY | fields, timeout=120)
    assert response.status_code == 200, response.text
    with rasterio.io.MemoryFile(response.content) as mem, mem.open() as src:
        return src.read(1), src.tags()


def test_the_server_predicts_with_serving_tta_and_edge_buffer(url: str) -> None:
    classes, tags = _segment(url)
    assert tags["TTA_VARIANTS"] == "8" and float(tags["EDGE_BUFFER_M"]) == 50
    plain, plain_tags = _segment(url, tta=False, edge_buffer_m=0)
    assert plain_tags["TTA_VARIANTS"] == "0" and float(plain_tags["EDGE_BUFFER_M"]) == 0
    assert plain.shape == classes.shape and not np.array_equal(plain, classes)  # TTA changes the classes
    v1 = requests.post(
        url + "/v1/models/lulc:predict", json={"instances": [BODY | {"tta": False, "format": "geotiff"}]}, timeout=120
    )
    assert v1.status_code == 200, v1.text
    with (
        rasterio.io.MemoryFile(base64.b64decode(v1.json()["predictions"][0]["classes_geotiff"])) as mem,
        mem.open() as src,
    ):
        assert src.tags()["TTA_VARIANTS"] == "0"
    bad = requests.post(url + "/segment/", json=BODY | {"edge_buffer_m": -1}, timeout=30)
    assert bad.status_code == 422 and "edge_buffer_m" in bad.text


def test_cli_predict_url_sends_edge_buffer_and_tta(url: str, tmp_path: Path) -> None:
    out = tmp_path / "remote.tif"
    result = CliRunner().invoke(app, ["predict", "--url", url, *AREA, "-o", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert _read(out)[1]["TTA_VARIANTS"] == "8"  # the server's serving.tta
    args = ["predict", "--url", url, *AREA, "-o", str(out), "--edge-buffer-m", "0", "--no-tta"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    tags = _read(out)[1]
    assert tags["TTA_VARIANTS"] == "0" and float(tags["EDGE_BUFFER_M"]) == 0


def test_cli_predict_url_refuses_config(tmp_path: Path, setup: tuple[Path, Path]) -> None:
    args = ["predict", "--url", "http://127.0.0.1:1", *AREA, "-o", str(tmp_path / "x.tif"), "--config", str(setup[1])]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, InputError) and result.exception.field == "--config", result.output


def test_cli_predict_in_process_uses_serving_tta(setup: tuple[Path, Path], tmp_path: Path) -> None:
    bundle, config = setup
    base = ["predict", "--model", str(bundle), "--config", str(config), *AREA]
    for flags, variants in (([], "8"), (["--no-tta"], "0")):
        out = tmp_path / f"local{variants}.tif"
        result = CliRunner().invoke(app, [*base, "-o", str(out), *flags])
        assert result.exit_code == 0, result.output + repr(result.exception)
        tags = _read(out)[1]
        assert tags["TTA_VARIANTS"] == variants and float(tags["EDGE_BUFFER_M"]) == 50
