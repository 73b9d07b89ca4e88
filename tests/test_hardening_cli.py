"""Bad pipeline and configuration input through the `lulc` CLI: a non-zero exit code and one clear line.

Every case runs the real entry point (`lulc.cli.main`, in this process for speed; the last test runs the installed
`lulc` script) on a small area of the bundled sample: bad label set YAML, bad filter expressions (the position is
shown), missing or empty AOI, an empty tile grid, bad bboxes, bad dates, unknown configuration keys, bad output
paths. Each answers exactly one `error: ...` line naming the field (and a fix), no traceback, and leaves no
partial file in its output directory. A failure mid-way keeps the finished tiles only, and a re-run resumes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rasterio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hardening_helpers import run_lulc

from lulc_core.config import deep_merge
from lulc_core.grid import build_grid, read_tiles, write_tiles

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
V3 = REPO / "conf" / "labels" / "v3.yaml"
BBOX = [9.835, 57.222, 9.850, 57.230]  # 4 tiles of 640 m in sample patch 637U_59R_1_3


def base_config(work: Path) -> dict[str, Any]:
    return {
        "name": "cli-hardening",
        "work_dir": str(work),
        "area": {
            "name": "t",
            "bbox": BBOX,
            "time_frames": [{"start": "2017-10-25", "end": "2017-11-04"}],
            "tile_size_m": 640,
        },
        "imagery": {
            "store": "local",
            "local_dir": str(SAMPLE / "imagery"),
            "resolution": 10,
            "bands": ["B02", "B03", "B04"],
            "concurrency": 1,
        },
        "labels": {"label_set": str(V3), "source": "file", "osm_file": str(SAMPLE / "osm" / "sample_osm.geojson")},
    }


@dataclass
class Env:
    """The working directory of a case: a good config, a tiles file and an output directory."""

    root: Path
    tiles: Path
    out: Path

    def config(self, text: str | None = None, **changes: Any) -> str:
        """A run YAML: the good one with `changes` merged in (None deletes a key), or `text` as is."""
        path = self.root / f"run-{len(list(self.root.glob('run-*.yaml')))}.yaml"
        if text is None:
            cfg = deep_merge(base_config(self.root / "work"), changes)
            cfg["area"] = {k: v for k, v in cfg["area"].items() if v is not None}
            text = yaml.safe_dump(cfg)
        path.write_text(text)
        return str(path)

    def file(self, name: str, text: str) -> str:
        path = self.root / name
        path.write_text(text)
        return str(path)

    def directory(self, name: str) -> str:
        path = self.root / name
        path.mkdir()
        return str(path)

    def label_set(self, text: str) -> str:
        return self.file(f"labels-{len(list(self.root.glob('labels-*.yaml')))}.yaml", text)


def error_lines(stderr: str) -> list[str]:
    """The `error:` lines of stderr (progress bars end with a carriage return, not a newline)."""
    return [line.strip() for line in re.split(r"[\r\n]+", stderr) if line.strip().startswith("error:")]


def leftovers(directory: Path) -> list[str]:
    """Partial files in `directory`: temporary `.part` files, hidden files, empty files."""
    if not directory.exists():
        return []
    return sorted(
        p.name
        for p in directory.rglob("*")
        if p.is_file() and (p.suffix == ".part" or p.name.startswith(".") or not p.stat().st_size)
    )


@pytest.fixture(scope="module")
def tiles_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lulc_core.config import AreaConfig

    area = AreaConfig.model_validate(base_config(Path("w"))["area"])
    path = tmp_path_factory.mktemp("cli_tiles") / "tiles.geojson"
    write_tiles(build_grid(area, 10.0), path)
    return path


@pytest.fixture
def env(tmp_path: Path, tiles_file: Path) -> Env:
    return Env(tmp_path, tiles_file, tmp_path / "out")


FOREST = "- name: forest\n  osm_filter: {filter}\n  color: '#00FF00'\n"


def _labels(e: Env, label_set: str) -> list[str]:
    return ["data", "labels", "-c", e.config(), "-t", str(e.tiles), "-o", str(e.out), "--label-set", label_set]


def _grid(e: Env, config: str) -> list[str]:
    return ["data", "grid", "-c", config, "-o", str(e.out / "tiles.geojson")]


def _predict(e: Env, *extra: str) -> list[str]:
    return ["predict", "--model", str(e.root / "no-bundle"), "-c", e.config(), "-o", str(e.out / "p.tif"), *extra]


# name -> (args from the case's Env, exit code, fragments the error line must contain)
CASES: dict[str, tuple[Callable[[Env], list[str]], int, list[str]]] = {
    # label sets
    "label-set-yaml-syntax": (
        lambda e: _labels(e, e.label_set("- name: forest\n  osm_filter: [landuse=forest\n  color: '#00FF00'\n")),
        2,
        ["label_set", "not valid YAML", "line 3, column 8"],
    ),
    "label-set-not-a-list": (lambda e: _labels(e, e.label_set("name: forest\n")), 2, ["label_set", "list of classes"]),
    "label-set-bad-colour": (
        lambda e: _labels(e, e.label_set("- name: forest\n  osm_filter: landuse=forest\n  color: green\n")),
        2,
        ["classes.0.color", "#RRGGBB"],
    ),
    "label-set-duplicate-names": (
        lambda e: _labels(e, e.label_set(FOREST.format(filter="landuse=forest") * 2)),
        2,
        ["label_set", "unique"],
    ),
    "label-set-missing": (lambda e: _labels(e, str(e.root / "nope.yaml")), 2, ["label_set", "does not exist"]),
    "label-set-unknown-key": (
        lambda e: _labels(e, e.label_set(FOREST.format(filter="landuse=forest") + "  colour: red\n")),
        2,
        ["classes.0.colour", "remove it"],
    ),
    # filter expressions: the position and the expression are shown
    "filter-trailing-or": (
        lambda e: _labels(e, e.label_set(FOREST.format(filter="landuse=forest or"))),
        2,
        ["class 'forest'", "osm_filter", "position 17", "`landuse=forest or`"],
    ),
    "filter-unbalanced-parenthesis": (
        lambda e: _labels(e, e.label_set(FOREST.format(filter="'(landuse=forest'"))),
        2,
        ["osm_filter", "position 15", "expected `)`"],
    ),
    "filter-unknown-geometry": (
        lambda e: _labels(e, e.label_set(FOREST.format(filter="'landuse=forest and geometry:polygn'"))),
        2,
        ["osm_filter", "position 28", "unknown geometry"],
    ),
    # area of interest and tile grid
    "aoi-file-missing": (
        lambda e: _grid(e, e.config(area={"bbox": None, "aoi": str(e.root / "missing.geojson")})),
        2,
        ["area.aoi", "does not exist"],
    ),
    "aoi-without-polygons": (
        lambda e: _grid(
            e,
            e.config(
                area={"bbox": None, "aoi": e.file("empty.geojson", '{"type": "FeatureCollection", "features": []}')}
            ),
        ),
        2,
        ["area.aoi", "no polygon"],
    ),
    "aoi-not-geojson": (
        lambda e: _grid(e, e.config(area={"bbox": None, "aoi": e.file("garbage.geojson", "not json")})),
        2,
        ["area.aoi", "cannot read"],
    ),
    "empty-tile-grid": (
        lambda e: _grid(e, e.config(area={"bbox": [9.0, 55.0, 9.0005, 55.0005], "min_land_share": 0.5})),
        2,
        ["area.min_land_share", "lower min_land_share"],
    ),
    "no-time-frame-matches-aoi": (
        lambda e: _grid(e, e.config(area={"time_frames": []})),
        2,
        ["area.time_frames"],
    ),
    "tiles-file-missing": (
        lambda e: ["data", "imagery", "-c", e.config(), "-t", str(e.root / "no.geojson"), "-o", str(e.out)],
        2,
        ["tiles", "lulc data grid"],
    ),
    # bounding boxes
    "bbox-inverted-in-config": (
        lambda e: _grid(e, e.config(area={"bbox": [9.85, 57.2, 9.83, 57.3]})),
        2,
        ["area.bbox", "west"],
    ),
    "bbox-out-of-range-in-config": (
        lambda e: _grid(e, e.config(area={"bbox": [9.8, 57.2, 9.9, 97.0]})),
        2,
        ["area.bbox.north", "latitude"],
    ),
    "bbox-three-numbers-cli": (lambda e: _predict(e, "--bbox", "9.8,57.2,9.9"), 2, ["--bbox", "4 numbers", "W,S,E,N"]),
    "bbox-words-cli": (
        lambda e: ["run", "-c", e.config(), "--bbox", "west,south,east,north"],
        2,
        ["--bbox", "numbers"],
    ),
    "bbox-antimeridian-cli": (lambda e: _predict(e, "--bbox", "179.5,-17,-179.5,-16"), 2, ["--bbox", "antimeridian"]),
    # dates
    "dates-reversed-in-config": (
        lambda e: _grid(e, e.config(area={"time_frames": [{"start": "2017-11-04", "end": "2017-10-25"}]})),
        2,
        ["2017-10-25", "swap the dates"],
    ),
    "dates-impossible-in-config": (
        lambda e: _grid(e, e.config(area={"time_frames": [{"start": "2017-02-01", "end": "2017-02-30"}]})),
        2,
        ["area.time_frames.0.end", "2017-02-30"],
    ),
    "dates-malformed-cli": (
        lambda e: _predict(e, "--bbox", ",".join(map(str, BBOX)), "--start", "25.10.2017"),
        2,
        ["--start", "YYYY-MM-DD"],
    ),
    # configuration files and keys
    "config-unknown-top-level-key": (
        lambda e: _grid(e, e.config(trainng={"epochs": 2})),
        2,
        ["trainng", "did you mean `training`?"],
    ),
    "config-unknown-nested-key": (
        lambda e: _grid(e, e.config(imagery={"bandz": ["B02"]})),
        2,
        ["imagery.bandz", "did you mean `bands`?"],
    ),
    "config-unknown-sentinelhub-key": (
        lambda e: _grid(e, e.config(imagery={"sentinelhub": {"base_ur": "http://127.0.0.1:9"}})),
        2,
        ["imagery.sentinelhub.base_ur", "base_url"],
    ),
    "config-unknown-band": (
        lambda e: _grid(e, e.config(imagery={"bands": ["B02", "B99"]})),
        2,
        ["imagery.bands", "B99"],
    ),
    "config-yaml-syntax": (
        lambda e: _grid(e, e.config("area: {bbox: [1, 2\nimagery: x\n")),
        2,
        ["config", "not valid YAML", "line"],
    ),
    "config-missing": (lambda e: _grid(e, str(e.root / "nope.yaml")), 2, ["config", "does not exist"]),
    "config-not-a-mapping": (lambda e: _grid(e, e.config("- 1\n- 2\n")), 2, ["config", "mapping"]),
    # outputs
    "output-is-a-directory": (
        lambda e: ["data", "grid", "-c", e.config(), "-o", e.directory("tiles.geojson")],
        1,
        ["tiles.geojson: Is a directory", "check the path"],
    ),
    "output-unsupported-type": (
        lambda e: ["data", "grid", "-c", e.config(), "-o", str(e.out / "tiles.txt")],
        2,
        ["tiles", ".geojson or .parquet"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clear_line_and_a_nonzero_exit(
    env: Env, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    make_args, status, fragments = CASES[name]
    env.out.mkdir()
    code, stderr = run_lulc(capsys, "-q", *make_args(env))
    assert code == status, stderr
    assert "Traceback" not in stderr
    lines = error_lines(stderr)
    assert len(lines) == 1, stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not leftovers(env.root), leftovers(env.root)
    assert not (env.out.exists() and any(env.out.iterdir())), list(env.out.iterdir())  # nothing written


def test_catalogue_size() -> None:
    assert len(CASES) >= 25


def test_a_failing_tile_keeps_only_the_finished_ones_and_a_rerun_resumes(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tile 3 of 4 lies outside the imagery: exit 1 naming it, tiles 1-2 complete, no partial file; then resume."""
    tiles = read_tiles(env.tiles)
    far = tiles[2].model_copy(update={"id": "outside", "bounds": tuple(v - 200_000 for v in tiles[2].bounds)})
    broken = env.root / "broken.geojson"
    write_tiles([tiles[0], tiles[1], far, tiles[3]], broken)
    config = env.config()
    code, stderr = run_lulc(capsys, "-q", "data", "imagery", "-c", config, "-t", str(broken), "-o", str(env.out))
    assert code == 1 and "Traceback" not in stderr
    (line,) = error_lines(stderr)
    assert "outside" in line
    written = sorted(p.name for p in env.out.iterdir())
    # tiles 1-2 are done; tile 4 may have started before the failure was seen (it then finishes whole)
    assert {f"{t.id}.tif" for t in tiles[:2]} <= set(written) <= {f"{t.id}.tif" for t in tiles}
    assert not leftovers(env.out)
    for name in written:
        with rasterio.open(env.out / name) as src:
            assert src.descriptions == ("B02", "B03", "B04") and src.read().shape == (3, 64, 64)
    stamps = {name: (env.out / name).stat().st_mtime_ns for name in written}
    code, stderr = run_lulc(capsys, "-q", "data", "imagery", "-c", config, "-t", str(env.tiles), "-o", str(env.out))
    assert code == 0, stderr
    assert sorted(p.name for p in env.out.iterdir()) == sorted(f"{t.id}.tif" for t in tiles)
    assert {name: (env.out / name).stat().st_mtime_ns for name in written} == stamps  # not fetched again


