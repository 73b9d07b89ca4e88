"""Benchmark 4 — training input pipeline: chips/s the DataLoader delivers vs chips/s SegFormer-b0 consumes.

16 tiles of 512 x 512 px (the sample's 15 bands, mirror-tiled; labels 1..6 from the spectra) are written as
GeoTIFFs; `LulcDataModule` (chip 256, batch 8, augmentation on, the training defaults: num_workers 0) cuts them
into 64 chips. The loader is timed over whole epochs, both with tiles preloaded (the default below 2 GB) and read
on demand from the GeoTIFFs (larger datasets). The model is `SegmentationTask` (b0, 15 bands, the v3 classes):
forward, weighted cross-entropy, backward and an AdamW step per batch of 8 chips on CPU. Loader and model are
measured alternately; medians.

    .venv/bin/python -m benchmarks.input_pipeline            # 3 rounds
    .venv/bin/python -m benchmarks.input_pipeline --quick    # 1 round, 4 tiles
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    V3_LABELS,
    Row,
    Section,
    bench_main,
    median,
    progress,
    sample_mosaic,
)

COMMAND = ".venv/bin/python -m benchmarks.input_pipeline"
TILE_PX = 512
CHIP_PX = 256
BATCH = 8


def write_tiles(root: Path, n_tiles: int) -> list[str]:
    """`n_tiles` 512 px tiles of 15 bands + labels on neighbouring UTM grids; their ids."""
    from affine import Affine
    from rasterio.crs import CRS
    from serving_helpers import BANDS

    from lulc_core.labels import LabelSet
    from lulc_core.raster import Raster, write_geotiff

    colormap = LabelSet.from_yaml(V3_LABELS).colormap()
    mosaic = sample_mosaic(TILE_PX * 2, TILE_PX * 2)
    ids = []
    for i in range(n_tiles):
        r, c = divmod(i, 4)
        oy, ox = (i * 37) % TILE_PX, (i * 91) % TILE_PX  # a different part of the mosaic for every tile
        image = np.ascontiguousarray(mosaic[:, oy : oy + TILE_PX, ox : ox + TILE_PX])
        # classes 1..6 from the red band's quantiles (any labels do: the benchmark measures speed)
        red = image[3]
        labels = (np.digitize(red, np.quantile(red, [1 / 6, 2 / 6, 3 / 6, 4 / 6, 5 / 6])) + 1).astype(np.uint8)
        transform = Affine(10, 0, 500_000 + c * TILE_PX * 10, 0, -10, 6_200_000 - r * TILE_PX * 10)
        tile_id = f"chip_r{r}_c{c}"
        crs = CRS.from_epsg(32632)
        write_geotiff(root / "imagery" / f"{tile_id}.tif", Raster(image, transform, crs, list(BANDS)), nodata=-9999.0)
        write_geotiff(
            root / "labels" / f"{tile_id}.tif", Raster(labels[None], transform, crs, ["class"]), colormap=colormap
        )
        ids.append(tile_id)
    return ids


def run(quick: bool = False) -> Section:
    """Write the tiles, then alternate loader epochs and training steps."""
    from lulc_core.datamodule import LulcDataModule
    from lulc_core.labels import LabelSet
    from lulc_core.split import TileSplit
    from lulc_core.stats import compute_stats
    from lulc_core.training import SegmentationTask

    rounds = 1 if quick else 3
    n_tiles = 4 if quick else 16
    section = Section("4. Training input pipeline", COMMAND + (" --quick" if quick else ""))
    started = time.monotonic()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="lulc-bench-input-") as tmp:
        root = Path(tmp)
        progress(f"input pipeline: writing {n_tiles} tiles of {TILE_PX} px, 15 bands")
        ids = write_tiles(root, n_tiles)
        label_set = LabelSet.from_yaml(V3_LABELS)
        stats = compute_stats(root / "imagery", root / "labels", label_set, tile_ids=ids)
        split = TileSplit(train=ids, val=[], test=[])

        def module(preload: bool | None) -> LulcDataModule:
            dm = LulcDataModule(
                root / "imagery", root / "labels", split, stats, chip_size=CHIP_PX, batch_size=BATCH, preload=preload
            )
            dm.setup("fit")
            return dm

        loaders = {"preloaded": module(None).train_dataloader(), "on demand": module(False).train_dataloader()}
        chips = len(loaders["preloaded"].dataset)  # type: ignore[arg-type]
        task = SegmentationTask(num_channels=len(stats.band_names), num_classes=label_set.num_classes, variant="b0")
        task.train()
        optimizer = task.configure_optimizers()["optimizer"]
        sample = next(iter(loaders["preloaded"]))

        def train_step() -> None:
            logits = task(sample["image"])
            loss = task.loss(logits, sample["mask"])
            task.train_metrics.update(task.predict_classes(logits.detach()), sample["mask"])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def epoch(name: str) -> float:
            t0 = time.perf_counter()
            n = sum(int(batch["image"].shape[0]) for batch in loaders[name])
            return n / (time.perf_counter() - t0)

        progress(f"input pipeline: {chips} chips of {CHIP_PX} px; {rounds} rounds of loader epochs and b0 steps")
        train_step()  # warm-up
        loader_rates: dict[str, list[float]] = {name: [] for name in loaders}
        model_rates: list[float] = []
        for _ in range(rounds):
            for name in loaders:
                loader_rates[name].append(epoch(name))
            for _ in range(2):
                t0 = time.perf_counter()
                train_step()
                model_rates.append(BATCH / (time.perf_counter() - t0))
    model = median(model_rates)
    for name, rates in loader_rates.items():
        loader = median(rates)
        section.rows.append(
            Row(
                "4 input pipeline",
                f"chips/s at {CHIP_PX}², loader ({name}) vs b0 training step",
                round(model, 2),
                round(loader, 1),
                loader / model,
                ">= 3x",
                loader / model >= 3.0,
                "baseline column: what the model consumes; lulc column: what the DataLoader delivers "
                f"(batch {BATCH}, num_workers 0, augmentation on)",
                baseline_name="lulc b0 training step",
            )
        )
    section.details.append(
        f"{n_tiles} tiles, {chips} chips; loader chips/s per epoch "
        + ", ".join(f"{k}: {[round(v) for v in vs]}" for k, vs in loader_rates.items())
        + f"; model chips/s per step {[round(v, 2) for v in model_rates]} ({torch.get_num_threads()} threads)"
    )
    section.seconds = time.monotonic() - started
    return section


def main() -> None:
    bench_main(run, __doc__, "4 tiles, one round (smoke run).")


if __name__ == "__main__":
    main()
