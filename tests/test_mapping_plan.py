"""`lulc map plan`: blocks per UTM zone clipped to the AOI, the cost before anything is fetched, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from mapping_helpers import MODEL, copy_sample_registry, register_sample_model, sample_config
from shapely.geometry import box
from typer.testing import CliRunner

from lulc_core.errors import InputError, NotFoundError


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, mapping_sample_registry: Path) -> Path:
    work = tmp_path_factory.mktemp("map-plan")
    copy_sample_registry(mapping_sample_registry, work)
    return work


def _config_file(work: Path, tmp: Path, **mapping: object) -> Path:
    """The sample configuration as a YAML file (what the CLI reads)."""
    cfg = sample_config(work, **mapping)
    path = tmp / "run.json"  # JSON is YAML
    path.write_text(cfg.model_dump_json())
    return path


def _plan(work: Path, tmp: Path, *args: str, **mapping: object):  # type: ignore[no-untyped-def]
    from lulc.cli import app

    config = _config_file(work, tmp, **mapping)
    return CliRunner().invoke(app, ["map", "plan", "-c", str(config), *args])


def test_cli_plan_prints_blocks_cost_and_saves_the_plan(work: Path, tmp_path: Path) -> None:
    from lulc_core.mapping.plan import MapPlan

    out = tmp_path / "plan.json"
    result = _plan(work, tmp_path, "--model", MODEL, "--save", str(out))
    assert result.exit_code == 0, result.output
    for word in ("blocks", "pixels", "processing units", "GPU-hours", "output size", "throughput"):
        assert word in result.output
    plan = MapPlan.load(out)
    # the three sample patches lie in three UTM zones, each with its own time frame
    assert sorted({b.crs for b in plan.blocks}) == ["EPSG:32632", "EPSG:32718", "EPSG:32736"]
    assert len(plan.zones()) == 3 and plan.model.name == "lulc-sample" and plan.model.version == 1
    assert all(b.width <= 128 and b.height <= 128 for b in plan.blocks)
    assert plan.cost.pixels == sum(b.pixels for b in plan.blocks)
    # blocks are clipped to the AOI: their union covers the AOI and adds less than a pixel row around it
    assert plan.cost.pixels * 100 / 1e6 == pytest.approx(plan.cost.aoi_km2, rel=0.03)
    assert f"{plan.cost.blocks}" in result.output and "50,000 px/s" in result.output


def test_processing_units_follow_the_sentinelhub_formula(work: Path) -> None:
    from lulc_core.imagery.sentinelhub import estimate_processing_units, load_evalscript
    from lulc_core.mapping.plan import processing_units, resolve_model

    cfg = sample_config(work)
    info, _ = resolve_model(cfg, MODEL)
    script = load_evalscript(cfg.imagery.sentinelhub.evalscript)
    from lulc_core.mapping.plan import load_features, plan_blocks

    blocks = plan_blocks("s", load_features(cfg.area), cfg.area.time_frames, 128, 10.0)
    float32 = any(script.outputs[script.output_of(b)].sample_type == "FLOAT32" for b in info.bands)
    expected = sum(
        estimate_processing_units(b.width + 20, b.height + 20, script.billed_bands(b.start, b.end), float32)
        for b in blocks
    )
    assert processing_units(cfg, blocks, info.bands, 10) == pytest.approx(expected)


def test_processing_units_count_every_orbit_sample_of_a_multi_temporal_request(work: Path, tmp_path: Path) -> None:
    """lulc_v2 mosaics ORBIT (a cloud-masked composite over the time frame): Sentinel Hub bills each data sample."""
    from lulc_core.mapping.plan import MapPlan

    out = tmp_path / "plan.json"
    result = _plan(work, tmp_path, "--model", MODEL, "--save", str(out))
    assert result.exit_code == 0, result.output
    plan = MapPlan.load(out)
    assert plan.model.bands == ["B02", "B03", "B04"]  # the S2 output only: UINT16, no FLOAT32 factor
    pad = 2 * math.ceil(sample_config(work).serving.edge_buffer_m / 10.0)  # the edge buffer is fetched too
    single = expected = 0.0
    for b in plan.blocks:
        days = (b.end - b.start).days + 1  # S2 every 5 days (14 bands incl. SCL, CLM), S1 every 6 (2), DEM once (1)
        area = max(0.01, (b.width + pad) * (b.height + pad) / 512**2)
        expected += area * (14 * math.ceil(days / 5) + 2 * math.ceil(days / 6) + 1) / 3
        single += area * 17 / 3
    assert plan.cost.processing_units == pytest.approx(expected, abs=0.01)
    assert plan.cost.processing_units > 2 * single  # the sample frames span 10..14 days: 3 S2 samples, 2-3 S1
    assert f"{plan.cost.processing_units:,.1f} processing units" in result.output


def test_country_sized_aoi_over_three_zones(work: Path, tmp_path: Path) -> None:
    """A bbox-derived polygon of Germany's extent (5.87..15.04 E, 47.27..55.06 N) spans UTM zones 31, 32, 33."""
    aoi = tmp_path / "germany.parquet"
    gpd.GeoDataFrame(
        {"name": ["Germany (bbox)"]}, geometry=[box(5.87, 47.27, 15.04, 55.06)], crs="EPSG:4326"
    ).to_parquet(aoi)
    result = _plan(
        work, tmp_path, "--model", MODEL, "--aoi", str(aoi), "--time-frame", "2023-06-01/2023-08-31",
        "--block-px", "10240", "--save", str(tmp_path / "de.json"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    from lulc_core.mapping.plan import MapPlan

    plan = MapPlan.load(tmp_path / "de.json")
    assert {b.crs for b in plan.blocks} == {"EPSG:32631", "EPSG:32632", "EPSG:32633"}
    assert 550_000 < plan.cost.aoi_km2 < 650_000 and plan.cost.pixels > 6e9
    assert plan.cost.gpu_hours == pytest.approx(plan.cost.fetched_pixels / 50_000 / 3600, rel=1e-3)
    assert max(b.width for b in plan.blocks) == 10240


def test_country_border_area_counts_each_zone_once(work: Path, tmp_path: Path) -> None:
    """Germany's border (Natural Earth) over zones 31-33: the AOI area is its geodesic area, not more.

    Zone grids reach across zone borders, so counting the whole country on each zone's blocks would count the strips
    along 6 E and 12 E twice (it did: 374,495 km2 for 357,000)."""
    from pyproj import Geod

    from lulc_core.mapping.plan import MapPlan

    aoi = Path(__file__).resolve().parents[1] / "data" / "aoi" / "germany.geojson"
    # 10 km blocks: ~3,500 instead of 220,000 at the sample's 128 px (the area does not depend on them)
    result = _plan(
        work, tmp_path, "--model", MODEL, "--aoi", str(aoi), "--time-frame", "2023-06-01/2023-08-31",
        "--save", str(tmp_path / "de.json"), "--throughput", "1e6", block_px=1024,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    plan = MapPlan.load(tmp_path / "de.json")
    geodesic = abs(Geod(ellps="WGS84").geometry_area_perimeter(gpd.read_file(aoi).geometry.iloc[0])[0]) / 1e6
    assert 350_000 < geodesic < 365_000
    assert plan.cost.aoi_km2 == pytest.approx(geodesic, rel=0.003)  # UTM scale within a zone: < 0.2 % here
    assert {b.crs for b in plan.blocks} == {"EPSG:32631", "EPSG:32632", "EPSG:32633"}


def test_calibrated_throughput_is_measured_and_said(work: Path) -> None:
    from lulc_core.mapping.plan import make_plan, resolve_model

    cfg = sample_config(work, throughput_px_s=None)
    info, bundle = resolve_model(cfg, MODEL)
    plan = make_plan(cfg, info, bundle)
    assert plan.cost.throughput_px_s > 1000 and "calibrated now" in plan.cost.throughput_source


def test_bad_input_is_one_line(work: Path, tmp_path: Path) -> None:
    from lulc_core.mapping.plan import load_features, resolve_model

    cfg = sample_config(work)
    with pytest.raises(NotFoundError, match="nope"):
        resolve_model(cfg, "nope@production")
    line = gpd.GeoDataFrame(geometry=[shapely.LineString([(9, 50), (10, 51)])], crs="EPSG:4326")
    line.to_file(tmp_path / "line.geojson")
    with pytest.raises(InputError, match="no polygon with an area"):
        load_features(cfg.area.model_copy(update={"aoi": tmp_path / "line.geojson"}))
    gpkg = tmp_path / "mixed.gpkg"
    gpd.GeoDataFrame(geometry=[box(9, 50, 10, 51)], crs="EPSG:4326").to_file(gpkg, layer="a")
    gpd.GeoDataFrame(geometry=[box(5e5, 5.5e6, 5.1e5, 5.51e6)], crs="EPSG:32632").to_file(gpkg, layer="b")
    with pytest.raises(InputError, match="different CRSs"):
        load_features(cfg.area.model_copy(update={"aoi": gpkg}))
    (tmp_path / "nocrs.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},
                    "geometry": shapely.geometry.mapping(box(5e5, 5.5e6, 5.1e5, 5.51e6))}]})
    )  # fmt: skip
    with pytest.raises(InputError, match="not degrees"):
        load_features(cfg.area.model_copy(update={"aoi": tmp_path / "nocrs.geojson"}))
    from lulc.cli import app

    result = CliRunner().invoke(app, ["map", "plan", "-c", str(_config_file(work, tmp_path)), "--model", "nope@2"])
    assert result.exit_code != 0 and isinstance(result.exception, NotFoundError)


