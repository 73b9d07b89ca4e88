"""`python -m benchmarks` (`make bench`): every benchmark, each in a fresh process; one Markdown table.

    .venv/bin/python -m benchmarks                       # the full run (about 12 minutes on 2 cores)
    .venv/bin/python -m benchmarks --quick -o /tmp/r.md  # smoke run of every benchmark (about 3 minutes)
    .venv/bin/python -m benchmarks --only inference_throughput,large_areas

Writes benchmarks/results.md (or `--output`) and prints it. Each benchmark's result is kept in results.json beside
it, so `--only X` re-runs X and re-renders the table with every other benchmark's last result (each section says
when it ran). Exit status 1 when a benchmark failed to run (a missed target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import REPO, Row, Section, progress, render_report, section_from_json

MODULES = (
    "inference_throughput",
    "large_areas",
    "data_preparation",
    "input_pipeline",
    "serving_load",
    "training_scaling",
    "mapping_scale",
    "serving_memory",
)
TIMEOUT_S = 1800


def run_module(name: str, quick: bool) -> Section:
    """One benchmark module in a fresh process (`--json`); a failure becomes a row saying so."""
    import subprocess

    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--json", *(["--quick"] if quick else [])]
    started = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return _failed(name, f"timed out after {TIMEOUT_S} s", started)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        print(proc.stderr[-4000:], file=sys.stderr)
        return _failed(name, f"exit {proc.returncode}: {tail[0][:200]}", started)
    return section_from_json(lines[-1])


def _failed(name: str, why: str, started: float) -> Section:
    section = Section(name, f".venv/bin/python -m benchmarks.{name}")
    section.rows.append(Row(name, "benchmark failed to run", None, why, None, "runs", False))
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smoke run: every benchmark in its quick mode.")
    parser.add_argument("--only", default="", help=f"Comma-separated subset of {', '.join(MODULES)}.")
    parser.add_argument(
        "--output", "-o", type=Path, default=None, help="Markdown file (default benchmarks/results.md)."
    )
    args = parser.parse_args()
    chosen = [m.strip() for m in args.only.split(",") if m.strip()] or list(MODULES)
    unknown = sorted(set(chosen) - set(MODULES))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(MODULES)}")
    output = args.output or REPO / "benchmarks" / "results.md"
    started = time.monotonic()
    sections = []
    for name in chosen:
        progress(f"=== {name}{' (quick)' if args.quick else ''}")
        sections.append(run_module(name, args.quick))
        progress(f"=== {name} done in {sections[-1].seconds:.0f} s")
    total = time.monotonic() - started
    kept = update_results(output.with_suffix(".json"), dict(zip(chosen, sections, strict=True)), args.quick)
    import torch

    header = (
        f"# lulc benchmarks\n\n"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {_cpus()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads); this run: {', '.join(chosen)}"
        f"{' (quick)' if args.quick else ''}, {total / 60:.1f} min; each section says when it ran. "
        "`.venv/bin/python -m benchmarks` (`make bench`; `--only NAME` re-runs one). Medians of "
        "interleaved repeats where cheap; ratios are lulc / baseline (or as the target says). The machine is shared, "
        "so absolute figures vary from run to run; the ratios are the result."
    )
    report = render_report(kept, header)
    output.write_text(report)
    print(report)
    failed = [r for s in sections for r in s.rows if r.metric == "benchmark failed to run"]
    sys.exit(1 if failed else 0)


def update_results(path: Path, fresh: dict[str, Section], quick: bool) -> list[Section]:
    """Store the fresh sections in `path` (JSON, one entry per benchmark) beside the earlier ones; every section
    known, in MODULES order, each named with when (and whether quick) it ran."""
    stored: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.is_file() else {}
    stamp = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    for name, section in fresh.items():
        stored[name] = {"ran": stamp + (", quick" if quick else ""), "section": asdict(section)}
    path.write_text(json.dumps(stored, indent=1))
    sections = []
    for name in [m for m in MODULES if m in stored]:
        section = section_from_json(json.dumps(stored[name]["section"]))
        section.name = f"{section.name}, ran {stored[name]['ran']}"
        sections.append(section)
    return sections


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main()
