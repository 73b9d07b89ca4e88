"""Benchmarks (marker `bench`: `pytest -m bench`, not part of `make test`): every benchmark runs in its quick mode.

Each module runs as `python -m benchmarks.<name> --quick --json` in a fresh process, exactly as `python -m
benchmarks` runs it. Speed ratios on a shared 2-core machine are noisy, so the smoke runs check what must hold at
any load — outputs equal, nothing lost, no errors, figures present and positive — and only loose speed bounds;
the targets themselves are judged by the full run (`make bench`, benchmarks/results.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.__main__ import MODULES, run_module  # noqa: E402
from benchmarks.common import Row, Section, markdown_table, render_report  # noqa: E402

pytestmark = pytest.mark.bench


def _rows(section: Section, prefix: str) -> list[Row]:
    rows = [r for r in section.rows if r.metric.startswith(prefix)]
    assert rows, f"no row starting with {prefix!r} in {[r.metric for r in section.rows]}"
    return rows


@pytest.fixture(scope="module")
def quick() -> dict[str, Section]:
    return {}


def _run(quick: dict[str, Section], name: str) -> Section:
    if name not in quick:
        quick[name] = run_module(name, quick=True)
    section = quick[name]
    assert not [r for r in section.rows if r.metric == "benchmark failed to run"], section.rows
    return section


def test_inference_throughput_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "inference_throughput")
    served = _rows(section, "px/s, served default end to end")
    assert all(isinstance(r.baseline, float | int) and r.baseline > 0 and r.ratio for r in served)
    assert served[0].baseline_name.startswith("original")
    (share,) = _rows(section, "share of the fp32 matmul peak")
    assert isinstance(share.baseline, float) and share.baseline > 0 and share.ratio is not None and share.ratio > 0
    assert "torch.mm" in share.note and "onnxruntime MatMul" in share.note  # the peak is the best of both GEMMs
    (alone,) = _rows(section, "share of the one-thread fp32 matmul peak, the served model alone")
    assert alone.baseline_name.endswith("one thread") and isinstance(alone.ours, float) and alone.ours > 0
    assert alone.ratio is not None and alone.ratio > 0 and "% of the request's time" in alone.note
    (gemms,) = _rows(section, "share of the one-thread fp32 matmul peak, the served model's matrix products")
    assert gemms.baseline == alone.baseline and isinstance(gemms.ours, float) and gemms.ours > alone.ours
    assert "% of the window's operator time" in gemms.note and "Transpose" in gemms.note
    (int8,) = _rows(section, "px/s, int8 vs fp32 ONNX")
    assert int8.baseline_name == "lulc fp32 ONNX" and int8.ratio is not None and int8.ratio > 0
    assert "agreement 0." in int8.metric or "agreement 1." in int8.metric


def test_serving_memory_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "serving_memory")
    (rss,) = _rows(section, "predictor peak RSS MB, served default")
    assert isinstance(rss.baseline, float | int) and rss.baseline > 0 and rss.ratio is not None and rss.ratio > 0
    assert rss.baseline_name.startswith("lulc at")


def test_only_keeps_the_other_sections(tmp_path: Path) -> None:
    """`--only X` replaces X's stored result and renders every stored benchmark, in MODULES order."""
    from benchmarks.__main__ import update_results

    store = tmp_path / "results.json"
    first = {m: Section(m, f"cmd {m}", [Row(m, "metric", 1.0, 2.0, 2.0, ">= 2x", True)]) for m in MODULES[:2]}
    update_results(store, first, quick=False)
    again = Section(MODULES[1], "cmd", [Row(MODULES[1], "metric", 1.0, 3.0, 3.0, ">= 2x", True)])
    sections = update_results(store, {MODULES[1]: again}, quick=True)
    assert [s.rows[0].benchmark for s in sections] == list(MODULES[:2])
    assert sections[0].rows[0].ours == 2.0 and sections[1].rows[0].ours == 3.0
    assert sections[1].name.endswith(", quick") and not sections[0].name.endswith(", quick")


def test_large_areas_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "large_areas")
    (rss,) = _rows(section, "peak RSS MB")
    assert rss.met is True, rss  # 500² -> 2,000²: memory bounded by the blocks, not the area
    sizes = [r for r in section.rows if "s/Mpx, peak RSS" in r.metric]
    assert len(sizes) == 3 and all(isinstance(r.ours, str) and "MB" in r.ours for r in sizes)


def test_data_preparation_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "data_preparation")
    (lost,) = _rows(section, "tiles lost")
    assert lost.ours == 0
    for row in _rows(section, "tiles/s, 16 tiles"):
        assert row.baseline_name.startswith("original design") and row.ratio is not None and row.ratio > 0, row
    (ceiling,) = _rows(section, "tiles/s ceiling")
    assert ceiling.ratio == pytest.approx(3.0)  # 1 + 1 requests per tile instead of 1 + 6 at the default limits


def test_input_pipeline_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "input_pipeline")
    for row in _rows(section, "chips/s at 256²"):
        assert row.met is True, row


def test_serving_load_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "serving_load")
    (errors,) = _rows(section, "errors (all levels)")
    assert errors.ours == 0
    levels = _rows(section, "concurrency ")
    assert [r.metric.split(":")[0] for r in levels] == ["concurrency 1", "concurrency 4", "concurrency 16"]


def test_training_scaling_ddp_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "training_scaling")
    (one,) = _rows(section, "samples/s, b0 15 bands 128², 1 process")
    (two,) = _rows(section, "samples/s, 2 DDP processes")
    assert isinstance(one.ours, float) and one.ours > 0 and isinstance(two.ours, float) and two.ours > 0
    (efficiency,) = _rows(section, "scaling efficiency")
    assert isinstance(efficiency.ours, float) and 0 < efficiency.ours <= 150
    assert any("GFLOP" in d for d in section.details)


def test_mapping_scale_quick(quick: dict[str, Section]) -> None:
    section = _run(quick, "mapping_scale")
    (rss,) = _rows(section, "peak RSS MB")
    assert rss.met is True, rss  # a worker over every block of its shard stays near one block's memory
    (resume,) = _rows(section, "blocks redone after kill")
    assert resume.met is True, resume  # only the unfinished blocks are predicted again
    (speed,) = _rows(section, "predict Mpx/s, 1 worker (cpu 1) -> 2 workers")
    assert speed.ratio is not None and speed.ratio > 0  # the speed-up depends on the free cores of a shared box
    assert any("(1)" in d for d in section.details if d.startswith("workers' peak RSS"))  # 1 thread per worker


def test_report_is_one_markdown_table(quick: dict[str, Section]) -> None:
    sections = [quick[name] for name in MODULES if name in quick] or [
        Section("x", "cmd", [Row("b", "m", 1.0, 2.0, 2.0, ">= 2x", True)])
    ]
    report = render_report(sections, "# header")
    table = markdown_table([r for s in sections for r in s.rows])
    assert table in report
    lines = table.strip().splitlines()
    assert all(line.count("|") == lines[0].count("|") for line in lines), "a cell breaks the table"
