"""Cloud masking and composites through the Sentinel Hub store: the stand-in runs evalscript lulc_v2 (node) over four
cloudy observations carrying real cloud shapes (`standins.cloudy`), with ORBIT mosaicking for the median."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import numpy as np
import pytest
from standins.cloudy import CLOUD_DN, clear_scene, cloudy_tile, observations
from standins.sentinelhub import SentinelHubStandIn

from lulc_core.config import S2_BANDS, ImageryConfig, SentinelHubConfig
from lulc_core.imagery import build_imagery_store
from lulc_core.imagery.sentinelhub import SentinelHubStore

CLIENT, SECRET = "lulc-test-client", "lulc-test-secret"


@pytest.fixture
def cloudy_sh(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelHubStandIn]:
    if shutil.which("node") is None:
        pytest.skip("the Sentinel Hub stand-in runs evalscripts with node (not installed)")
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("SH_CLIENT_ID", CLIENT)
    monkeypatch.setenv("SH_CLIENT_SECRET", SECRET)
    with SentinelHubStandIn({CLIENT: SECRET}, cloudy_observations=True, clear_cloudy_patch=False) as server:
        yield server  # type: ignore[misc]


def _store(server: SentinelHubStandIn, composite: str, cloud_mask: bool = True) -> SentinelHubStore:
    sh = SentinelHubConfig(base_url=server.url, token_url=server.token_url, backoff_s=0.01, timeout_s=20.0)
    cfg = ImageryConfig(store="sentinelhub", sentinelhub=sh, composite=composite, cloud_mask=cloud_mask)  # type: ignore[arg-type]
    store = build_imagery_store(cfg)
    assert isinstance(store, SentinelHubStore)
    return store


def test_sentinelhub_cloud_composite_median_is_cleaner_than_any_single_date(cloudy_sh: SentinelHubStandIn) -> None:
    store = _store(cloudy_sh, "median")
    raster = store.fetch(cloudy_tile(), S2_BANDS)
    truth = clear_scene()[0]
    finite = np.isfinite(raster.data).all(axis=0)
    assert np.allclose(raster.data[:, finite], truth[:, finite], atol=0.51)  # no cloud left (UINT16 rounding)
    assert not (np.abs(raster.data[:, finite] - CLOUD_DN) < 1).all(axis=0).any()
    best_single = max(1 - o.cloud_percent / 100 for o in observations())
    assert finite.mean() > best_single + 0.15  # 95 % clear pixels vs 75 % on the clearest date
    all_cloudy = np.logical_and.reduce([o.clm.astype(bool) for o in observations()])
    assert (~finite == all_cloudy).all() and (~raster.valid_mask == all_cloudy).all()  # no clear look: nodata
    script = cloudy_sh.payloads[-1]["evalscript"]
    assert '"composite": "median"' in script and "Mosaicking.ORBIT" in script


def test_sentinelhub_cloud_least_cloudy_mosaic_fills_flagged_pixels_from_the_next_scene(
    cloudy_sh: SentinelHubStandIn,
) -> None:
    raster = _store(cloudy_sh, "least_cloudy").fetch(cloudy_tile(), ["B04", "B08", "SCL", "CLM"])
    least = min(observations(), key=lambda o: o.cloud_percent)  # leastCC: Sentinel Hub's first scene
    cloud = least.clm.astype(bool)
    all_cloudy = np.logical_and.reduce([o.clm.astype(bool) for o in observations()])
    filled = cloud & ~all_cloudy
    assert filled.mean() > 0.1  # the least cloudy scene's clouds are gaps worth filling
    truth = clear_scene()[0]
    assert np.allclose(raster.data[0][~all_cloudy], truth[3][~all_cloudy], atol=0.51)  # clear looks, filled too
    assert np.isnan(raster.data[:2, all_cloudy]).all() and (~raster.valid_mask == all_cloudy).all()
    data_filter = next(d for d in cloudy_sh.payloads[-1]["input"]["data"] if d["id"] == "s2")["dataFilter"]
    assert data_filter["mosaickingOrder"] == "leastCC"
    assert "Mosaicking.ORBIT" in cloudy_sh.payloads[-1]["evalscript"]


def test_sentinelhub_cloud_mask_off_keeps_the_clouds(cloudy_sh: SentinelHubStandIn) -> None:
    raster = _store(cloudy_sh, "least_cloudy", cloud_mask=False).fetch(cloudy_tile(), ["B04"])
    least = min(observations(), key=lambda o: o.cloud_percent)
    assert np.allclose(raster.data[0][least.clm.astype(bool)], CLOUD_DN)  # a cloud would become training data
    assert raster.valid_mask.all()
