"""`labels.concurrency` and `labels.max_requests_per_second` reach the ohsome client from every entry point that
labels tiles: `lulc data labels` (CLI) and the pipeline's labels step (the component's function).

The ohsome stand-in answers each request after 0.8 s and records when each arrived. With 2 tiles in flight and 3
requests/s, at most 2 requests run at once (the rate alone would allow 3; the old step ran 1) and request starts
are at least ~1/3 s apart (the default rate would allow 0.2 s).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from standins.ohsome import SAMPLE_OSM, OhsomeStandIn
from typer.testing import CliRunner

from lulc_core.config import OHSOME_REQUESTS_PER_SECOND, RunConfig, load_run_config

GEOMETRY = "POST /v1/elements/geometry"
CONCURRENCY = 2
RATE = 3.0
LATENCY_S = 0.8
TILES = 4


@pytest.fixture()
def ohsome() -> Iterator[OhsomeStandIn]:
    with OhsomeStandIn(extracts=(SAMPLE_OSM,), latency_s=LATENCY_S) as server:
        yield server  # type: ignore[misc]


@pytest.fixture()
def two_class_set(repo_root: Path, tmp_path: Path) -> Path:
    """The first two classes of the v3 label set (asked for in one request per tile)."""
    classes = yaml.safe_load((repo_root / "conf/labels/v3.yaml").read_text())[:2]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(classes))
    return path


def _config(repo_root: Path, tmp_path: Path, ohsome: OhsomeStandIn, label_set: Path) -> tuple[Path, RunConfig]:
    raw = yaml.safe_load((repo_root / "conf/run.yaml").read_text())
    raw["work_dir"] = str(tmp_path / "work")
    for section, key in (("area", "aoi"), ("imagery", "local_dir")):
        raw[section][key] = str((repo_root / "conf" / raw[section][key]).resolve())
    raw["labels"] = {
        "label_set": str(label_set),
        "source": "ohsome",
        "ohsome_url": ohsome.api_url,
        "concurrency": CONCURRENCY,
        "max_requests_per_second": RATE,
    }
    raw["pipeline"] = {"shards": 1}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, load_run_config(path)


def _assert_rate_and_concurrency(ohsome: OhsomeStandIn, label_set: Path) -> None:
    starts = sorted(r.at for r in ohsome.requests if r.path == "/v1/elements/geometry")
    assert len(starts) == TILES  # one request per tile for every class of the label set
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert ohsome.max_in_flight == CONCURRENCY, ohsome.max_in_flight
    assert min(gaps) >= 1 / RATE - 0.06 > 1 / OHSOME_REQUESTS_PER_SECOND, gaps


def test_cli_data_labels_honours_rate_and_concurrency(
    repo_root: Path, tmp_path: Path, ohsome: OhsomeStandIn, two_class_set: Path, data_sample_tiles: list
) -> None:
    from lulc.cli import app
    from lulc_core.grid import write_tiles

    config, _ = _config(repo_root, tmp_path, ohsome, two_class_set)
    tiles = write_tiles(data_sample_tiles[:TILES], tmp_path / "tiles.geojson")
    args = ["data", "labels", "-c", str(config), "-t", str(tiles), "-o", str(tmp_path / "labels")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert len(list((tmp_path / "labels").glob("*.tif"))) == TILES
    _assert_rate_and_concurrency(ohsome, two_class_set)


def test_pipeline_labels_step_honours_rate_and_concurrency(
    repo_root: Path, tmp_path: Path, ohsome: OhsomeStandIn, two_class_set: Path, data_sample_tiles: list
) -> None:
    from kfp.dsl import Dataset

    from components._runtime import TILES_FILE
    from components.labels import labels
    from lulc_core.grid import write_tiles
    from lulc_core.steps import step_config

    _, cfg = _config(repo_root, tmp_path, ohsome, two_class_set)
    (tmp_path / "tiles").mkdir()
    write_tiles(data_sample_tiles[:TILES], tmp_path / "tiles" / TILES_FILE)
    rasters = Dataset(uri=str(tmp_path / "rasters"))
    config = step_config(cfg, "labels").model_dump_json()  # the slice the pipeline hands to this step
    labels.python_func(config=config, tiles=Dataset(uri=str(tmp_path / "tiles")), shard=0, rasters=rasters)
    assert rasters.metadata["tiles"] == TILES
    _assert_rate_and_concurrency(ohsome, two_class_set)
