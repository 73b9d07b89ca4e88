"""`lulc map run --local`: the whole mapping pipeline under kfp.local on the sample AOI, every artifact asserted.

The AOI is the three sample patches (three UTM zones, one time frame each) plus a fourth polygon near Berlin where
the local store has no imagery: its blocks must be reported `no_imagery`, its zone mosaic marked incomplete, the
run reported INCOMPLETE — and the other zones finish. The OSM extract lacks the sample's crop polygons, so the
model finds gaps. One run (~30 s on the shared 2 cores) serves every test of the module.

`lulc map run --local -o s3://bucket/prefix` writes blocks, zone mosaics and STAC to an object store (moto's real S3
server on 127.0.0.1, reached through AWS_ENDPOINT_URL as MinIO or AWS would be) and is resumable there: a block
object that exists and validates is skipped, a missing or truncated one is predicted again. Its first run is a
`lulc map run` process started with the module, beside the local run (each is a chain of one-process steps: one
after the other they took ~30 s each); the resume runs in process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
import shapely
from conftest import REPO, SAMPLE
from mapping_helpers import MODEL, copy_sample_registry, sample_config
from shapely.geometry import box, mapping
from standins.s3 import S3StandIn
from typer.testing import CliRunner

from lulc_core.errors import LulcError

pytestmark = pytest.mark.slow

STAC_SCHEMAS = REPO.parent / "shared" / "schemas" / "jsonschema" / "stac"
BERLIN = box(13.40, 52.50, 13.41, 52.506)
GAP_CONFIDENCE = 0.16  # the random test model is barely sure of anything (about 0.17)


BUCKET = "lulc-maps"
PREFIX = "runs/sample"
S3_TEST = "test_map_to_s3_and_resume_there"


def _s3_args(work: Path, config: Path, aoi: Path) -> list[str]:
    args = ["map", "run", "--local", "-c", str(config), "--model", MODEL, "--aoi", str(aoi)]
    return [*args, "-o", f"s3://{BUCKET}/{PREFIX}", "--pipeline-root", str(work / "kfp")]


@pytest.fixture(scope="module", autouse=True)
def s3_first_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mapping_sample_registry: Path
) -> Iterator[dict[str, Any] | None]:
    """The S3 stand-in (bucket created) and the first `lulc map run ... -o s3://` as its own process, started when
    the module starts when the S3 test is selected (else None). One zone keeps it short."""
    if not any(i.module is request.module and i.originalname == S3_TEST for i in request.session.items):
        yield None
        return
    work = tmp_path_factory.mktemp("map-s3")
    copy_sample_registry(mapping_sample_registry, work)
    aoi = json.loads((SAMPLE / "aoi.geojson").read_text())
    aoi["features"] = aoi["features"][:1]
    (work / "aoi.geojson").write_text(json.dumps(aoi))
    config = work / "run.json"
    config.write_text(sample_config(work, shards=1).model_dump_json())
    with S3StandIn() as server:
        server.create_bucket(BUCKET)
        log = work / "first-run.log"
        with log.open("wb") as out:
            command = [sys.executable, "-m", "lulc.cli", *_s3_args(work, config, work / "aoi.geojson")]
            process = subprocess.Popen(command, stdout=out, stderr=out, env=os.environ | server.env())
        try:
            yield {"work": work, "config": config, "server": server, "process": process, "log": log}
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, mapping_sample_registry: Path) -> dict[str, Any]:
    from lulc.cli import app

    work = tmp_path_factory.mktemp("map-local")
    copy_sample_registry(mapping_sample_registry, work)
    aoi = json.loads((SAMPLE / "aoi.geojson").read_text())
    aoi["features"].append(
        {"type": "Feature", "properties": {"name": "berlin", "start": "2023-06-05", "end": "2023-06-15"},
         "geometry": mapping(BERLIN)}
    )  # fmt: skip
    (work / "aoi.geojson").write_text(json.dumps(aoi))
    osm = json.loads((SAMPLE / "osm" / "sample_osm.geojson").read_text())
    osm["features"] = [f for f in osm["features"] if f["properties"].get("esri_lulc") != "crops"]
    (work / "osm.geojson").write_text(json.dumps(osm))
    cfg = sample_config(work, gap_confidence=GAP_CONFIDENCE, shards=2)
    cfg = cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"osm_file": work / "osm.geojson"})})
    config = work / "run.json"
    config.write_text(cfg.model_dump_json())
    args = ["map", "run", "--local", "-c", str(config), "--model", MODEL, "--aoi", str(work / "aoi.geojson")]
    result = CliRunner().invoke(app, [*args, "-o", str(work / "maps"), "--pipeline-root", str(work / "kfp")])
    run_dir = next((work / "kfp").glob("lulc-mapping-*"))
    return {"work": work, "result": result, "out": work / "maps", "run_dir": run_dir, "cfg": cfg}


def test_incomplete_run_is_reported_and_the_other_blocks_finish(run: dict[str, Any]) -> None:
    result = run["result"]
    assert isinstance(result.exception, LulcError), result.output
    assert "INCOMPLETE" in str(result.exception) and result.exit_code != 0
    statuses = [json.loads(p.read_text()) for p in (run["out"] / "status").glob("*.json")]
    by_status: dict[str, list[str]] = {}
    for s in statuses:
        by_status.setdefault(s["status"], []).append(s["id"])
    assert set(by_status) == {"done", "no_imagery"}
    assert all("-32633-" in i for i in by_status["no_imagery"])  # Berlin's zone
    assert len(by_status["done"]) == 27 and "blocks" in result.output


def test_cogs_are_valid_tiled_with_overviews_and_colours(run: dict[str, Any]) -> None:
    from lulc_core.mapping.blocks import is_cog

    zones = sorted((run["out"] / "zones").glob("*.tif"))
    classes = [z for z in zones if not z.name.endswith(".confidence.tif")]
    assert len(classes) == 4
    for path in zones:
        assert is_cog(path), path
        with rasterio.open(path) as src:
            assert src.nodata == 255 and src.block_shapes[0] == (256, 256)
            complete = src.tags()["LULC_COMPLETE"]
            if "-32633-" in path.name:
                assert complete == "false" and src.tags()["LULC_MISSING_BLOCKS"]
                continue
            assert complete == "true" and src.overviews(1), path
            if path in classes:
                assert src.colormap(1)[1][:3] != (0, 0, 0)
                data = src.read(1)
                assert set(np.unique(data)) <= set(range(7)) | {255} and (data < 7).mean() > 0.7
    for block in (run["out"] / "blocks").glob("*.tif"):
        assert is_cog(block), block


def _registry() -> Any:
    import referencing
    import referencing.jsonschema

    if not STAC_SCHEMAS.is_dir():
        pytest.skip(f"../shared/schemas is missing ({STAC_SCHEMAS})")
    resources = []
    for path in STAC_SCHEMAS.rglob("*.json"):
        doc = json.loads(path.read_text())
        resource = referencing.Resource.from_contents(doc, default_specification=referencing.jsonschema.DRAFT7)
        resources.append((doc["$id"].rstrip("#"), resource))
    return referencing.Registry().with_resources(resources)


def test_stac_items_are_valid_and_carry_provenance(run: dict[str, Any]) -> None:
    from jsonschema.validators import validator_for

    registry = _registry()
    base = "https://schemas.stacspec.org/v1.0.0"
    schemas = {
        kind: registry.contents(f"{base}/{kind}-spec/json-schema/{kind}.json") for kind in ("item", "collection")
    }

    def errors(doc: dict[str, Any], kind: str) -> list[str]:
        validator = validator_for(schemas[kind])(schemas[kind], registry=registry)
        return [e.message for e in validator.iter_errors(doc)]

    stac = run["out"] / "stac"
    collection = json.loads((stac / "collection.json").read_text())
    assert errors(collection, "collection") == [] and collection["stac_version"] == "1.0.0"
    assert collection["lulc:complete"] is False
    items = [json.loads(p.read_text()) for p in stac.glob("*/*.json")]
    n_blocks = len(list((run["out"] / "status").glob("*.json")))
    assert len(items) == n_blocks + 4  # one per block (done or without imagery) and per zone mosaic
    for item in items:
        assert errors(item, "item") == [], item["id"]
        props = item["properties"]
        assert props["lulc:model"] == "lulc-sample" and props["lulc:model_version"] == 1
        assert props["lulc:test_metrics"]["miou"] == pytest.approx(0.42) and props["lulc:fusion_mode"] == "only_model"
        assert props["lulc:label_set"].startswith("v3") and props["start_datetime"] <= props["end_datetime"]
        assert props["lulc:imagery_source"].startswith("local") and props["lulc:code_version"]
        for asset in item["assets"].values():
            assert (stac / item["id"] / asset["href"]).resolve().is_file()
            assert "cloud-optimized" in asset["type"]
    mosaics = {i["id"]: i for i in items if i["properties"]["lulc:kind"] == "zone mosaic"}
    assert [k for k, i in mosaics.items() if not i["properties"]["lulc:complete"]] == [
        k for k in mosaics if "-32633-" in k
    ]


def test_area_estimates_sum_to_the_aoi(run: dict[str, Any]) -> None:
    from lulc_core.mapping.plan import MapPlan

    areas = run["run_dir"] / "map-areas" / "areas"
    assert (areas / "area_chart.png").stat().st_size > 0
    table = pd.read_csv(areas / "areas.csv")
    assert list(table.columns) == [
        "feature",
        "class",
        "mapped_km2",
        "adjusted_km2",
        "ci95_km2",
        "lower_km2",
        "upper_km2",
    ]
    assert json.loads((areas / "areas.json").read_text())[0]["class"] == "built-up"
    plan = MapPlan.load(run["run_dir"] / "map-plan" / "plan")
    for feature in plan.features:
        rows = table[table.feature == feature.name]
        geom = shapely.geometry.shape(feature.geometry)
        utm = gpd.GeoSeries([geom], crs="EPSG:4326").to_crs(gpd.GeoSeries([geom], crs="EPSG:4326").estimate_utm_crs())
        assert rows.mapped_km2.sum() == pytest.approx(utm.area.iloc[0] / 1e6, rel=0.02), feature.name
        assert rows.adjusted_km2.sum() == pytest.approx(rows.mapped_km2.sum(), rel=1e-5)  # CSV: 6 decimals
        assert (rows.lower_km2 <= rows.adjusted_km2 + 1e-12).all() and (
            rows.adjusted_km2 <= rows.upper_km2 + 1e-12
        ).all()
    berlin = table[table.feature == "berlin"].set_index("class")
    assert berlin.loc["not mapped", "mapped_km2"] == pytest.approx(berlin.mapped_km2.sum())
    whole = table[table.feature == "all"]
    assert whole.mapped_km2.sum() == pytest.approx(table[table.feature != "all"].mapped_km2.sum())
    assert (whole.ci95_km2 > 0).any()


def test_gap_report(run: dict[str, Any]) -> None:
    gaps_dir = run["run_dir"] / "map-gaps" / "gaps"
    gaps = gpd.read_parquet(gaps_dir / "gaps.parquet")
    assert len(gaps) > 0 and gaps.crs.to_epsg() == 4326
    assert set(gaps.columns) >= {"class", "area_m2", "mean_confidence", "geometry"}
    assert (gaps.mean_confidence >= GAP_CONFIDENCE).all()
    assert (gaps.area_m2 >= run["cfg"].mapping.gap_min_pixels * 100).all()
    aoi = gpd.read_file(run["work"] / "aoi.geojson").union_all()
    assert gaps.geometry.within(aoi.buffer(1e-9)).all()
    stats = json.loads((gaps_dir / "gap_stats.json").read_text())
    shares = [c["osm_mapped_share"] for c in stats["per_class"].values() if c["osm_mapped_share"] is not None]
    assert shares and all(0 <= s <= 1 for s in shares) and min(shares) < 1
    conflicts = pd.read_csv(gaps_dir / "conflicts.csv")
    assert {"osm_class", "model_class"} <= set(conflicts.columns)
    assert (conflicts.osm_class != conflicts.model_class).all()
    assert (gaps_dir / "gap_map.png").stat().st_size > 0
    html = (run["run_dir"] / "map-gaps" / "report").read_text()
    assert "OSM gap report" in html and "data:image/png;base64" in html
    assert "| class |" in (run["run_dir"] / "map-gaps" / "summary").read_text()
    metrics = json.loads((run["run_dir"] / "map-gaps" / "executor_output.json").read_text())
    logged = metrics["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["gap_polygons"] == len(gaps)


def test_gaps_across_block_borders_are_one_polygon(run: dict[str, Any]) -> None:
    gaps = gpd.read_parquet(run["run_dir"] / "map-gaps" / "gaps" / "gaps.parquet")
    spanning = gaps.block.str.contains(",")
    assert spanning.sum() > 0  # the sample's gaps straddle its 128 px blocks
    for zone in gaps.zone.unique():
        part = gaps[gaps.zone == zone]
        utm = part.to_crs(part.estimate_utm_crs())
        for cls in part["class"].unique():
            same = utm[utm["class"] == cls].geometry.values
            for i in range(len(same)):  # no two polygons of a class share an edge (a corner may touch)
                shared = shapely.length(shapely.intersection(same[i], same[i + 1 :]))
                assert (shared < 1.0).all(), (zone, cls)
        # the area of a merged polygon (pixel counts summed over its blocks) is its geometry's (clipped to the AOI)
        merged = utm[spanning[gaps.zone == zone]]
        assert (merged.geometry.area <= merged.area_m2 * 1.01).all()
        assert (merged.geometry.area >= merged.area_m2 * 0.9).all()


def test_each_worker_runs_on_its_share_of_the_cores(run: dict[str, Any]) -> None:
    outputs = [json.loads(p.read_text()) for p in run["run_dir"].glob("*/map-blocks/executor_output.json")]
    meta = [o["artifacts"]["statuses"]["artifacts"][0]["metadata"] for o in outputs]
    assert len(meta) == run["cfg"].mapping.shards
    # 2 shards at parallelism 4 on this machine's cores, no cpu_per_worker: cores // 4, at least 1
    expected = max(1, len(os.sched_getaffinity(0)) // run["cfg"].mapping.parallelism)
    assert {m["threads"] for m in meta} == {expected} and all(m["peak_rss_mb"] > 0 for m in meta)


def test_a_rerun_redoes_only_missing_blocks(run: dict[str, Any]) -> None:
    from lulc_core.mapping.blocks import block_path, build_predictor, predict_blocks
    from lulc_core.mapping.plan import MapPlan

    plan = MapPlan.load(run["run_dir"] / "map-plan" / "plan")
    out, cfg = run["out"], run["cfg"]
    zone = [b for b in plan.blocks if "-32632-" in b.id]
    block_path(out, zone[0]).unlink()
    with block_path(out, zone[1]).open("r+b") as f:  # a truncated COG does not validate
        f.truncate(100)
    predictor = build_predictor(cfg, run["run_dir"] / "map-plan" / "bundle", run["work"] / "cache")
    statuses = predict_blocks(plan, zone, predictor, out)
    assert [s.status for s in statuses[:2]] == ["done", "done"]
    assert {s.status for s in statuses[2:]} == {"skipped"}


def _statuses(s3: Any) -> dict[str, str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/status/")["Contents"]
    docs = [json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()) for o in listing]
    return {d["id"]: d["status"] for d in docs}


def test_map_to_s3_and_resume_there(s3_first_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from lulc.cli import app
    from lulc_core.mapping.blocks import is_cog

    work, config, server = s3_first_run["work"], s3_first_run["config"], s3_first_run["server"]
    s3 = server.client()
    first = s3_first_run["process"].wait(timeout=900)
    output = s3_first_run["log"].read_text()
    assert first == 0, output[-4000:]
    assert f"s3://{BUCKET}/{PREFIX}" in output
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]}
    blocks = sorted(k for k in keys if k.startswith(f"{PREFIX}/blocks/") and not k.endswith(".confidence.tif"))
    zones = sorted(k for k in keys if k.startswith(f"{PREFIX}/zones/"))  # classes before .confidence
    assert len(blocks) >= 4 and len(zones) == 2 and f"{PREFIX}/stac/collection.json" in keys
    assert not [k for k in keys if k.endswith(".part")]  # only complete objects
    assert set(_statuses(s3).values()) == {"done"}
    for key in (blocks[0], next(z for z in zones if not z.endswith(".confidence.tif"))):
        local = work / Path(key).name
        s3.download_file(BUCKET, key, str(local))
        assert is_cog(local)
        with rasterio.open(local) as src:
            assert src.nodata == 255 and src.colormap(1)
    collection = json.loads(s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/stac/collection.json")["Body"].read())
    item_links = [link["href"] for link in collection["links"] if link["rel"] == "item"]
    item_key = f"{PREFIX}/stac/" + item_links[0].removeprefix("./")
    item = json.loads(s3.get_object(Bucket=BUCKET, Key=item_key)["Body"].read())
    href = item["assets"]["classes"]["href"]  # relative to the item: the catalogue moves with its prefix
    asset_key = str(Path(item_key).parent.joinpath(href)).replace("/stac/", "/", 1)
    assert not href.startswith(("/", "s3:")) and Path(asset_key).name in {Path(k).name for k in keys}

    # resume: one block object deleted, one truncated (an object, but not a valid COG): only those are redone
    s3.delete_object(Bucket=BUCKET, Key=blocks[0])
    body = s3.get_object(Bucket=BUCKET, Key=blocks[1])["Body"].read()
    s3.put_object(Bucket=BUCKET, Key=blocks[1], Body=body[:200])
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    second = CliRunner().invoke(app, _s3_args(work, config, work / "aoi.geojson"))
    assert second.exit_code == 0, second.output
    statuses = _statuses(s3)
    redone = {k for k, v in statuses.items() if v == "done"}
    assert redone == {Path(blocks[0]).stem, Path(blocks[1]).stem}
    assert {v for k, v in statuses.items() if k not in redone} == {"skipped"}
