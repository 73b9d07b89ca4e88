"""Spatial splits, chips, normalisation, nodata handling, augmentations and the DataModule."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from lulc_core.datamodule import LulcDataModule
from lulc_core.dataset import ChipDataset, augment_pair, chip_offsets
from lulc_core.errors import InputError
from lulc_core.geo import Tile
from lulc_core.raster import Raster, read_geotiff, write_geotiff
from lulc_core.split import TileSplit, split_tiles

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def grid_tiles(cols: int, rows: int, frames: int = 1, crs: str = "EPSG:32632", size: float = 640.0) -> list[Tile]:
    tiles = []
    for f in range(frames):
        for r in range(rows):
            for c in range(cols):
                minx, miny = 500_000 + c * size, 6_000_000 + r * size
                tiles.append(
                    Tile(
                        id=f"{crs[-5:]}_{r}_{c}_f{f}",
                        crs=crs,
                        bounds=(minx, miny, minx + size, miny + size),
                        resolution=10.0,
                        start=date(2020 + f, 1, 1),
                        end=date(2020 + f, 3, 1),
                    )
                )
    return tiles


def neighbours(a: Tile, b: Tile) -> bool:
    """Tiles share an edge or a corner (or are the same place)."""
    return (
        a.crs == b.crs
        and a.bounds[0] <= b.bounds[2]
        and b.bounds[0] <= a.bounds[2]
        and a.bounds[1] <= b.bounds[3]
        and b.bounds[1] <= a.bounds[3]
    )


# ------------------------------------------------------------------------------------------------ splits


def test_split_is_deterministic_disjoint_and_complete() -> None:
    tiles = grid_tiles(8, 8)
    a = split_tiles(tiles, 0.2, 0.2, seed=3)
    b = split_tiles(list(reversed(tiles)), 0.2, 0.2, seed=3)
    assert a == b
    c = split_tiles(tiles, 0.2, 0.2, seed=4)
    assert c.test != a.test
    ids = a.train + a.val + a.test
    assert sorted(ids) == sorted(t.id for t in tiles)
    assert len(set(ids)) == len(ids)
    # Shares are about right (whole blocks are dealt, so not exact).
    assert 6 <= len(a.test) <= 20 and 6 <= len(a.val) <= 20
    assert a.block_size_m is not None and a.block_size_m >= 640


def test_split_keeps_blocks_and_time_frames_together() -> None:
    tiles = grid_tiles(8, 8, frames=2)
    split = split_tiles(tiles, 0.25, 0.25, seed=1, block_tiles=2)
    stage = {i: s for s in ("train", "val", "test") for i in split.ids(s)}
    by_place: dict[tuple[float, ...], set[str]] = {}
    for t in tiles:
        by_place.setdefault(t.bounds, set()).add(stage[t.id])
    assert all(len(s) == 1 for s in by_place.values()), "time frames of one place straddle splits"
    # 2x2-tile blocks: tiles of one block (same block index) share a split.
    for t in tiles:
        key = (t.bounds[0] // 1280, t.bounds[1] // 1280)
        for u in tiles:
            if (u.bounds[0] // 1280, u.bounds[1] // 1280) == key:
                assert stage[t.id] == stage[u.id]
    # Leakage is limited to block borders: most neighbouring pairs share their split.
    pairs = [(t, u) for t in tiles for u in tiles if t.id < u.id and neighbours(t, u)]
    crossing = sum(stage[t.id] != stage[u.id] for t, u in pairs)
    assert crossing < 0.5 * len(pairs)


def test_split_separates_utm_zones_and_handles_tiny_counts() -> None:
    three = grid_tiles(1, 1, crs="EPSG:32632") + grid_tiles(1, 1, crs="EPSG:32718") + grid_tiles(1, 1, crs="EPSG:32736")
    split = split_tiles(three, 0.2, 0.2, seed=7)
    assert len(split.train) == len(split.val) == len(split.test) == 1
    one = split_tiles(three[:1], 0.2, 0.2, seed=7)
    assert one.train == [three[0].id] and not one.val and not one.test
    two = split_tiles(three[:2], 0.2, 0.2, seed=7)
    assert len(two.train) == 1 and len(two.val) == 1
    no_val = split_tiles(grid_tiles(3, 3), 0.0, 0.3, seed=7)
    assert not no_val.val and no_val.test and no_val.train
    # Three time frames of a single place: falls back to tiles so every split gets one.
    frames = grid_tiles(1, 1, frames=3)
    assert all(split_tiles(frames, 0.2, 0.2, seed=1).ids(s) for s in ("train", "val", "test"))


def test_split_bad_inputs(tmp_path: Path) -> None:
    tiles = grid_tiles(3, 3)
    with pytest.raises(InputError, match="val_fraction"):
        split_tiles(tiles, 0.6, 0.5, seed=1)
    with pytest.raises(InputError, match="no tiles"):
        split_tiles([], 0.2, 0.2, seed=1)
    with pytest.raises(InputError, match="repeat"):
        split_tiles(tiles + tiles[:1], 0.2, 0.2, seed=1)
    with pytest.raises(ValueError, match="disjoint"):
        TileSplit(train=["a"], val=["a"], test=[])
    split = split_tiles(tiles, 0.2, 0.2, seed=1)
    assert TileSplit.load(split.save(tmp_path / "split.json")) == split
    with pytest.raises(InputError, match="does not exist"):
        TileSplit.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------------ chips


def test_chip_offsets_cover_the_tile() -> None:
    assert chip_offsets(224, 64) == [0, 64, 128, 160]
    assert chip_offsets(128, 64) == [0, 64]
    assert chip_offsets(40, 64) == [0]


def test_chips_are_normalised_and_nodata_is_ignored(synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    ds = ChipDataset(s.imagery_dir, s.labels_dir, s.ids, s.stats, chip_size=32, min_labelled_share=0.0)
    assert len(ds) == 4 * len(s.ids)  # 64x64 tiles -> 2x2 chips each
    item = ds[0]  # tile t0_0, top-left chip, holds the nodata corner
    assert item["image"].shape == (4, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (32, 32) and item["mask"].dtype == torch.int64
    assert torch.all(item["image"][:, :8, :8] == 0)
    assert torch.all(item["mask"][:8, :8] == 0)
    # Normalisation: the same pixel by hand.
    raw = read_geotiff(s.imagery_dir / "t0_0.tif").data[:, 10, 12]
    expected = (raw - np.array(s.stats.mean)) / np.array(s.stats.std)
    np.testing.assert_allclose(item["image"][:, 10, 12].numpy(), expected, rtol=1e-5, atol=1e-5)
    labels = read_geotiff(s.labels_dir / "t0_0.tif").data[0]
    assert int(item["mask"][10, 12]) == int(labels[10, 12])
    # Preloaded and lazily read chips are identical.
    lazy = ChipDataset(s.imagery_dir, s.labels_dir, s.ids[:1], s.stats, chip_size=32, preload=False)
    assert not lazy.preloaded and ds.preloaded
    assert torch.equal(lazy[0]["image"], item["image"]) and torch.equal(lazy[0]["mask"], item["mask"])


def test_sparsely_labelled_chips_are_skipped(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    raster = read_geotiff(s.labels_dir / "t0_1.tif")
    raster.data[0, :, :32] = 0  # left half unlabelled
    (tmp_path / "labels").mkdir()
    write_geotiff(tmp_path / "labels" / "t0_1.tif", raster)
    ds = ChipDataset(s.imagery_dir, tmp_path / "labels", ["t0_1"], s.stats, chip_size=32, min_labelled_share=0.5)
    assert sorted((r, c) for _, r, c in ds.chips) == [(0, 32), (32, 32)]


def test_small_tiles_are_padded(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    ds = ChipDataset(s.imagery_dir, s.labels_dir, ["t1_1"], s.stats, chip_size=96, min_labelled_share=0.1)
    assert len(ds) == 1
    item = ds[0]
    assert item["image"].shape == (4, 96, 96)
    assert torch.all(item["mask"][64:, :] == 0) and torch.all(item["image"][:, :, 64:] == 0)


# ----------------------------------------------------------------------------------------- augmentations


def test_augmentations_keep_image_and_mask_aligned() -> None:
    gen = torch.Generator().manual_seed(0)
    mask = torch.arange(16 * 16).reshape(16, 16)
    image = torch.stack([mask.float(), mask.float() * 2 + 1, -mask.float()])
    seen = set()
    for _ in range(64):
        img, msk = augment_pair(image, mask, gen)
        assert torch.equal(img[0].long(), msk) and torch.equal(img[1], msk.float() * 2 + 1)
        assert torch.equal(img[2], -msk.float())
        seen.add(tuple(msk[0, :2].tolist()) + tuple(msk[-1, -2:].tolist()))
    assert len(seen) == 8  # all eight flips/rotations occur


def test_training_chips_are_augmented(synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    ds = ChipDataset(s.imagery_dir, s.labels_dir, s.ids[:2], s.stats, chip_size=64, augment=True)
    torch.manual_seed(0)
    masks = {tuple(ds[1]["mask"].flatten()[:64].tolist()) for _ in range(12)}
    assert len(masks) > 1


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_label_raster(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    with pytest.raises(InputError, match="no label raster for tile 't0_0'") as info:
        ChipDataset(s.imagery_dir, tmp_path, ["t0_0"], s.stats)
    assert info.value.field == "labels_dir"
    with pytest.raises(InputError, match="no imagery raster"):
        ChipDataset(tmp_path, s.labels_dir, ["t0_0"], s.stats)


def test_mismatched_grid(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    raster = read_geotiff(s.labels_dir / "t0_0.tif")
    shifted = Raster(raster.data, raster.transform @ Affine.translation(1, 0), raster.crs, raster.band_names)
    write_geotiff(tmp_path / "t0_0.tif", shifted)
    with pytest.raises(InputError, match="differs from imagery grid"):
        ChipDataset(s.imagery_dir, tmp_path, ["t0_0"], s.stats)
    other_crs = Raster(raster.data, raster.transform, CRS.from_epsg(32633), raster.band_names)
    write_geotiff(tmp_path / "t0_0.tif", other_crs)
    with pytest.raises(InputError, match="differs from imagery grid"):
        ChipDataset(s.imagery_dir, tmp_path, ["t0_0"], s.stats)


def test_band_mismatch_and_bad_class_values(tmp_path: Path, synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    stats = s.stats.model_copy(update={"band_names": ["B02", "B03", "B04", "B11"]})
    with pytest.raises(InputError, match=r"missing \['B11'\]") as info:
        ChipDataset(s.imagery_dir, s.labels_dir, ["t0_0"], stats)
    assert info.value.field == "imagery.bands"
    raster = read_geotiff(s.labels_dir / "t0_0.tif")
    raster.data[0, 0, 0] = 9
    write_geotiff(tmp_path / "t0_0.tif", raster)
    with pytest.raises(InputError, match="class value 9"):
        ChipDataset(s.imagery_dir, tmp_path, ["t0_0"], s.stats)


def test_band_order_follows_the_statistics(synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    order = ["B08", "B02", "B04", "B03"]
    idx = [s.bands.index(b) for b in order]
    stats = s.stats.model_copy(
        update={"band_names": order, "mean": [s.stats.mean[i] for i in idx], "std": [s.stats.std[i] for i in idx]}
    )
    a = ChipDataset(s.imagery_dir, s.labels_dir, ["t0_2"], s.stats, chip_size=32)[0]["image"]
    b = ChipDataset(s.imagery_dir, s.labels_dir, ["t0_2"], stats, chip_size=32)[0]["image"]
    assert torch.equal(a[idx], b)


# ------------------------------------------------------------------------------------------ datamodule


def test_datamodule_batches(synthetic_training_tiles) -> None:
    s = synthetic_training_tiles
    split = split_tiles(s.tiles, 0.25, 0.25, seed=1)
    dm = LulcDataModule(s.imagery_dir, s.labels_dir, split, s.stats, chip_size=32, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 4, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert dm.has_validation()
    loader = dm.train_dataloader()
    assert loader.pin_memory == torch.cuda.is_available() and not loader.persistent_workers
    with rasterio.open(s.imagery_dir / "t0_0.tif") as src:
        assert src.nodata == -9999.0
    empty = LulcDataModule(
        s.imagery_dir, s.labels_dir, split, s.stats, chip_size=64, min_labelled_share=1.0, batch_size=4
    )  # every 64-px tile has an unlabelled stripe
    with pytest.raises(InputError, match="min_labelled_share"):
        empty.setup("fit")
