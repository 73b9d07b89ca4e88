"""Cloud masking and composites over real Sentinel-2 scenes, through `lulc data imagery` and `lulc predict`.

The Sentinel Hub stand-in runs evalscript lulc_v2 (node) over ten real acquisitions of eo-learn's Slovenian patch
(`standins.cloudy.real_scenes`, data/sample/clouds/eolearn_scenes.npz): summer 2015 with real cloud reflectances
and the real s2cloudless CLM, winter 2016/17 with the real Sen2Cor SCL. Nothing here is synthetic except the flat
value of winter pixels that eo-learn stored without bands (all of them flagged by their real SCL). The STAC
stand-in serves the winter scenes as COG items with their real SCL asset.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from standins.cloudy import CLOUD_DN, SUMMER, WINTER, Scene, scene_grid, scene_tile, scenes_in
from standins.sentinelhub import SentinelHubStandIn
from standins.stac import StacStandIn
from typer.testing import CliRunner

from lulc_core.config import S2_BANDS
from lulc_core.grid import write_tiles
from lulc_core.imagery.clouds import SCL_INVALID

CLIENT, SECRET = "lulc-test-client", "lulc-test-secret"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_sh() -> Iterator[SentinelHubStandIn]:
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    with SentinelHubStandIn({CLIENT: SECRET}, real_scenes=True) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT)
    monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)


def _run_yaml(
    tmp: Path, server: SentinelHubStandIn | StacStandIn, frame: tuple[date, date], composite: str, bands: list[str]
) -> Path:
    if isinstance(server, StacStandIn):
        store = {"store": "stac", "stac": {"url": server.url, "max_cloud_cover": 100.0, "backoff_s": 0.01}}
    else:
        settings = {"base_url": server.url, "token_url": server.token_url, "backoff_s": 0.01, "timeout_s": 30.0}
        store = {"store": "sentinelhub", "sentinelhub": settings}
    run = {
        "name": "real-clouds",
        "work_dir": str(tmp / "work"),
        "area": {"bbox": [14.55, 45.86, 14.56, 45.87], "time_frames": [{"start": str(frame[0]), "end": str(frame[1])}]},
        "imagery": {"bands": bands, "composite": composite, "min_valid_share": 0.0, **store},
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.geojson"},
    }
    path = tmp / f"run-{composite}-{frame[0]}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def _imagery(
    tmp: Path, server: SentinelHubStandIn | StacStandIn, frame: tuple[date, date], composite: str = "median"
) -> tuple[np.ndarray, str]:
    """`lulc data imagery` of the whole patch over `frame`: (12, H, W) float32 with NaN as nodata, CLI output."""
    from lulc.cli import app

    tile = scene_tile(frame, f"slovenia-{composite}-{frame[0]}")
    tiles = tmp / f"{tile.id}.geojson"
    write_tiles([tile], tiles)
    config = _run_yaml(tmp, server, frame, composite, list(S2_BANDS))
    args = ["data", "imagery", "-c", str(config), "-t", str(tiles), "-o", str(tmp / "imagery")]
    result = CliRunner().invoke(app, [*args, "--cache-dir", str(tmp / "cache")])
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp / "imagery" / f"{tile.id}.tif") as src:
        assert list(src.descriptions) == list(S2_BANDS)
        data = src.read().astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            data[data == src.nodata] = np.nan
    return data, result.output


def _valid(scene: Scene) -> np.ndarray:
    return (scene.data > 0) & ~scene.flagged


def _mean_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a[:, where] - b[:, where]).mean())


def test_real_scl_cloud_classes_are_masked_on_every_winter_date(real_sh: SentinelHubStandIn, tmp_path: Path) -> None:
    seen: set[int] = set()
    for scene in scenes_in(WINTER):
        if not _valid(scene).any():
            continue  # 2016-12-22: flagged everywhere (the next test shows that it never leaks into a composite)
        data, _ = _imagery(tmp_path, real_sh, (scene.day, scene.day))
        nodata = ~np.isfinite(data).all(axis=0)
        scl = scene.scl.astype(int)
        flagged_by_scl = np.isin(scl, SCL_INVALID)
        seen |= set(np.unique(scl[flagged_by_scl]).tolist())
        assert nodata[flagged_by_scl].all()  # every pixel of a real SCL cloud/shadow/cirrus class is masked
        assert (nodata == ~_valid(scene)).all()  # and only those (plus CLM clouds and pixels without bands)
        assert np.allclose(data[:, ~nodata], scene.s2[:, ~nodata], atol=0.51)  # clear pixels: the real bands
    assert {3, 8, 9, 10} <= seen  # cloud shadow, medium and high probability, thin cirrus all occur


def test_real_cloud_median_composite_is_cleaner_than_any_single_date(
    real_sh: SentinelHubStandIn, tmp_path: Path
) -> None:
    scenes = scenes_in(SUMMER)
    data, _ = _imagery(tmp_path, real_sh, SUMMER)
    assert np.isfinite(data).all()  # every pixel has a clear look in summer
    cloudy = [s for s in scenes if s.flagged.any()]
    clear = [s for s in scenes if not s.flagged.any()]
    assert len(cloudy) == 2 and len(clear) == 3
    assert np.allclose(data, np.median([s.s2 for s in clear], axis=0), atol=0.51)  # no cloudy sample in it
    reference, everywhere = clear[0], np.ones(scenes[0].clm.shape, bool)  # the first clear date, all its pixels
    composite_error = _mean_abs(data, reference.s2, everywhere)
    for scene in cloudy:  # real cloud (and haze) reflectance vs the season's change of the ground
        assert composite_error < 0.5 * _mean_abs(scene.s2, reference.s2, everywhere)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_real_scl_median_composite_has_no_flagged_pixel_and_nodata_where_nothing_is_clear(
    real_sh: SentinelHubStandIn, tmp_path: Path
) -> None:
    scenes = scenes_in(WINTER)
    data, _ = _imagery(tmp_path, real_sh, WINTER)
    valid = np.stack([_valid(s) for s in scenes])
    stack = np.stack([np.where(v, s.s2, np.nan) for s, v in zip(scenes, valid, strict=True)])
    expected = np.nanmedian(stack, axis=0)
    none_clear = ~valid.any(axis=0)
    assert none_clear.sum() > 500  # real: these pixels are flagged or without bands on all five dates
    assert np.isnan(data[:, none_clear]).all() and np.isfinite(data[:, ~none_clear]).all()
    assert np.allclose(data[:, ~none_clear], expected[:, ~none_clear], atol=0.51)  # only clear samples
    assert not (data == CLOUD_DN).any()
    for scene in scenes:  # the SCL-flagged pixels of each date never reach the composite
        if scene.flagged.any() and (scene.data > 0).any():
            flagged = scene.flagged & (scene.data > 0) & ~none_clear
            assert not np.isclose(data[:, flagged], scene.s2[:, flagged], atol=0.51).all(axis=0).all()


def _first_valid(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the first valid look in the order of `scenes` (NaN where none) and where one was taken."""
    expected = np.full(scenes[0].s2.shape, np.nan)
    taken = np.zeros(scenes[0].clm.shape, bool)
    for scene in scenes:
        use = _valid(scene) & ~taken
        expected[:, use] = scene.s2[:, use]
        taken |= use
    return expected, taken


