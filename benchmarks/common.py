"""What every benchmark shares: result rows and the Markdown table, medians and ratios, memory, fixtures.

These machines are noisy (2 cores shared with other work), so benchmarks interleave baseline and ours, repeat,
and report medians and ratios rather than single absolute times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SAMPLE_IMAGERY = REPO / "data" / "sample" / "imagery"
V3_LABELS = REPO / "conf" / "labels" / "v3.yaml"
MB = 1024 * 1024

# tests/ holds the stand-in servers and the small-bundle helpers the benchmarks reuse
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

log = logging.getLogger("benchmarks")


# --- results -------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the results table: a figure for the baseline and for lulc, their ratio and the target.

    Attributes:
        benchmark: which benchmark (e.g. "1 inference").
        metric: what is measured, with its unit.
        baseline: the baseline's figure (None when there is no baseline).
        ours: lulc's figure.
        ratio: ours / baseline or whatever the target compares (None: no ratio).
        target: the target in words, e.g. ">= 2x".
        met: whether the target is met (None: informative row).
        note: how it was measured / why.
        baseline_name: what the baseline is (shown in the baseline column), e.g. "original: ..." or "lulc at
            2,000²" when the baseline is lulc itself.
    """

    benchmark: str
    metric: str
    baseline: float | str | None
    ours: float | str | None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    baseline_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Section:
    """The rows of one benchmark plus free-text details (settings, raw medians) for the report."""

    name: str
    command: str
    rows: list[Row] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fmt(value: float | str | None, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands separated), text as is, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if value == 0 or not math.isfinite(value):
        return str(value)
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(0, digits - 1 - magnitude)
    return f"{value:,.{decimals}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub Markdown table."""
    head = (
        "| benchmark | metric | baseline (named) | lulc | ratio | target | met |\n|---|---|---:|---:|---:|---|:---:|\n"
    )
    lines = []
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "**no**")
        ratio = "-" if r.ratio is None else f"{fmt(r.ratio)}x"
        base = f"{r.baseline_name}: {fmt(r.baseline)}" if r.baseline_name else fmt(r.baseline)
        lines.append(f"| {r.benchmark} | {r.metric} | {base} | {fmt(r.ours)} | {ratio} | {r.target} | {met} |")
    return head + "\n".join(lines) + "\n"


def render_report(sections: Sequence[Section], header: str) -> str:
    """The whole results.md: header, one table of every row, then per benchmark its command and details."""
    rows = [r for s in sections for r in s.rows]
    parts = [header, "", markdown_table(rows)]
    for s in sections:
        parts.append(f"\n### {s.name} ({s.seconds:.0f} s)\n\n`{s.command}`\n")
        parts.extend(f"- {d}" for d in s.details)
        notes = [f"{r.metric}: {r.note}" for r in s.rows if r.note]
        parts.extend(f"- {n}" for n in notes)
    return "\n".join(parts) + "\n"


