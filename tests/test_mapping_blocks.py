"""Block COG validation and a worker's threads (`lulc_core.mapping.blocks`, `lulc_core.mapping.workers`); the whole
pipeline is checked in tests/test_mapping_local.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from lulc_core.config import MappingConfig
from lulc_core.mapping.blocks import is_cog
from lulc_core.mapping.workers import worker_threads
from lulc_core.raster import Raster, write_geotiff


@pytest.mark.parametrize("size", [100, 512, 700])
def test_a_block_cog_validates_whatever_its_size(tmp_path: Path, size: int) -> None:
    # 512 px is exactly one tile of the COG driver: rasterio calls it untiled, it is a COG all the same
    data = np.zeros((1, size, size), np.uint8)
    raster = Raster(data, from_origin(500_000, 5_000_000, 10, 10), "EPSG:32632", ["class"], None, {})
    path = write_geotiff(tmp_path / "b.tif", raster, cog=True, nodata=255, dtype="uint8")
    assert is_cog(path)
    write_geotiff(tmp_path / "plain.tif", raster, nodata=255, dtype="uint8")
    assert not is_cog(tmp_path / "plain.tif")


def test_worker_threads_follow_the_cpu_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lulc_core.mapping import workers

    assert worker_threads(MappingConfig(cpu_per_worker=2.7)) == 2
    assert worker_threads(MappingConfig(cpu_per_worker=0.5)) == 1
    cpu_max = tmp_path / "cpu.max"  # a pod's cgroup v2 limit, as the kubelet writes it
    monkeypatch.setattr(workers, "CGROUP_V2", cpu_max)
    cpu_max.write_text("300000 100000\n")
    assert worker_threads(MappingConfig(parallelism=8)) == 3
    assert worker_threads(MappingConfig(parallelism=8, cpu_per_worker=1)) == 1  # the setting wins
    cpu_max.write_text("max 100000\n")  # no limit: the machine's cores shared by the workers running at once
    cores = len(os.sched_getaffinity(0))
    assert worker_threads(MappingConfig(parallelism=1)) == cores
    assert worker_threads(MappingConfig(parallelism=cores * 2)) == 1
