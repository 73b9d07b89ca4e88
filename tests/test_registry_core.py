"""Registry interface pieces without a backend: references, stages, the quality gate, lineage and the cache."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lulc_core.config import GateConfig
from lulc_core.errors import InputError, NotFoundError
from lulc_core.lineage import build_provenance, code_version, fingerprint_test_set, lineage_tags
from lulc_core.registry import (
    BundleCache,
    ModelRef,
    RegistrationInfo,
    flatten_metrics,
    parse_stage,
    prepare_registration,
)
from lulc_core.registry.gate import decide

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "name", "version", "alias"),
    [
        ("lulc-segformer", "lulc-segformer", None, None),
        ("lulc-segformer@latest", "lulc-segformer", None, None),
        ("lulc-segformer@3", "lulc-segformer", 3, None),
        ("lulc-segformer@v12", "lulc-segformer", 12, None),
        ("lulc-segformer@Production", "lulc-segformer", None, "production"),
        ("models:/lulc-segformer@staging", "lulc-segformer", None, "staging"),
        ("models:/lulc-segformer/7", "lulc-segformer", 7, None),
        ("@production", "default-model", None, "production"),
        ("  LULC@2 ", "LULC", 2, None),
    ],
)
def test_model_ref_parses(text: str, name: str, version: int | None, alias: str | None) -> None:
    ref = ModelRef.parse(text, default_name="default-model")
    assert (ref.name, ref.version, ref.alias) == (name, version, alias)
    assert ModelRef.parse(str(ref), default_name="default-model") == ref


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("model@", "nothing after '@'"),
        ("a@b@c", "more than one '@'"),
        ("@production", "names no model"),
        ("bad name@1", "not valid"),
        ("model@0", "versions start at 1"),
        ("model@-1", "neither a version number nor an alias"),
        ("model@prod!", "neither a version number nor an alias"),
    ],
)
def test_model_ref_rejects_malformed(text: str, needle: str) -> None:
    with pytest.raises(InputError) as err:
        ModelRef.parse(text)
    assert err.value.field == "ref"
    assert needle in str(err.value)
    assert "NAME@<version number>" in str(err.value) or "letters" in str(err.value)


def test_parse_stage() -> None:
    assert parse_stage(" Production ") == "production"
    for bad in ("", "  ", "prod", "live"):
        with pytest.raises(InputError) as err:
            parse_stage(bad)
        assert err.value.field == "stage"
        assert "none, staging, production, archived" in str(err.value)


CFG = GateConfig(min_miou=0.4, min_accuracy=0.7, must_beat_production=True, tolerance=0.01)


def test_gate_passes_first_model_meeting_thresholds() -> None:
    d = decide({"miou": 0.45, "overall_accuracy": 0.8}, None, CFG)
    assert d.passed
    assert d.numbers.candidate_miou == 0.45 and d.numbers.production_miou is None
    assert any("no production version" in r for r in d.reasons)
    tags = d.to_tags()
    assert tags["lulc.gate.passed"] == "true" and tags["lulc.gate.min_miou"] == "0.4"


def test_gate_rejects_below_threshold_and_worse_than_production() -> None:
    low = decide({"miou": 0.35, "overall_accuracy": 0.9}, None, CFG)
    assert not low.passed and any("below the threshold 0.4000" in r for r in low.reasons)
    acc = decide({"miou": 0.5, "overall_accuracy": 0.6}, None, CFG)
    assert not acc.passed and any("overall accuracy 0.6000 is below" in r for r in acc.reasons)
    worse = decide(
        {"miou": 0.45, "overall_accuracy": 0.8},
        {"miou": 0.47, "overall_accuracy": 0.8},
        CFG,
        candidate_test_set="abc",
        production_test_set="abc",
        production_version="4",
    )
    assert not worse.passed
    assert worse.numbers.production_miou == 0.47 and worse.numbers.same_test_set is True
    assert any("worse than production version 4" in r for r in worse.reasons)


def test_gate_tolerance_and_test_set_mismatch_note() -> None:
    within = decide({"miou": 0.465, "overall_accuracy": 0.8}, {"miou": 0.47}, CFG, production_version="2")
    assert within.passed  # 0.465 >= 0.47 - 0.01
    assert within.numbers.same_test_set is False
    assert any("test sets differ or are unknown" in r for r in within.reasons)
    off = decide({"miou": 0.3}, {"miou": 0.9}, GateConfig(must_beat_production=False))
    assert off.passed and any("disabled" in r for r in off.reasons)


def test_gate_without_metrics_never_passes() -> None:
    d = decide({"per_class/forest/iou": 0.9, "miou": float("nan")}, None, GateConfig())
    assert not d.passed
    assert "evaluate the model" in d.reasons[0]


def test_lineage_code_version_and_fallback(tmp_path: Path) -> None:
    sha = code_version(REPO)
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", sha)
    assert code_version(tmp_path) == "0.1.0"  # not a git checkout: the package version


def test_lineage_provenance_and_tags() -> None:
    from lulc_core.config import RunConfig
    from lulc_core.labels import LabelSet

    cfg = RunConfig.model_validate(
        {
            "area": {
                "name": "demo",
                "bbox": [8.0, 47.0, 8.1, 47.1],
                "time_frames": [{"start": "2023-06-01", "end": "2023-06-30"}],
            },
            "imagery": {"store": "local", "local_dir": "/data/img", "bands": ["B02", "B03"]},
            "labels": {"label_set": str(REPO / "conf/labels/v3.yaml"), "osm_file": "/data/osm.geojson"},
        }
    )
    labels = LabelSet.from_yaml(REPO / "conf/labels/v3.yaml")
    prov = build_provenance(cfg, labels, run_url="http://runs/1")
    assert prov.config_hash == cfg.fingerprint()
    assert prov.label_set == f"v3:{labels.fingerprint()}"
    assert prov.time_frames == ["2023-06-01/2023-06-30"]
    assert "bands=B02,B03" in (prov.imagery_source or "") and "demo" in (prov.area or "")
    tags = lineage_tags(prov)
    assert tags["lulc.lineage.run_url"] == "http://runs/1"
    assert tags["lulc.lineage.time_frames"] == "2023-06-01/2023-06-30"
    assert fingerprint_test_set(["b", "a", "a"]) == fingerprint_test_set(["a", "b"]) != fingerprint_test_set(["a"])

    from lulc_core.evaluation import EvaluationReport
    from lulc_core.registry import registration_info

    report = EvaluationReport(
        overall_accuracy=0.8, miou=0.5, per_class={}, confusion_matrix=[[1]], class_names=["a"], tile_ids=["b", "a"]
    )
    info = registration_info(cfg, report, run_url="http://runs/2")
    assert info.test_set == fingerprint_test_set(["a", "b"])
    assert info.metrics == {"miou": 0.5, "overall_accuracy": 0.8}
    assert info.provenance is not None and info.provenance.run_url == "http://runs/2"
    assert info.hyperparameters["training"]["learning_rate"] == cfg.training.learning_rate
    assert info.run_name == cfg.name


def test_prepare_registration_reads_bundle(registry_tiny_bundle: Path) -> None:
    reg = prepare_registration(registry_tiny_bundle, RegistrationInfo(metrics={"extra": 1.0}), "lulc-segformer")
    assert reg.metrics["miou"] == 0.42 and reg.metrics["per_class/forest/iou"] == 0.42 and reg.metrics["extra"] == 1.0
    assert "test_tile_ids" not in reg.metrics
    assert reg.params["training.learning_rate"] == "0.0006" and reg.params["bands"] == "B02,B03,B04"
    assert reg.version_tags["lulc.test_set"] == fingerprint_test_set(["t0", "t1", "t2"])
    assert reg.version_tags["lulc.metric.miou"] == "0.42"
    assert "forest" in reg.label_set_yaml
    with pytest.raises(NotFoundError, match="not a directory"):
        prepare_registration(registry_tiny_bundle / "missing", RegistrationInfo(), "x")
    with pytest.raises(NotFoundError, match=r"lulc\.json is missing"):
        prepare_registration(registry_tiny_bundle / "model", RegistrationInfo(), "x")


def test_flatten_metrics_skips_non_numbers() -> None:
    flat = flatten_metrics({"miou": 0.5, "ok": True, "names": ["a"], "per_class": {"built-up": {"iou": 1}}, "x y!": 2})
    assert flat == {"miou": 0.5, "per_class/built-up/iou": 1.0, "x y_": 2.0}


def test_bundle_cache_keeps_no_partial_download(tmp_path: Path) -> None:
    cache = BundleCache(tmp_path)

    def broken(staging: Path) -> Path:
        (staging / "half").write_text("x")
        raise OSError("connection reset")

    with pytest.raises(OSError):
        cache.fill("m", 1, "k", broken)
    assert not cache.path("m", 1).exists()
    assert [p.name for p in (tmp_path / "m").iterdir()] == []

    def good(staging: Path) -> Path:
        (staging / "b").mkdir()
        (staging / "b" / "lulc.json").write_text("{}")
        return staging / "b"

    path = cache.fill("m", 1, "k", good)
    assert cache.lookup("m", 1, "k") == path
    assert cache.lookup("m", 1, "other-source") is None
    assert json.loads((path / ".lulc-cache.json").read_text()) == {"key": "k"}
    with pytest.raises(NotFoundError, match=r"holds no lulc\.json"):
        cache.fill("m", 2, "k", lambda staging: staging)
    assert not cache.path("m", 2).exists()
