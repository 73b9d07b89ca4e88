"""Sliding-window prediction with overlap blending in bounded memory.

The area is covered by windows of `window` pixels whose origins are `window - overlap` apart (the last one is
shifted back to end at the border). Each window's class probabilities are weighted by a 2D cosine ramp that is 1
inside and falls towards the window edges over `overlap` pixels, summed, and divided by the summed weights, so
seams between windows vanish.

Windows are processed in *blocks* (a few windows in each direction), in raster order. A block only needs its own
imagery and an accumulator of its own footprint; the strips where it overlaps blocks not yet processed are carried
over (one strip to the right, one full-width strip below). Memory therefore grows with the block and the window
batch, not with the area — only the caller's uint8 output grows with the area.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from lulc_core.errors import InputError

MULTIPLE = 32
"""SegFormer downsamples by 32: windows are multiples of it."""

Region = tuple[int, int, int, int]
"""(row0, row1, col0, col1), end-exclusive, in pixels of the predicted grid."""

BlockSource = Callable[[Region], tuple[np.ndarray, np.ndarray]]
"""Returns the normalised model input (bands, h, w) float32 and a validity mask (h, w) for a region."""

BatchPredictor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
"""Model input batch (B, bands, h, w) -> mean class probabilities (B, N, h, w) and, with test-time augmentation,
the mean of the squared probabilities (for the variance across augmentations), else None."""

FinalRegion = Callable[[Region, np.ndarray, np.ndarray | None, np.ndarray], None]
"""Receives a finished region: mean probabilities (N, h, w), mean squared probabilities or None, validity mask."""


def check_window(window: int, overlap: int) -> None:
    """Validate the window geometry, naming the field and the fix."""
    if window < MULTIPLE or window % MULTIPLE:
        raise InputError("serving.window", f"{window} is not a positive multiple of {MULTIPLE}", "use e.g. 256")
    if overlap < 0 or overlap > window // 2:
        raise InputError(
            "serving.overlap", f"{overlap} must be within 0..{window // 2} (half the window)", "use e.g. window/8"
        )


@dataclass(frozen=True)
class AxisPlan:
    """Window placement along one axis.

    Attributes:
        size: pixels along the axis.
        window: window edge actually used (≤ the requested one for small areas; a multiple of 32).
        origins: first pixel of every window, increasing; the last window ends at `size` (or beyond it when
            `size < window`: that window is padded by reflection).
        blocks: (first, last+1) indices into `origins` of each block of windows.
    """

    size: int
    window: int
    origins: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]

    def footprint(self, block: int) -> tuple[int, int]:
        """Pixels [start, end) touched by the windows of `block`."""
        first, last = self.blocks[block]
        return self.origins[first], min(self.size, self.origins[last - 1] + self.window)

    def final_end(self, block: int) -> int:
        """Pixels before this are final once `block` is done (no later window reaches them)."""
        last = self.blocks[block][1]
        return self.origins[last] if last < len(self.origins) else self.size


def plan_axis(size: int, window: int, overlap: int, block_px: int) -> AxisPlan:
    """Place windows of at most `window` px with `overlap` px along an axis of `size` px; group them in blocks.

    As few windows as the overlap allows, each as small as covers the axis (a multiple of 32): 532 px with window
    512 / overlap 32 become 2 windows of 288 px, not 2 of 512 (every pixel a window computes beyond the area or
    beyond the overlap is work thrown away).
    """
    if size < 1:
        raise InputError("area", "the area is empty (0 pixels)", "give a larger bounding box")
    win = min(window, math.ceil(size / MULTIPLE) * MULTIPLE)
    ovl = min(overlap, win // 2)
    if size > win:  # n windows overlapping by ovl cover n * (w - ovl) + ovl pixels: the smallest w that covers size
        n = math.ceil((size - ovl) / (win - ovl))
        win = min(win, math.ceil((size + (n - 1) * ovl) / n / MULTIPLE) * MULTIPLE)
        ovl = min(overlap, win // 2)
    stride = win - ovl
    if size <= win:
        origins = [0]
    else:
        origins = list(range(0, size - win + 1, stride))
        if origins[-1] + win < size:
            origins.append(size - win)
    per_block = max(1, block_px // stride)
    blocks = tuple((i, min(i + per_block, len(origins))) for i in range(0, len(origins), per_block))
    return AxisPlan(size=size, window=win, origins=tuple(origins), blocks=blocks)


def ramp_weights(n: int, overlap: int) -> np.ndarray:
    """1D blending weights: a raised-cosine ramp over `overlap` px at both ends, 1 between, never 0."""
    w = np.ones(n, np.float32)
    o = min(overlap, n // 2)
    if o > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(o, dtype=np.float64) + 0.5) / o)
        w[:o] = ramp
        w[n - o :] = ramp[::-1]
    return w


def sliding_window(
    height: int,
    width: int,
    n_classes: int,
    source: BlockSource,
    predict_batch: BatchPredictor,
    on_final: FinalRegion,
    *,
    window: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    block_px: int = 1024,
    with_squares: bool = False,
    progress: bool | None = None,
    workers: int = 1,
    predict_on: Callable[[int], BatchPredictor] | None = None,
) -> None:
    """Predict a height x width grid window by window and hand every finished region to `on_final`.

    Batches run on `workers` threads while the calling thread fetches the next blocks' imagery and adds finished
    batches to the accumulators, one block ahead (two when the next block has fewer batches than workers): the model
    does not wait for imagery or blending, and the next block's batches start while the current block is finished. Results are added in raster order
    whatever the order batches finish in, so they do not depend on `workers`. The last batches, fewer than the
    workers, would leave threads idle: with `predict_on` they share them (`predict_on(threads)`: the model on that
    many threads per call).

    Args:
        height: rows of the grid.
        width: columns of the grid.
        n_classes: probability channels `predict_batch` returns.
        source: gives the normalised input of a block footprint (fetches imagery per block).
        predict_batch: the model (with or without test-time augmentation); called from `workers` threads at once.
        on_final: called once per finished region; regions tile the grid without overlap.
        window: window edge in pixels (multiple of 32).
        overlap: overlap of neighbouring windows in pixels (≤ window/2).
        batch_size: windows per forward pass.
        block_px: approximate block edge in pixels (imagery is fetched per block).
        with_squares: also accumulate squared probabilities (test-time augmentation variance).
        progress: show a progress bar (None: only on a terminal).
        workers: batches predicted at the same time (threads).
        predict_on: the model with each call on a given number of threads, for the last batches (None: `predict_batch`).
    """
    check_window(window, overlap)
    ys = plan_axis(height, window, overlap, block_px)
    xs = plan_axis(width, window, overlap, block_px)
    wy = ramp_weights(ys.window, min(overlap, ys.window // 2))
    wx = ramp_weights(xs.window, min(overlap, xs.window // 2))
    weight2d = np.outer(wy, wx)
    k = n_classes * (2 if with_squares else 1) + 1  # probability sums (+ squares) + weight sum
    total = len(ys.origins) * len(xs.origins)
    bar = tqdm(total=total, desc="predict", unit="window", disable=(not progress) if progress is not None else None)
    carry_below: tuple[int, np.ndarray] | None = None  # (first row, (k, rows, width)) from the block row above
    next_below: np.ndarray | None = None  # the strip below the current block row, filled block by block
    carry_right: tuple[int, np.ndarray] | None = None  # (first col, (k, y1-y0, cols)) from the left block

    order = [(bi, bj) for bi in range(len(ys.blocks)) for bj in range(len(xs.blocks))]
    workers = max(1, workers)
    n_batches = sum(math.ceil(_count(ys.blocks[bi]) * _count(xs.blocks[bj]) / batch_size) for bi, bj in order)
    last_round = n_batches % workers  # batches of the last round, when they are fewer than the workers
    shared = predict_on(workers // last_round) if predict_on and last_round and workers // last_round > 1 else None
    queued = 0

    def start(bi: int, bj: int) -> _Block:
        """Fetch block (bi, bj)'s imagery and queue its batches."""
        nonlocal queued
        (y0, y1), (x0, x1) = ys.footprint(bi), xs.footprint(bj)
        data, valid = source((y0, y1, x0, x1))
        windows = [(ys.origins[a], xs.origins[b]) for a in range(*ys.blocks[bi]) for b in range(*xs.blocks[bj])]
        chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
        shape = (ys.window, xs.window)
        jobs = []
        for chunk in chunks:
            model = shared if shared is not None and queued >= n_batches - last_round else predict_batch
            jobs.append(pool.submit(_predict, model, data, chunk, (y0, x0), shape))
            queued += 1
        return _Block(bi, bj, valid, chunks, jobs)

    def finish(block: _Block) -> None:
        """Blend block's batches into its accumulator; hand on its final region, carry the rest."""
        nonlocal carry_below, next_below, carry_right
        bi, bj = block.bi, block.bj
        (y0, y1), (x0, x1) = ys.footprint(bi), xs.footprint(bj)
        y_final, x_final = ys.final_end(bi), xs.final_end(bj)
        if bj == 0:  # a new block row
            carry_below = (ys.final_end(bi - 1), next_below) if bi and next_below is not None else None
            next_below = np.zeros((k, y1 - y_final, width), np.float32) if y_final < y1 else None
            carry_right = None
        acc = np.zeros((k, y1 - y0, x1 - x0), np.float32)
        skip_cols = x0
        if carry_right is not None:
            cx0, strip = carry_right
            acc[:, :, cx0 - x0 : cx0 - x0 + strip.shape[2]] += strip
            skip_cols = cx0 + strip.shape[2]  # the left block already added the strip above these
        if carry_below is not None:
            cy0, strip = carry_below
            if skip_cols < x1:
                acc[:, cy0 - y0 : cy0 - y0 + strip.shape[1], skip_cols - x0 :] += strip[:, :, skip_cols:x1]
        for chunk, job in zip(block.chunks, block.jobs, strict=True):
            mean, squares = job.result()
            _add(acc, chunk, (y0, x0), mean, squares, weight2d, n_classes, with_squares)
        bar.update(sum(len(c) for c in block.chunks))
        fh, fw = y_final - y0, x_final - x0
        final = acc[:, :fh, :fw]
        wsum = final[-1]
        mean_final = final[:n_classes] / wsum
        squares_final = final[n_classes : 2 * n_classes] / wsum if with_squares else None
        on_final((y0, y_final, x0, x_final), mean_final, squares_final, block.valid[:fh, :fw])
        if next_below is not None:
            next_below[:, :, x0:x1] = acc[:, fh:, :]
        carry_right = (x_final, acc[:, :, fw:].copy()) if x_final < x1 else None

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lulc-window")
    queue: deque[_Block] = deque()  # started blocks, the one to finish first on the left
    upcoming = iter(order)
    try:
        while True:
            # start blocks (fetch, queue batches) until the workers have a batch beyond the block to finish next,
            # at most two blocks ahead: a worker done with that block's batches then never waits for imagery
            while len(queue) < 3 and (len(queue) < 2 or sum(len(b.jobs) for b in list(queue)[1:]) < workers):
                nxt = next(upcoming, None)
                if nxt is None:
                    break
                queue.append(start(*nxt))
            if not queue:
                break
            finish(queue.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def _count(span: tuple[int, int]) -> int:
    return span[1] - span[0]


@dataclass
class _Block:
    """A block whose batches are queued: its indices, validity mask, batches (window origins) and their futures."""

    bi: int
    bj: int
    valid: np.ndarray
    chunks: list[list[tuple[int, int]]]
    jobs: list[Future[tuple[np.ndarray, np.ndarray | None]]]


def _predict(
    predict_batch: BatchPredictor,
    data: np.ndarray,
    chunk: list[tuple[int, int]],
    offset: tuple[int, int],
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's mean (and squared) probabilities of the windows at `chunk` (grid origins) of a block."""
    y0, x0 = offset
    batch = np.stack([_cut(data, oy - y0, ox - x0, *shape) for oy, ox in chunk]).astype(np.float32, copy=False)
    with torch.inference_mode():
        mean, squares = predict_batch(torch.from_numpy(batch))
    return mean.float().cpu().numpy(), squares.float().cpu().numpy() if squares is not None else None


def _add(
    acc: np.ndarray,
    chunk: list[tuple[int, int]],
    offset: tuple[int, int],
    mean: np.ndarray,
    squares: np.ndarray | None,
    weight2d: np.ndarray,
    n_classes: int,
    with_squares: bool,
) -> None:
    """Add a batch's weighted probabilities (and squares) and weights to the block accumulator `acc`."""
    y0, x0 = offset
    win_h, win_w = weight2d.shape
    for i, (oy, ox) in enumerate(chunk):
        ry, rx = oy - y0, ox - x0
        h = min(win_h, acc.shape[1] - ry)
        w = min(win_w, acc.shape[2] - rx)
        wgt = weight2d[:h, :w]
        acc[:n_classes, ry : ry + h, rx : rx + w] += mean[i, :, :h, :w] * wgt
        if with_squares and squares is not None:
            acc[n_classes : 2 * n_classes, ry : ry + h, rx : rx + w] += squares[i, :, :h, :w] * wgt
        acc[-1, ry : ry + h, rx : rx + w] += wgt


def _cut(data: np.ndarray, row: int, col: int, h: int, w: int) -> np.ndarray:
    """The window at (row, col) of `data` (a view when it fits), reflect-padded to (h, w) where the data is smaller;
    the batch is stacked from these, so each window is copied once."""
    part = data[:, row : row + h, col : col + w]
    pad_h, pad_w = h - part.shape[1], w - part.shape[2]
    if pad_h or pad_w:
        part = np.pad(part, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect" if min(part.shape[1:]) > 1 else "edge")
    return part
