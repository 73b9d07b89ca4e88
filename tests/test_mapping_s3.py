"""`lulc map run --local -o s3://bucket/prefix`: blocks, zone mosaics and STAC written to an object store (moto's
real S3 server on 127.0.0.1, reached through AWS_ENDPOINT_URL as MinIO or AWS would be), and resumable there: a block
object that exists and validates is skipped, a missing or truncated one is predicted again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import rasterio
from conftest import SAMPLE
from mapping_helpers import MODEL, copy_sample_registry, sample_config
from standins.s3 import S3StandIn
from typer.testing import CliRunner

pytestmark = pytest.mark.slow

BUCKET = "lulc-maps"
PREFIX = "runs/sample"


def _run(work: Path, config: Path, aoi: Path) -> Any:
    from lulc.cli import app

    args = ["map", "run", "--local", "-c", str(config), "--model", MODEL, "--aoi", str(aoi)]
    return CliRunner().invoke(app, [*args, "-o", f"s3://{BUCKET}/{PREFIX}", "--pipeline-root", str(work / "kfp")])


def _statuses(s3: Any) -> dict[str, str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/status/")["Contents"]
    docs = [json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()) for o in listing]
    return {d["id"]: d["status"] for d in docs}


def test_map_to_s3_and_resume_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapping_sample_registry: Path
) -> None:
    from lulc_core.mapping.blocks import is_cog

    copy_sample_registry(mapping_sample_registry, tmp_path)
    aoi = json.loads((SAMPLE / "aoi.geojson").read_text())
    aoi["features"] = aoi["features"][:1]  # one zone keeps the test short
    (tmp_path / "aoi.geojson").write_text(json.dumps(aoi))
    config = tmp_path / "run.json"
    config.write_text(sample_config(tmp_path, shards=1).model_dump_json())
    with S3StandIn() as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        s3 = server.client()
        s3.create_bucket(Bucket=BUCKET)
        first = _run(tmp_path, config, tmp_path / "aoi.geojson")
        assert first.exit_code == 0, first.output
        assert f"s3://{BUCKET}/{PREFIX}" in first.output
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]}
        blocks = sorted(k for k in keys if k.startswith(f"{PREFIX}/blocks/") and not k.endswith(".confidence.tif"))
        zones = sorted(k for k in keys if k.startswith(f"{PREFIX}/zones/"))  # classes before .confidence
        assert len(blocks) >= 4 and len(zones) == 2 and f"{PREFIX}/stac/collection.json" in keys
        assert not [k for k in keys if k.endswith(".part")]  # only complete objects
        assert set(_statuses(s3).values()) == {"done"}
        for key in (blocks[0], next(z for z in zones if not z.endswith(".confidence.tif"))):
            local = tmp_path / Path(key).name
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
        second = _run(tmp_path, config, tmp_path / "aoi.geojson")
        assert second.exit_code == 0, second.output
        statuses = _statuses(s3)
        redone = {k for k, v in statuses.items() if v == "done"}
        assert redone == {Path(blocks[0]).stem, Path(blocks[1]).stem}
        assert {v for k, v in statuses.items() if k not in redone} == {"skipped"}
