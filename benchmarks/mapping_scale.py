"""Benchmark 6 — mapping at scale: a 20,000 x 20,000 px area mapped through the pipeline runner, as a user runs it.

Every run is `lulc map run --local` in a fresh process (kfp.local: plan -> predict blocks in a ParallelFor ->
assemble -> areas -> OSM gaps) on a local imagery store, a fresh output location each. Measured:

- throughput of two workers (`mapping.shards 2, parallelism 2, cpu_per_worker 1`) vs one worker on a 1-CPU
  allocation (`shards 1, parallelism 1, cpu_per_worker 1`, what a user sets for one worker on a 1-core pod),
  runs interleaved, each run pinned (`sched_setaffinity`) to cpu_per_worker x parallelism cores as the pods' CPU
  limits would hold it; the predict stage (plan done -> last worker done, worker start and model load included) and
  the whole run. Informative: one worker with 2 threads (`cpu_per_worker 2`) — what one worker makes of both cores;
- peak RSS of each pipeline worker (from its `statuses` artifact) vs the pipeline's predict step on one block
  (target <= 1.3x: memory does not grow with the number of blocks);
- kill -9 of a two-worker run when half the blocks are finished, then the same command again: the workers in flight
  are counted, and the re-run predicts only the blocks not finished (finished ones are skipped as valid COGs).

The model is the small SegFormer of `benchmarks.large_areas` (random init, MiT dims 16/32/64/128, one block per
stage, 15 bands); imagery is that benchmark's synthetic 100 m GeoTIFF warped to the 10 m block grids.

    .venv/bin/python -m benchmarks.mapping_scale            # 20,000² px, blocks of 2,048 px (15-20 min)
    .venv/bin/python -m benchmarks.mapping_scale --quick    # 1,024² px, blocks of 512 px, no 2-thread run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, Row, Section, bench_main, progress, run_child

COMMAND = ".venv/bin/python -m benchmarks.mapping_scale"
FULL, QUICK = (20_000, 2048), (1024, 512)
"""(area px, block px): the worker comparison, the kill/re-run and the memory all map the whole area."""
MODEL = "bench@production"
ONE = {"shards": 1, "parallelism": 1, "cpu_per_worker": 1.0}
TWO = {"shards": 2, "parallelism": 2, "cpu_per_worker": 1.0}
ONE_TWO_THREADS = {"shards": 1, "parallelism": 1, "cpu_per_worker": 2.0}


def setup(work: Path, pixels: int, block_px: int) -> int:
    """Bundle registered as bench@production (MLflow on SQLite under `work`), imagery, an OSM extract with one
    polygon, the run configuration `work/run.json`; returns the number of blocks of the plan."""
    from benchmarks.large_areas import make_tiny_bundle
    from benchmarks.serving_memory import area_bbox, synthetic_imagery
    from lulc_core.bundle import ModelBundle
    from lulc_core.config import RunConfig
    from lulc_core.mapping.plan import make_plan, resolve_model
    from lulc_core.registry import build_registry

    bundle = make_tiny_bundle(work / "bundle")
    meta = ModelBundle.read_metadata(bundle)
    n = meta.label_set.num_classes - 1
    meta.metrics["confusion_matrix"] = [[10 if i == j else 1 for j in range(n)] for i in range(n)]
    meta.metrics["class_names"] = meta.label_set.names[1:]
    (bundle / "lulc.json").write_text(meta.model_dump_json())
    bbox, bounds = area_bbox(pixels)
    (work / "imagery").mkdir()
    synthetic_imagery(work / "imagery", bounds)
    w, s_, e, n_ = bbox
    centre = [[w + (e - w) * f, s_ + (n_ - s_) * g] for f, g in ((0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6))]
    osm = {"type": "Feature", "properties": {"landuse": "forest"}, "geometry": {"type": "Polygon",
           "coordinates": [[*centre, centre[0]]]}}  # fmt: skip
    (work / "osm.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [osm]}))
    cfg = RunConfig.model_validate(
        {
            "work_dir": str(work),
            "area": {"name": "bench", "bbox": bbox, "time_frames": [{"start": "2023-06-01", "end": "2023-06-10"}]},
            "imagery": {"store": "local", "local_dir": str(work / "imagery"), "bands": meta.bands},
            "labels": {"label_set": str(REPO / "conf" / "labels" / "v3.yaml"), "source": "file",
                       "osm_file": str(work / "osm.geojson")},
            "serving": {"window": 256, "overlap": 32, "batch_size": 4, "edge_buffer_m": 0},
            "mapping": {"block_px": block_px, "throughput_px_s": 1.0, "accelerator_type": None},
            "registry": {"model_name": "bench"},
        }
    )  # fmt: skip
    registry = build_registry(cfg.registry, cfg.work_dir)
    registry.promote(registry.register(bundle), "production")
    (work / "run.json").write_text(cfg.model_dump_json())
    info, resolved_bundle = resolve_model(cfg, MODEL)
    plan = make_plan(cfg, info, resolved_bundle)
    plan.save(work / "plan.json")
    return len(plan.blocks)


def _config(work: Path, name: str, mapping: dict[str, Any], pixels: int | None = None) -> Path:
    """`work/<name>.json`: the run configuration with these mapping settings (and an area of `pixels`² px at the
    centre instead of the whole one)."""
    from benchmarks.serving_memory import area_bbox

    cfg = json.loads((work / "run.json").read_text())
    cfg["mapping"].update(mapping)
    if pixels is not None:
        cfg["area"]["bbox"] = area_bbox(pixels)[0]
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _map_command(work: Path, name: str, mapping: dict[str, Any], pixels: int | None = None) -> list[str]:
    config = _config(work, name, mapping, pixels)
    out, root = work / "out" / name, work / "kfp" / name
    cli = [sys.executable, "-m", "lulc.cli", "map", "run", "--local", "-c", str(config), "--model", MODEL]
    return [*cli, "-o", str(out), "--pipeline-root", str(root)]


def _pipeline_figures(root: Path) -> dict[str, Any]:
    """From the newest kfp.local run under `root`: the predict stage's span and each worker's figures."""
    run_dir = max(root.glob("lulc-mapping-*"), key=lambda p: p.stat().st_mtime)
    plan_done = (run_dir / "map-plan" / "executor_output.json").stat().st_mtime
    outputs = sorted(run_dir.glob("*/map-blocks/executor_output.json"))
    workers = [json.loads(p.read_text())["artifacts"]["statuses"]["artifacts"][0]["metadata"] for p in outputs]
    return {
        "predict_s": max(p.stat().st_mtime for p in outputs) - plan_done,
        "workers": workers,
    }


def allocation(mapping: dict[str, Any]) -> set[int]:
    """The CPUs a run may use: cpu_per_worker x parallelism of this machine's cores, as the pods' CPU limits would
    give it (without them one worker's reader thread would run on the core a 1-CPU pod does not have)."""
    cores = sorted(os.sched_getaffinity(0))
    return set(cores[: max(1, min(len(cores), round(mapping["cpu_per_worker"] * mapping["parallelism"])))])


def map_run(work: Path, name: str, mapping: dict[str, Any], pixels: int) -> dict[str, Any]:
    """`lulc map run --local` with these mapping settings, in a fresh process on its CPU `allocation`; wall time and
    pipeline figures."""
    cpus = allocation(mapping)
    started = time.perf_counter()
    proc = subprocess.run(
        _map_command(work, name, mapping, pixels),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"lulc map run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    figures = _pipeline_figures(work / "kfp" / name)
    done = sum(w["done"] for w in figures["workers"])
    return {"wall_s": wall, "mpx_s": pixels**2 / figures["predict_s"] / 1e6, "done": done, **figures}


def one_block(work: Path, block: int) -> dict[str, Any]:
    """In a fresh process: the pipeline's predict step (components.map_blocks) on a plan of one block, 1 CPU."""
    from kfp.dsl import Dataset, Model

    from components.map_blocks import map_blocks
    from lulc_core.mapping.plan import MapPlan

    plan = MapPlan.load(work / "plan.json")
    single = plan.model_copy(update={"blocks": [plan.blocks[block]]})
    single.save(work / "plan-one.json")
    config = _config(work, "one-block", {**ONE, "output_dir": str(work / "out" / "one-block")}).read_text()
    statuses = Dataset(uri=str(work / "one-block-statuses.json"))
    map_blocks.python_func(
        config=config, plan=Dataset(uri=str(work / "plan-one.json")), bundle=Model(uri=str(work / "bundle")),
        shard=0, statuses=statuses,
    )  # fmt: skip
    return dict(statuses.metadata)


def _is_worker(cmdline: list[str]) -> bool:
    """A predict-blocks worker: the Python process of kfp's executor running `map_blocks` (not a shell around it)."""
    return (
        bool(cmdline)
        and "python" in Path(cmdline[0]).name
        and "kfp.dsl.executor_main" in cmdline
        and any("map_blocks" in arg for arg in cmdline)
    )


def kill_and_resume(work: Path, n: int) -> dict[str, Any]:
    """A two-worker run killed (the whole process group, kill -9) when half the blocks are finished, then rerun."""
    import psutil

    cmd = _map_command(work, "killed", TWO)
    victim = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    status_dir = work / "out" / "killed" / "status"
    while victim.poll() is None and len(list(status_dir.glob("*.json"))) < n // 2:
        time.sleep(0.2)
    workers = [p for p in psutil.Process(victim.pid).children(recursive=True) if _is_worker(p.cmdline())]
    finished = len(list(status_dir.glob("*.json")))
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the re-run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    rerun = _pipeline_figures(work / "kfp" / "killed")["workers"]
    return {
        "finished": finished,
        "in_flight": len(workers),
        "redone": sum(w["done"] for w in rerun),
        "skipped": sum(w["skipped"] for w in rerun),
        "workers": rerun,
    }


def run(quick: bool = False, rounds: int = 1) -> Section:
    pixels, block_px = QUICK if quick else FULL
    section = Section("6. Mapping at scale", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lulc-bench-map-") as tmp:
        work = Path(tmp)
        n = setup(work, pixels, block_px)
        progress(f"mapping: {pixels:,}² px in {n} blocks of up to {block_px:,} px")
        from lulc_core.mapping.plan import MapPlan

        plan = MapPlan.load(work / "plan.json")
        full = next(i for i, b in enumerate(plan.blocks) if b.width == b.height == block_px)
        single = run_child("benchmarks.mapping_scale", ["--one-block", str(work), "--block", str(full)], 1800)
        runs: dict[str, list[dict[str, Any]]] = {"one": [], "two": [], "one2": []}
        for r in range(rounds):  # interleaved, so that a change of load hits all three alike
            for key, mapping in (("one", ONE), ("two", TWO), ("one2", ONE_TWO_THREADS))[: 2 if quick else 3]:
                progress(f"mapping: round {r + 1}/{rounds}, {key}: lulc map run --local, mapping {mapping}")
                runs[key].append(map_run(work, f"{key}-{r}", mapping, pixels))
        progress("mapping: kill a two-worker run in the middle, then run it again")
        killed = kill_and_resume(work, n)

    def med(key: str, what: str) -> float:
        return statistics.median(r[what] for r in runs[key])

    workers = [w for key in runs for r in runs[key] for w in r["workers"]] + killed.pop("workers")
    worst = max(w["peak_rss_mb"] for w in workers)
    rss_ratio = worst / single["peak_rss_mb"]
    speedup = med("two", "mpx_s") / med("one", "mpx_s")
    wall_ratio = med("one", "wall_s") / med("two", "wall_s")
    ok_resume = killed["skipped"] == killed["finished"] and killed["redone"] == n - killed["finished"]
    settings = "window 256, overlap 32, batch 4"
    section.rows += [
        Row("6 mapping", f"peak RSS MB per worker: its shard vs one block ({n} blocks)", round(single["peak_rss_mb"]),
            round(worst), rss_ratio, "<= 1.3x", rss_ratio <= 1.3, baseline_name="predict step on one block"),
        Row("6 mapping", f"predict Mpx/s, 1 worker (cpu 1) -> 2 workers (cpu 1 each), {pixels:,}² px",
            round(med("one", "mpx_s"), 3),
            round(med("two", "mpx_s"), 3), speedup, ">= 1.6x", speedup >= 1.6,
            note=f"lulc map run --local, mapping.cpu_per_worker 1; {settings}; median of {rounds} interleaved"),
        Row("6 mapping", "whole run wall s, 1 worker (cpu 1) -> 2 workers (cpu 1 each)", round(med("one", "wall_s"), 1),
            round(med("two", "wall_s"), 1), wall_ratio, "info", None,
            note="plan, assemble, areas and OSM gaps included (sequential steps)"),
        Row("6 mapping", f"blocks redone after kill -9 ({killed['finished']} of {n} finished, "
            f"{killed['in_flight']} in flight)", n - killed["finished"], killed["redone"], None,
            "= unfinished; finished ones skipped", ok_resume),
    ]  # fmt: skip
    if runs["one2"]:  # full runs only (the quick run stays short)
        section.rows.insert(3, Row("6 mapping", "predict Mpx/s, 1 worker (cpu 1) -> 1 worker (cpu 2, 2 threads)",
            round(med("one", "mpx_s"), 3), round(med("one2", "mpx_s"), 3), med("one2", "mpx_s") / med("one", "mpx_s"),
            "info", None))  # fmt: skip
    section.details += [
        f"{pixels:,}² px in {n} blocks of up to {block_px:,} px for the worker comparison, the kill "
        "and re-run and the RSS; model: small SegFormer (MiT 16/32/64/128, one block "
        f"per stage), torch; {settings}; no edge buffer; every run `lulc map run --local` (kfp.local) in a fresh "
        "process with its own output location; the predict stage spans the plan step's end to the last worker's end",
        "1 worker: mapping.shards 1, parallelism 1, cpu_per_worker 1; 2 workers: shards 2, parallelism 2, "
        "cpu_per_worker 1; info: shards 1, parallelism 1, cpu_per_worker 2 (threads per worker = cpu_per_worker); each run pinned to cpu_per_worker x parallelism cores (a pod's CPU limit)",
        "runs (Mpx/s predict, wall s): " + "; ".join(
            f"{k}: " + ", ".join(f"{r['mpx_s']:.3f}/{r['wall_s']:.0f}" for r in v) for k, v in runs.items() if v),
        "workers' peak RSS MB (threads): " + ", ".join(f"{w['peak_rss_mb']:.0f} ({w['threads']})" for w in workers),
        f"kill: {killed}",
        "the machine may be shared with other jobs: the two-worker speed-up is bounded by the cores actually free",
    ]  # fmt: skip
    section.seconds = time.monotonic() - started
    return section


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--one-block", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, default=0, help=argparse.SUPPRESS)


def _as_child(args: argparse.Namespace) -> bool:
    if args.one_block is None:
        return False
    print(json.dumps(one_block(args.one_block, args.block)))
    return True


def main() -> None:
    bench_main(
        run, __doc__, "1,024² px in blocks of 512 px, no 2-thread run (smoke run).", child=_as_child, extra=_arguments
    )


if __name__ == "__main__":
    main()