# --- statistics ----------------------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return float(statistics.median(values)) if values else float("nan")


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator (inf when the denominator is 0)."""
    return numerator / denominator if denominator else float("inf")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def interleaved(
    baseline: Callable[[], Any], ours: Callable[[], Any], repeats: int, warmup: bool = True
) -> tuple[list[float], list[float], Any, Any]:
    """Run baseline and ours alternately `repeats` times (after one untimed warm-up each).

    Alternating exposes both to the same background load; returns both lists of seconds and the last results.
    """
    if warmup:
        baseline()
        ours()
    base_t: list[float] = []
    ours_t: list[float] = []
    base_result = ours_result = None
    for _ in range(repeats):
        t, base_result = timed(baseline)
        base_t.append(t)
        t, ours_result = timed(ours)
        ours_t.append(t)
    return base_t, ours_t, base_result, ours_result


# --- memory --------------------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MB), from getrusage (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int | None = None) -> float:
    """Current resident set size of a process (default: this one), MB."""
    import psutil

    return float(psutil.Process(pid or os.getpid()).memory_info().rss) / MB


class RssSampler:
    """Samples a process's RSS every `interval_s` in a thread; `.peak` and `.last` in MB."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.first = self.last = self.peak = float(self.process.memory_info().rss) / MB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.last = float(self.process.memory_info().rss) / MB
                self.peak = max(self.peak, self.last)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_child(module: str, args: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run `python -m <module> <args>` in a fresh process; its last stdout line is a JSON object, returned.

    Raises:
        RuntimeError: the child failed (with the end of its stderr).
    """
    cmd = [sys.executable, "-m", module, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no JSON result:\n{proc.stdout[-2000:]}")
    return dict(json.loads(lines[-1]))


# --- fixtures ------------------------------------------------------------------------------------------------------


def sample_mosaic(height: int, width: int, patch: str = "637U_59R_1_3") -> np.ndarray:
    """Real imagery of any size: a sample patch's 15 bands (S2 x 12, S1 VV/VH, DEM), mirror-tiled (float32)."""
    import rasterio

    parts = []
    for suffix in ("s2", "s1", "dem"):
        with rasterio.open(SAMPLE_IMAGERY / f"{patch}_{suffix}.tif") as src:
            parts.append(src.read(out_dtype="float32"))
    bands = np.concatenate(parts)
    reps_y = math.ceil(height / bands.shape[1])
    reps_x = math.ceil(width / bands.shape[2])
    tile = np.concatenate([bands, bands[:, ::-1]], axis=1)
    tile = np.concatenate([tile, tile[:, :, ::-1]], axis=2)
    mosaic = np.tile(tile, (1, math.ceil(reps_y / 2), math.ceil(reps_x / 2)))
    return np.ascontiguousarray(mosaic[:, :height, :width])


def make_b0_bundle(path: Path, onnx: bool = False) -> Path:
    """The serving tests' bundle: SegFormer-b0, random init (seed 0), 15 sample bands, v3 label set.

    With `onnx`, also `model.onnx` (lulc_core.bundle.export_onnx, verified against torch).
    """
    from serving_helpers import make_bundle

    from lulc_core.bundle import export_onnx

    make_bundle(path)
    if onnx:
        export_onnx(path)
    return path


def serving_process(
    bundle: Path, config: Path, log_path: Path, *, timeout_s: float = 3600, extra: Sequence[str] = ()
) -> contextlib.AbstractContextManager[tuple[str, int]]:
    """`python -m serving` on 127.0.0.1 with `bundle` and `config` (quiet logs, long deadline); (base URL, pid)."""
    from serving.process import local_server

    args = ["--timeout-s", str(timeout_s), "--log-level", "WARNING", *extra]
    return local_server(bundle, config, log_path=log_path, extra=args, cwd=REPO)


def quiet_logs() -> None:
    """Warnings only from libraries; the benchmarks print their own progress lines."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lulc_core", "transformers", "lightning", "rasterio"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries the results)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- command line --------------------------------------------------------------------------------------------------


def section_from_json(text: str) -> Section:
    """A Section printed by `bench_main(..., --json)`."""
    data = json.loads(text)
    rows = [Row(**r) for r in data.pop("rows")]
    return Section(rows=rows, **data)


def bench_main(
    run: Callable[[bool], Section],
    doc: str | None,
    quick_help: str,
    child: Callable[[argparse.Namespace], bool] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """The command line every benchmark module shares: `--quick`, `--json` (one JSON line for `python -m
    benchmarks`), else the Markdown rows and details on stdout. `child` handles internal sub-commands."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="Print the result as one JSON line.")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    quiet_logs()
    if child is not None and child(args):
        return
    section = run(args.quick)
    if args.json:
        print(json.dumps(asdict(section)))
        return
    print(markdown_table(section.rows))
    for d in section.details:
        print("-", d)