def _orbit_dates(scenes: list[Scene]) -> list[str]:
    return [f"{s.day.isoformat()}T00:00:00Z" for s in scenes]


def test_real_cloud_least_cloudy_composite_sorts_the_orbits_itself_and_fills_gaps_from_the_next(
    real_sh: SentinelHubStandIn, tmp_path: Path
) -> None:
    """The stand-in hands the ORBIT samples newest first, not in leastCC order; lulc_v2's preProcessScenes puts the
    least cloudy orbit first (mean tile cloudCoverage, ties newest first) and fills its gaps from the next."""
    newest_first = sorted(scenes_in(WINTER), key=lambda s: s.day, reverse=True)
    least_cloudy = sorted(newest_first, key=lambda s: s.cloud_percent)  # stable: ties stay newest first
    assert least_cloudy[0] is not newest_first[0]  # 2017-01-01 (0 %) vs 2017-02-20 (78 % flagged)
    data, _ = _imagery(tmp_path, real_sh, WINTER, "least_cloudy")
    order = real_sh.scene_orders[-1]["s2"]
    assert order["given"] == _orbit_dates(newest_first)  # what Sentinel Hub may hand over
    assert order["used"] == _orbit_dates(least_cloudy)  # what the evalscript made of it
    expected, taken = _first_valid(least_cloudy)
    first_gaps = ~_valid(least_cloudy[0]) & taken
    assert first_gaps.mean() > 0.08  # 9 % of the least cloudy scene has no clear look but another date has
    assert np.allclose(data[:, taken], expected[:, taken], atol=0.51)
    assert np.isnan(data[:, ~taken]).all()
    in_given_order, _ = _first_valid(newest_first)
    differs = taken & ~np.isclose(in_given_order, expected, atol=0.51).all(axis=0)
    assert differs.mean() > 0.4  # 51 %: taking the samples as handed over would give another image there


