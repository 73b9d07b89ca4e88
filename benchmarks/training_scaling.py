"""Benchmark 6 — training scaling: samples/s of `lulc model train` with 1 process and with 2 DDP processes (gloo on
CPU), the scaling efficiency, the time per epoch, and the per-sample cost (FLOPs of a training step) for sizing a
GPU cluster (docs/distributed-training.md).

Tiles of 512 x 512 px with the sample's 15 bands (as in `benchmarks.input_pipeline`) are cut into 128 px chips;
SegFormer-b0 trains for a few epochs through the CLI, each run in a fresh process with one thread per process
(so 2 processes use the 2 cores the single process leaves idle: the efficiency measures DDP's overhead — gradient
all-reduce and synchronisation — not thread scaling). Per-sample rates are from the epochs after the first.

    .venv/bin/python -m benchmarks.training_scaling            # 8 tiles (128 chips), 4 epochs
    .venv/bin/python -m benchmarks.training_scaling --quick    # 2 tiles (32 chips), 2 epochs
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import REPO, V3_LABELS, Row, Section, bench_main, median, progress

COMMAND = ".venv/bin/python -m benchmarks.training_scaling"
CHIP_PX = 128
BATCH = 8  # effective batch: 8 on one process, 4 per process on two


def _config(root: Path) -> Path:
    doc = {
        "name": "scaling",
        "work_dir": str(root / "work"),
        "area": {"bbox": [9.0, 54.0, 9.1, 54.1], "time_frames": [{"start": "2023-06-01", "end": "2023-06-30"}]},
        "imagery": {"store": "local", "local_dir": str(root / "imagery")},
        "labels": {"label_set": str(V3_LABELS), "osm_file": str(root / "osm.geojson")},
        "data": {"chip_size": CHIP_PX},
        "training": {"accelerator": "auto", "batch_size": BATCH, "early_stopping_patience": 100},
    }
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _train(root: Path, processes: int, epochs: int) -> dict[str, float]:
    """One `lulc model train` run; samples/s and seconds per epoch (epochs after the first), wall time."""
    out = root / f"out{processes}"
    cmd = [sys.executable, "-m", "lulc.cli", "model", "train", "-c", str(root / "run.yaml")]
    cmd += ["-i", str(root / "imagery"), "-l", str(root / "labels"), "-s", str(root / "stats.json")]
    cmd += ["--split", str(root / "split.json"), "-o", str(out), "--epochs", str(epochs), "--no-progress"]
    if processes > 1:
        cmd += ["--devices", str(processes), "--strategy", "ddp", "--batch-size", str(BATCH // processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"training with {processes} process(es) failed: {proc.stderr.strip()[-400:]}")
    result = json.loads((out / "train_result.json").read_text())
    seconds = [h["seconds"] for h in result["history"][1:]] or [result["history"][0]["seconds"]]
    epoch_s = median(seconds)
    return {
        "samples_per_s": result["train_chips"] / epoch_s,
        "epoch_s": epoch_s,
        "wall_s": time.monotonic() - started,
        "chips": result["train_chips"],
    }


def step_flops(chip: int = 256, bands: int = 15) -> float:
    """FLOPs of one training sample (forward + backward) of SegFormer-b0 at `chip`² px, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lulc_core.training import SegmentationTask

    task = SegmentationTask(num_channels=bands, num_classes=7, variant="b0")
    image = torch.randn(1, bands, chip, chip)
    mask = torch.randint(1, 7, (1, chip, chip))
    with FlopCounterMode(display=False) as counter:
        task.loss(task(image), mask).backward()
    return float(counter.get_total_flops())


def run(quick: bool = False) -> Section:
    """Write the tiles, train with 1 and 2 processes, report rates, efficiency and the per-sample cost."""
    from benchmarks.input_pipeline import write_tiles
    from lulc_core.labels import LabelSet
    from lulc_core.split import TileSplit
    from lulc_core.stats import compute_stats

    n_tiles, epochs = (2, 2) if quick else (8, 4)
    section = Section("6. Training scaling", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="lulc-bench-scaling-") as tmp:
        root = Path(tmp)
        progress(f"training scaling: writing {n_tiles} tiles of 512 px, 15 bands")
        ids = write_tiles(root, n_tiles)
        compute_stats(root / "imagery", root / "labels", LabelSet.from_yaml(V3_LABELS), tile_ids=ids).save(
            root / "stats.json"
        )
        TileSplit(train=ids, val=[], test=[]).save(root / "split.json")
        _config(root)
        runs = {}
        for processes in (1, 2):
            progress(f"training scaling: {epochs} epochs with {processes} process(es)")
            runs[processes] = _train(root, processes, epochs)
    one, two = runs[1], runs[2]
    efficiency = two["samples_per_s"] / (2 * one["samples_per_s"])
    note = f"{one['chips']:.0f} chips of {CHIP_PX}² px, effective batch {BATCH}, 1 thread per process"
    section.rows += [
        Row("6 training scaling", "samples/s, b0 15 bands 128², 1 process", None, round(one["samples_per_s"], 2)),
        Row(
            "6 training scaling",
            "samples/s, 2 DDP processes (gloo) vs 1 process",
            round(one["samples_per_s"], 2),
            round(two["samples_per_s"], 2),
            two["samples_per_s"] / one["samples_per_s"],
            "informative",
            None,
            note,
        ),
        Row(
            "6 training scaling", "scaling efficiency % (samples/s of 2 / (2 x of 1))", None, round(100 * efficiency, 1)
        ),
        Row("6 training scaling", "seconds per epoch, 1 / 2 processes", one["epoch_s"], two["epoch_s"]),
    ]
    flops = step_flops()
    section.details.append(
        f"per-sample cost: SegFormer-b0, 15 bands, 256² px, forward + backward = {flops / 1e9:.1f} GFLOP "
        f"(torch FlopCounterMode); at 128² a quarter. Wall time of the runs incl. start-up: "
        f"{one['wall_s']:.0f} s (1 process), {two['wall_s']:.0f} s (2 processes)"
    )
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "2 tiles, 2 epochs (smoke run).")


if __name__ == "__main__":
    main()