def test_a_model_without_a_confusion_matrix_is_refused(tmp_path: Path) -> None:
    from lulc_core.mapping.plan import resolve_model

    register_sample_model(tmp_path, confusion=False)
    with pytest.raises(InputError, match="confusion matrix"):
        resolve_model(sample_config(tmp_path), MODEL)


def test_cli_run_refuses_a_model_that_does_not_resolve_before_any_step(work: Path, tmp_path: Path) -> None:
    from lulc.cli import app

    config = str(_config_file(work, tmp_path))
    result = CliRunner().invoke(app, ["map", "run", "--local", "-c", config, "--model", "nope@production"])
    assert isinstance(result.exception, NotFoundError) and "nope" in str(result.exception)
    assert not (work / "kfp").exists(), "nothing was started"
    result = CliRunner().invoke(app, ["map", "run", "-c", config, "--model", MODEL])
    assert isinstance(result.exception, InputError) and "--local" in str(result.exception)


def test_blocks_write_cogs_report_missing_imagery_and_resume(work: Path, tmp_path: Path) -> None:
    """Two sample blocks and one block near Berlin, where the local store has no imagery."""
    from lulc_core.mapping.blocks import block_path, build_predictor, is_cog, predict_blocks
    from lulc_core.mapping.plan import AoiFeature, make_plan, resolve_model

    cfg = sample_config(work)
    info, bundle = resolve_model(cfg, MODEL)
    plan = make_plan(cfg, info, bundle)
    berlin = AoiFeature(index=9, name="berlin", geometry=shapely.geometry.mapping(box(13.4, 52.5, 13.401, 52.501)))
    from lulc_core.mapping.plan import plan_blocks

    frame = cfg.area.time_frames[2]
    extra = plan_blocks("t", [berlin], [frame], 128, 10.0)
    plan = plan.model_copy(update={"features": [*plan.features, berlin], "blocks": [*plan.blocks[:2], *extra]})
    predictor = build_predictor(cfg, bundle, tmp_path / "cache")
    statuses = predict_blocks(plan, plan.blocks, predictor, tmp_path)
    assert [s.status for s in statuses] == ["done", "done", "no_imagery"]
    assert statuses[2].message and not block_path(tmp_path, plan.blocks[2]).exists()
    assert all(is_cog(block_path(tmp_path, b, kind)) for b in plan.blocks[:2] for kind in ("", "confidence"))
    assert len(list((tmp_path / "status").glob("*.json"))) == 3
    again = predict_blocks(plan, plan.blocks, predictor, tmp_path)
    assert [s.status for s in again] == ["skipped", "skipped", "no_imagery"]
    changed = plan.model_copy(update={"threshold": 0.5})  # another setting: the blocks are redone
    assert predict_blocks(changed, plan.blocks[:1], predictor, tmp_path)[0].status == "done"