def test_real_cloud_least_cloudy_composite_keeps_the_service_order_without_tile_cloud_cover(tmp_path: Path) -> None:
    """Sentinel Hub's Evalscript V3 page describes preProcessScenes orbits without `tiles`: nothing to rank by, so
    lulc_v2 leaves the order as handed over (leastCC on the service, if it honours it for ORBIT)."""
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    newest_first = sorted(scenes_in(WINTER), key=lambda s: s.day, reverse=True)
    with SentinelHubStandIn({CLIENT: SECRET}, real_scenes=True, orbit_tiles=False) as server:
        data, _ = _imagery(tmp_path, server, WINTER, "least_cloudy")
        assert server.scene_orders[-1]["s2"]["used"] == _orbit_dates(newest_first)
    expected, taken = _first_valid(newest_first)
    assert np.allclose(data[:, taken], expected[:, taken], atol=0.51) and np.isnan(data[:, ~taken]).all()


def test_real_cloud_nodata_becomes_unknown_in_lulc_predict(
    real_sh: SentinelHubStandIn, tmp_path: Path, registry_tiny_bundle: Path
) -> None:
    from lulc.cli import app

    crs, transform, w, h = scene_grid()
    config = _run_yaml(tmp_path, real_sh, WINTER, "median", ["B02", "B03", "B04"])
    bbox = _inner_bbox(crs, transform, w, h)
    args = ["predict", "--model", str(registry_tiny_bundle), "-c", str(config), "--bbox", bbox]
    out = tmp_path / "classes.tif"
    args += ["--start", str(WINTER[0]), "--end", str(WINTER[1]), "-o", str(out), "--threshold", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(out) as src:
        classes = src.read(1)
        rows, cols = np.indices(classes.shape)
        xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
        assert src.crs == crs
    r, c = rasterio.transform.rowcol(transform, xs, ys)
    none_clear = ~np.stack([_valid(s) for s in scenes_in(WINTER)]).any(axis=0)
    holes = none_clear[np.asarray(r), np.asarray(c)].reshape(classes.shape)
    assert holes.sum() > 100
    assert (classes[holes] == 0).all() and (classes[~holes] > 0).all()  # no clear look -> unknown, never a class


def _inner_bbox(crs: rasterio.crs.CRS, transform: rasterio.Affine, w: int, h: int) -> str:
    """The patch shrunk by 30 m on each side, as W,S,E,N degrees."""
    west, north = transform.c + 30, transform.f - 30
    east, south = transform.c + 10 * w - 30, transform.f - 10 * h + 30
    box = rasterio.warp.transform_bounds(crs, "EPSG:4326", west, south, east, north)
    return ",".join(f"{v:.6f}" for v in box)


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_stac_real_scl_composite_masks_the_flagged_classes(tmp_path: Path) -> None:
    """The STAC store has SCL only (no CLM): the real SCL alone decides, the same median rule composites."""
    scenes = scenes_in(WINTER)
    with StacStandIn(real_scenes=True) as server:
        data, _ = _imagery(tmp_path, server, WINTER)  # type: ignore[arg-type]
    valid = np.stack([(s.data > 0) & ~np.isin(s.scl.astype(int), SCL_INVALID) for s in scenes])
    expected = np.nanmedian(np.stack([np.where(v, s.s2, np.nan) for s, v in zip(scenes, valid, strict=True)]), axis=0)
    none_clear = ~valid.any(axis=0)
    assert none_clear.sum() > 500 and np.isnan(data[:, none_clear]).all()
    assert np.allclose(data[:, ~none_clear], expected[:, ~none_clear], atol=0.51)
    assert not (data == CLOUD_DN).any()


def test_least_cloudy_composite_refuses_a_mosaicking_order_other_than_least_cloud(tmp_path: Path) -> None:
    from lulc.cli import app

    config = tmp_path / "run.yaml"
    run = {
        "name": "bad",
        "area": {"bbox": [14.55, 45.86, 14.56, 45.87], "time_frames": [{"start": "2017-01-01", "end": "2017-01-31"}]},
        "imagery": {
            "store": "sentinelhub",
            "composite": "least_cloudy",
            "sentinelhub": {"mosaicking_order": "mostRecent"},
        },
        "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file", "osm_file": "x.geojson"},
    }
    config.write_text(yaml.safe_dump(run))
    tiles = tmp_path / "tiles.geojson"
    write_tiles([scene_tile(WINTER)], tiles)
    result = CliRunner().invoke(app, ["data", "imagery", "-c", str(config), "-t", str(tiles), "-o", str(tmp_path)])
    assert result.exit_code != 0
    message = str(result.exception) + result.output
    assert "mosaicking_order" in message and "leastCC" in message
