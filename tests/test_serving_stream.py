"""GeoTIFF answers written to disk and streamed: `python -m serving` on 127.0.0.1, called over real HTTP.

POST /segment/ warps the classes straight into a temporary COG (`lulc_core.inference.write_classes`) and streams
it; the answer must be the file the in-memory path (`warp_to_bounds`, then `write_geotiff`) writes, and no
temporary file may remain — after an answer, after a client that hangs up, after a failed write. The server's
TMPDIR is a directory of the test's own, so anything left behind is seen.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_helpers import BBOX, DATES, REPO, make_bundle, write_run_config

from lulc_core.labels import LabelSet
from lulc_core.raster import Raster, read_geotiff, warp_to_bounds, write_geotiff, write_warped_geotiff
from serving.process import local_server
from serving.service import written_file

BODY = {"area_coords": BBOX, **DATES}
LABELS = LabelSet.from_yaml(REPO / "conf" / "labels" / "v3.yaml")


@dataclass
class Server:
    url: str
    scratch: Path

    def segment(self, body: dict[str, object]) -> requests.Response:
        return requests.post(self.url + "/segment/", json=body, timeout=120)

    def left_behind(self, wait_s: float = 0.0) -> list[Path]:
        """Files and directories in the server's TMPDIR (after waiting up to `wait_s` for them to go)."""
        deadline = time.monotonic() + wait_s
        while True:
            left = sorted(self.scratch.rglob("*"))
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("stream")
    scratch = tmp / "scratch"
    scratch.mkdir()
    bundle = make_bundle(tmp / "bundle")
    config = write_run_config(tmp / "run.yaml", tmp / "work")
    env = {"TMPDIR": str(scratch), "CUDA_VISIBLE_DEVICES": ""}
    with local_server(bundle, config, log_path=tmp / "server.log", cwd=REPO, env=env) as (url, _):
        yield Server(url, scratch)


def _profile(path: Path) -> dict[str, object]:
    """What a client reads of a GeoTIFF: grid, layout, colour map, names, tags, overviews, mask."""
    with rasterio.open(path) as src:
        return {
            "profile": dict(src.profile),
            "layout": src.tags(ns="IMAGE_STRUCTURE"),
            "colormap": src.colormap(1),
            "descriptions": src.descriptions,
            "tags": src.tags(),
            "overviews": src.overviews(1),
            "mask": int(src.dataset_mask().min()),
        }


def test_segment_is_the_in_memory_encoding_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    utm = server.segment(BODY | {"grid": "utm"})  # the prediction's own grid: its classes as predicted
    answer = server.segment(BODY)  # the original's answer: EPSG:4326 spanning exactly the box
    assert utm.status_code == answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/geotiff"
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert answer.headers["content-disposition"] == 'attachment; filename="segmentation.tif"'
    (tmp_path / "utm.tif").write_bytes(utm.content)
    (tmp_path / "answer.tif").write_bytes(answer.content)

    # the path before streaming: the classes warped into an array, then written from it
    classes = read_geotiff(tmp_path / "utm.tif")
    with rasterio.open(tmp_path / "answer.tif") as src:
        classes.tags = src.tags()  # the prediction's tags, in the answer's order
    expected = write_geotiff(
        tmp_path / "expected.tif", warp_to_bounds(classes, tuple(BBOX)), cog=True, colormap=LABELS.colormap()
    )
    assert _profile(tmp_path / "answer.tif") == _profile(expected)
    assert _profile(expected)["layout"]["LAYOUT"] == "COG"
    with rasterio.open(tmp_path / "answer.tif") as a, rasterio.open(expected) as e:
        assert np.array_equal(a.read(1), e.read(1))
        assert a.bounds == pytest.approx(BBOX)
    assert answer.content == expected.read_bytes()
    assert server.left_behind() == []


def test_a_client_that_hangs_up_leaves_nothing(server: Server) -> None:
    body = json.dumps(BODY | {"area_coords": [9.836, 57.2225, 9.849, 57.2295]}).encode()  # not cached yet
    request = (
        f"POST /segment/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as before:  # gone before the answer
        before.sendall(request)
    with socket.create_connection((host, int(port)), timeout=30) as during:  # gone after the status line
        during.sendall(request)
        assert during.recv(12).startswith(b"HTTP/1.1 200")
    assert server.left_behind(wait_s=30) == []
    assert requests.get(server.url + "/health", timeout=10).json() == {"status": "ok"}


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR

    def half_written(path: Path) -> None:
        path.write_bytes(b"II*\x00partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        written_file(half_written, ".tif")
    assert list(tmp_path.iterdir()) == []


def test_warping_into_the_file_gives_the_bytes_of_the_array_path(tmp_path: Path) -> None:
    # 6,000² px: GDAL splits the warp into chunks (a tiled target would get other chunks and other nearest pixels)
    n = 6000
    rows, cols = np.ogrid[0:n, 0:n]
    classes = ((rows * 7 + cols * 13) % 7).astype(np.uint8)[None]
    raster = Raster(classes, Affine(10, 0, 500_000, 0, -10, 6_200_000), CRS.from_epsg(32632), ["class"], None, {})
    box = (9.001, 55.4036, 9.9586, 55.9444)  # about the grid, in EPSG:4326
    old = write_geotiff(tmp_path / "old.tif", warp_to_bounds(raster, box), cog=True, colormap=LABELS.colormap())
    new = write_warped_geotiff(tmp_path / "new.tif", raster, box, colormap=LABELS.colormap())
    assert new.read_bytes() == old.read_bytes()