def test_a_bad_filter_fails_before_any_tile_is_written(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    """The third class's filter is broken: nothing is labelled, the error names that class."""
    label_set = V3.read_text().replace("osm_filter: landuse=farmland", "osm_filter: landuse=farmland and (")
    code, stderr = run_lulc(capsys, "-q", *_labels(env, env.label_set(label_set)))
    assert code == 2
    (line,) = error_lines(stderr)
    assert "class 'farmland'" in line and "position 22" in line
    assert not env.out.exists() or not any(env.out.iterdir())


@pytest.fixture
def lulc_script() -> Iterator[str]:
    script = Path(sys.executable).with_name("lulc")
    if not script.is_file():
        pytest.fail(f"the lulc entry point is not installed beside {sys.executable}")
    yield str(script)


def test_the_installed_entry_point(env: Env, lulc_script: str) -> None:
    """The same through the `lulc` script: exit code 2, one line on stderr, nothing else."""
    config = env.config(imagery={"bandz": ["B02"]})
    done = subprocess.run(
        [lulc_script, "data", "grid", "-c", config, "-o", str(env.out / "t.geojson")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: imagery.bandz: Extra inputs are not permitted (got ['B02']) — remove it or correct its spelling "
        "(did you mean `bands`?); imagery takes store, local_dir, sentinelhub, stac, cloud_mask, composite, "
        "min_valid_share, sensor_normalisation, bands, resolution, cache_dir, concurrency"
    ]
    assert not env.out.exists()
