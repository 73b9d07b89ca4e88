"""Prediction of a class raster for an in-memory raster (`predict_raster`) or for any bbox (`Predictor`).

Both go through the same steps: model input bands in the bundle's order, normalised with the bundle's mean/std,
nodata set to the mean (0 after normalisation); sliding windows with overlap blending (`windows.py`), optionally
under test-time augmentation (`uncertainty.py`); fusion with OSM and the threshold (`fusion.py`). The Predictor
fetches imagery per block of windows from the imagery store, so memory stays bounded for any area size.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import mmap
import tempfile
from collections.abc import Sequence
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS

from lulc_core.bundle import BundleMetadata, ModelBundle
from lulc_core.config import ServingConfig
from lulc_core.corine import corine_legend, harmonize_corine, legend_values
from lulc_core.errors import ConfigError, InputError, NotCoveredError, TooLargeError, UpstreamError
from lulc_core.geo import BBox, Tile, TimeRange, tile_for_bbox
from lulc_core.inference.fusion import CORINE_MODES, OSM_MODES, CorineSource, check_fusion, fuse, one_hot
from lulc_core.inference.options import FusionMode, Prediction, PredictOptions
from lulc_core.inference.runtime import engine, logits_function, parallel_batches, resolve_runtime
from lulc_core.inference.uncertainty import tta_predictor, variance_and_entropy
from lulc_core.inference.windows import BatchPredictor, BlockSource, Region, check_window, sliding_window
from lulc_core.labels import LabelSet
from lulc_core.raster import Raster

if TYPE_CHECKING:
    from lulc_core.imagery import ImageryStore
    from lulc_core.labelling import LabelSource

log = logging.getLogger(__name__)

PROBABILITY_MAX_PIXELS = 2500 * 2500
"""Largest area (pixels) for which per-class probabilities or uncertainty are returned: these outputs take
2 bytes per pixel and class (8 per pixel for uncertainty), so they are limited to the original utility's area."""

DEFAULT_BLOCK_PX = 1024
"""Edge of the blocks of windows imagery is fetched for (pixels)."""

CONFIDENCE_SCALE = 250
"""The confidence raster stores the winning (fused) probability x 250 as uint8 (0 where there is no imagery)."""


class _ModelRunner:
    """The bundle's model as a function: normalised batch -> probabilities of classes 1..N."""

    def __init__(self, bundle: ModelBundle, runtime: str = "auto", precision: str = "fp32") -> None:
        meta = bundle.metadata
        self.model = bundle.model.eval()
        config = getattr(self.model, "config", None)
        n_out = int(getattr(config, "num_labels", meta.label_set.num_classes))
        n_in = int(getattr(config, "num_channels", len(meta.bands)))
        n_classes = meta.label_set.num_classes
        if n_in != len(meta.bands):
            raise ConfigError(
                f"{bundle.path}/lulc.json", f"the model takes {n_in} channels but bands lists {len(meta.bands)}"
            )
        if n_out == n_classes:
            self.first = 1  # the model has an `unknown` output: it is never a prediction, only the threshold is
        elif n_out == n_classes - 1:
            self.first = 0
        else:
            raise ConfigError(
                f"{bundle.path}/lulc.json",
                f"the model predicts {n_out} classes but label set {meta.label_set.name!r} has {n_classes - 1} "
                "(+ unknown)",
            )
        self.n_classes = n_classes - 1
        self.workers = parallel_batches(bundle, runtime, precision)
        self._engine = (bundle, runtime, precision)
        self.logits = logits_function(bundle, runtime, precision, threads=1 if self.workers > 1 else None)

    def on_threads(self, threads: int) -> _ModelRunner:
        """This runner with every call on `threads` threads (the last batches of a grid, fewer than the workers)."""
        other = copy.copy(self)
        other.logits = logits_function(*self._engine, threads=threads)
        return other

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # only the predicted classes are upsampled (bilinear, as `logits_at_input_size`) to the input size
        low = self.logits(x)[:, self.first :].float()
        logits = torch.nn.functional.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.softmax(logits, dim=1)


class _Normaliser:
    """Bands -> model input: (x - mean) / std per band; nodata and non-finite pixels -> 0 and invalid."""

    def __init__(self, meta: BundleMetadata) -> None:
        norm = meta.normalisation
        if len(norm.mean) != len(meta.bands) or len(norm.std) != len(meta.bands):
            raise ConfigError("lulc.json normalisation", f"needs one mean and std per band ({len(meta.bands)})")
        self.mean = np.asarray(norm.mean, np.float32)[:, None, None]
        std = np.asarray(norm.std, np.float32)
        self.std = np.where(std > 0, std, 1.0).astype(np.float32)[:, None, None]

    def __call__(self, data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.subtract(data, self.mean, dtype=np.float32)  # one new array, normalised in place
        np.divide(x, self.std, out=x)
        ok = valid & np.isfinite(x).all(axis=0)
        x[:, ~ok] = 0.0
        return x, ok


def _model_bands(raster: Raster, bands: Sequence[str], field: str) -> Raster:
    """`raster` with exactly `bands` in order, or InputError naming the missing ones."""
    missing = [b for b in bands if b not in raster.band_names]
    if missing:
        raise InputError(
            field,
            f"bands {missing} are missing (have {raster.band_names}); the model needs {list(bands)}",
            "provide imagery with every band the model was trained on",
        )
    return raster if list(raster.band_names) == list(bands) else raster.select(bands)


def _batch_predictor(runner: _ModelRunner, tta: bool, tta_variants: int) -> BatchPredictor:
    if tta:
        return tta_predictor(runner, tta_variants)
    return lambda x: (runner(x), None)


def _class_tags(label_set: LabelSet, extra: dict[str, Any]) -> dict[str, str]:
    tags = {
        "LABEL_SET": label_set.name,
        "CLASS_NAMES": json.dumps(label_set.names),
        **{f"CLASS_{i}": name for i, name in enumerate(label_set.names)},
    }
    tags.update({k: str(v) for k, v in extra.items() if v is not None})
    return tags


class _Assembler:
    """Collects finished regions into the output arrays (cropped to `crop`), applying fusion and threshold."""

    def __init__(
        self,
        crop: Region,
        n_classes: int,
        *,
        mode: FusionMode,
        threshold: float,
        mixin_weight: float,
        osm: np.ndarray | None,
        probabilities: bool,
        uncertainty: bool,
        confidence: bool = False,
    ) -> None:
        r0, r1, c0, c1 = crop
        self.crop = crop
        self.mode = mode
        self.threshold = threshold
        self.mixin_weight = mixin_weight
        self.osm = osm
        self._files: list[mmap.mmap] = []
        self.classes = self._on_disk((r1 - r0, c1 - c0))
        self.probabilities = np.zeros((n_classes, r1 - r0, c1 - c0), np.float16) if probabilities else None
        self.uncertainty = np.zeros((2, r1 - r0, c1 - c0), np.float32) if uncertainty else None
        self.confidence = self._on_disk((r1 - r0, c1 - c0)) if confidence else None

    def _on_disk(self, shape: tuple[int, int]) -> np.ndarray:
        """A zero-filled uint8 array mapped from an unlinked temporary file: the rows written go to the file (the
        page cache), not the heap, so a 10,000² px request does not hold 100 MB; nothing is left on disk."""
        with tempfile.TemporaryFile(prefix="lulc-classes-") as file:
            file.truncate(shape[0] * shape[1])
            mapped = mmap.mmap(file.fileno(), shape[0] * shape[1])  # keeps its own descriptor
        self._files.append(mapped)
        return np.frombuffer(mapped, np.uint8).reshape(shape)

    def _release(self) -> None:
        """Drop the written rows from this process's resident memory (they stay in the file; reads map them back)."""
        for mapped in self._files:
            if hasattr(mmap, "MADV_DONTNEED"):
                mapped.madvise(mmap.MADV_DONTNEED)

    def __call__(self, region: Region, mean: np.ndarray, squares: np.ndarray | None, valid: np.ndarray) -> None:
        cr0, cr1, cc0, cc1 = self.crop
        r0, r1 = max(region[0], cr0), min(region[1], cr1)
        c0, c1 = max(region[2], cc0), min(region[3], cc1)
        if r0 >= r1 or c0 >= c1:
            return  # entirely inside the edge buffer
        local = (slice(r0 - region[0], r1 - region[0]), slice(c0 - region[2], c1 - region[2]))
        out = (slice(r0 - cr0, r1 - cr0), slice(c0 - cc0, c1 - cc0))
        p = mean[(slice(None), *local)]
        v = valid[local]
        osm = self.osm[out] if self.osm is not None else None
        classes, fused = fuse(self.mode, p, v, osm, self.threshold, self.mixin_weight)
        self.classes[out] = classes
        if self.confidence is not None and fused is not None:
            top = np.rint(fused.max(axis=0) * CONFIDENCE_SCALE).astype(np.uint8)
            top[~v] = 0
            self.confidence[out] = top
        if self.probabilities is not None and fused is not None:
            self.probabilities[(slice(None), *out)] = fused
        if self.uncertainty is not None and squares is not None:
            variance, entropy = variance_and_entropy(p, squares[(slice(None), *local)])
            variance[~v] = np.nan
            entropy[~v] = np.nan
            self.uncertainty[0][out] = variance
            self.uncertainty[1][out] = entropy
        self._release()


def _to_prediction(
    assembler: _Assembler,
    label_set: LabelSet,
    transform: Affine,
    crs: CRS,
    tags: dict[str, Any],
    title: str | None,
) -> Prediction:
    classes = Raster(assembler.classes[None], transform, crs, ["class"], None, _class_tags(label_set, tags))
    probs = (
        Raster(assembler.probabilities, transform, crs, list(label_set.names[1:]), None, {"LABEL_SET": label_set.name})
        if assembler.probabilities is not None
        else None
    )
    unc = None
    if assembler.uncertainty is not None:
        unc = Raster(
            assembler.uncertainty,
            transform,
            crs,
            ["variance", "entropy"],
            np.isfinite(assembler.uncertainty[1]),
            {
                "VARIANCE": "largest per-class probability variance across test-time augmentations",
                "ENTROPY": "Shannon entropy of the mean probabilities / ln(number of classes)",
            },
        )
    conf = None
    if assembler.confidence is not None:
        conf = Raster(
            assembler.confidence[None],
            transform,
            crs,
            ["confidence"],
            None,
            {"SCALE": f"1/{CONFIDENCE_SCALE}", "CONFIDENCE": "winning class probability after fusion"},
        )
    return Prediction(
        classes=classes, label_set=label_set, probabilities=probs, uncertainty=unc, title=title, confidence=conf
    )


def _run_model(
    bundle: ModelBundle,
    grid: tuple[int, int],
    crop: Region,
    source: BlockSource,
    *,
    window: int,
    overlap: int,
    batch_size: int,
    block_px: int,
    threshold: float,
    mode: FusionMode,
    mixin_weight: float,
    osm: np.ndarray | None,
    probabilities: bool,
    uncertainty: bool,
    tta: bool,
    tta_variants: int,
    progress: bool | None,
    runtime: str = "auto",
    precision: str = "fp32",
    confidence: bool = False,
) -> _Assembler:
    runner = _ModelRunner(bundle, runtime, precision)
    assembler = _Assembler(
        crop,
        runner.n_classes,
        mode=mode,
        threshold=threshold,
        mixin_weight=mixin_weight,
        osm=osm,
        probabilities=probabilities,
        uncertainty=uncertainty,
        confidence=confidence,
    )
    sliding_window(
        grid[0],
        grid[1],
        runner.n_classes,
        source,
        _batch_predictor(runner, tta or uncertainty, tta_variants),
        assembler,
        window=window,
        overlap=overlap,
        # `batch_size` windows at once, shared out over the parallel calls: memory as on one call of all of them
        batch_size=math.ceil(batch_size / runner.workers),
        block_px=block_px,
        with_squares=uncertainty,
        progress=progress,
        workers=runner.workers,
        predict_on=lambda threads: _batch_predictor(runner.on_threads(threads), tta or uncertainty, tta_variants),
    )
    return assembler


def predict_raster(
    bundle: ModelBundle,
    raster: Raster,
    *,
    window: int = 256,
    overlap: int = 32,
    batch_size: int = 4,
    threshold: float = 0.0,
    return_probabilities: bool = False,
    uncertainty: bool = False,
    tta: bool = False,
    tta_variants: int = 8,
    block_px: int = DEFAULT_BLOCK_PX,
    progress: bool | None = None,
    runtime: str = "auto",
) -> Prediction:
    """Predict classes for an in-memory raster of any size, on the raster's own grid.

    Args:
        bundle: the loaded model bundle.
        raster: imagery holding (at least) the bundle's bands, by name; `valid` marks pixels with data.
        window: sliding-window edge in pixels (multiple of 32).
        overlap: overlap between windows in pixels (blended with a cosine ramp).
        batch_size: windows per forward pass.
        threshold: below this winning probability a pixel is unknown (0).
        return_probabilities: also return per-class probabilities (float16).
        uncertainty: test-time augmentation -> 2-band variance/entropy raster.
        tta: classes from the probabilities averaged over test-time augmentations (also without `uncertainty`).
        tta_variants: number of flip/rot90 variants for `tta` and `uncertainty` (2..8).
        block_px: approximate edge of the blocks of windows processed together.
        progress: show a progress bar (None: only on a terminal).
        runtime: "auto" (the bundle's model.onnx in onnxruntime when present, else torch), "torch" or "onnx";
            see `lulc_core.inference.runtime`.

    Raises:
        InputError: bands missing, bad threshold or window, unknown runtime.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError("threshold", f"{threshold} is outside 0..1", "give a probability such as 0.5")
    check_window(window, overlap)
    meta = bundle.metadata
    src = _model_bands(raster, meta.bands, "raster.bands")
    normalise = _Normaliser(meta)
    valid_all = src.valid_mask

    def source(region: Region) -> tuple[np.ndarray, np.ndarray]:
        r0, r1, c0, c1 = region
        return normalise(src.data[:, r0:r1, c0:c1], valid_all[r0:r1, c0:c1])

    assembler = _run_model(
        bundle,
        (raster.height, raster.width),
        (0, raster.height, 0, raster.width),
        source,
        window=window,
        overlap=overlap,
        batch_size=batch_size,
        block_px=block_px,
        threshold=threshold,
        mode=FusionMode.ONLY_MODEL,
        mixin_weight=0.5,
        osm=None,
        probabilities=return_probabilities,
        uncertainty=uncertainty,
        tta=tta,
        tta_variants=tta_variants,
        progress=progress,
        runtime=runtime,
    )
    tags = {"THRESHOLD": threshold, "FUSION_MODE": FusionMode.ONLY_MODEL.value, "MODEL": bundle.path.name}
    tags["ENGINE"] = engine(bundle, runtime)
    tags["TTA_VARIANTS"] = tta_variants if tta or uncertainty else 0
    return _to_prediction(assembler, meta.label_set, raster.transform, raster.crs, tags, None)


class Predictor:
    """Predicts any bbox and date range: imagery per block from a store, OSM/CORINE fusion, bounded memory.

    Used by the KServe predictor (serving/), by `lulc predict --model`, by `lulc run` and by the mapping
    pipeline's blocks (`predict_tile`).

    Args:
        bundle: the loaded model bundle.
        store: imagery store.
        osm_source: the label source of the OSM fusion modes (OSM, or CORINE mapped onto the label set).
        settings: serving settings.
        corine: CORINE source of the CORINE modes (default: `osm_source` when it gives CORINE).
        block_px: edge of the blocks of windows imagery is fetched for.
        progress: show a progress bar (None: only on a terminal).
        runtime: "auto", "torch" or "onnx".
        missing_imagery: "raise", or "empty": a part of a block the store has nothing for becomes unknown
            instead of failing the block (the mapping pipeline).
    """

    def __init__(
        self,
        bundle: ModelBundle,
        store: ImageryStore,
        osm_source: LabelSource | None = None,
        settings: ServingConfig | None = None,
        *,
        corine: CorineSource | None = None,
        block_px: int = DEFAULT_BLOCK_PX,
        progress: bool | None = None,
        runtime: str = "auto",
        missing_imagery: Literal["raise", "empty"] = "raise",
    ) -> None:
        self.bundle = bundle
        self.missing_imagery = missing_imagery
        self.store = store
        self.osm_source = osm_source
        if corine is None and isinstance(osm_source, CorineSource):
            corine = osm_source
        self.corine = corine
        self.settings = settings or ServingConfig()
        self.block_px = block_px
        self.progress = progress
        self.runtime = resolve_runtime(bundle, runtime, self.settings.precision)
        from lulc_core.imagery import sensor_normalisation_of, with_sensor_normalisation

        mode = sensor_normalisation_of(bundle.metadata.run_config)
        self.store = with_sensor_normalisation(store, mode)  # as the training tiles were
        check_window(self.settings.window, self.settings.overlap)
        self._normalise = _Normaliser(bundle.metadata)

    @property
    def label_set(self) -> LabelSet:
        return self.bundle.metadata.label_set

    def request_tile(self, bbox: BBox, start: date, end: date) -> Tile:
        """The output grid of a request: the bbox on its UTM zone at the model's resolution."""
        res = self.bundle.metadata.resolution
        digest = hashlib.sha1(f"{bbox.as_tuple()}|{start}|{end}|{res}".encode()).hexdigest()[:12]
        return tile_for_bbox(bbox, res, start, end, tile_id=f"predict-{digest}")

    def check_size(self, tile: Tile, options: PredictOptions) -> None:
        """TooLargeError (HTTP 413) when the area, or its probabilities/uncertainty, exceed the limits."""
        pixels = tile.width * tile.height
        limit = self.settings.max_pixels
        if pixels > limit:
            raise TooLargeError(
                "bbox",
                f"the area is {tile.width} x {tile.height} = {pixels:,} px at {tile.resolution:g} m, above the "
                f"limit of {limit:,} px (serving.max_pixels)",
                "split the area into smaller boxes, or raise serving.max_pixels",
            )
        small = min(limit, PROBABILITY_MAX_PIXELS)
        for name, wanted in (("probabilities", options.probabilities), ("uncertainty", options.uncertainty)):
            if wanted and pixels > small:
                raise TooLargeError(
                    f"options.{name}",
                    f"{name} are returned for areas up to {small:,} px; this one is {pixels:,} px",
                    f"ask for the class raster only, or split the area into boxes of at most {small:,} px",
                )

    def predict(self, bbox: BBox, start: date, end: date, options: PredictOptions | None = None) -> Prediction:
        """Classes (and optionally probabilities/uncertainty) for `bbox` from imagery of [start, end].

        The bbox (EPSG:4326) becomes a grid on its UTM zone at the model's resolution; `edge_buffer_m` of extra
        margin is predicted around it (windows at the border see context) and cropped off.

        Raises:
            InputError: bad dates, fusion mode not servable, missing bands.
            TooLargeError: area above `max_pixels` (or probabilities/uncertainty above 2500 x 2500 px).
            NotCoveredError: the imagery store has nothing for the area.
        """
        opts = options or PredictOptions()
        TimeRange(start=start, end=end)
        self.check_options(opts)
        tile = self.request_tile(bbox, start, end)
        self.check_size(tile, opts)
        title = (
            f"{self.label_set.name}: {bbox.west:.4f}, {bbox.south:.4f}, {bbox.east:.4f}, {bbox.north:.4f} "
            f"({start} to {end}, {opts.fusion_mode.value})"
        )
        return self.predict_tile(tile, opts, title=title, tags={"BBOX": json.dumps(list(bbox.as_tuple()))})

    def check_options(self, opts: PredictOptions) -> None:
        """InputError when the fusion mode cannot be served or uncertainty is asked of a mode without the model."""
        mode = opts.fusion_mode
        check_fusion(mode, self.osm_source, self.corine, self.label_set)
        if opts.uncertainty and mode in (FusionMode.ONLY_OSM, *CORINE_MODES):
            raise InputError(
                "options.uncertainty",
                f"uncertainty comes from the model; fusion_mode {mode.value} does not run it",
                "use fusion_mode only_model (or another mode that runs the model) for uncertainty",
            )

    def predict_tile(
        self,
        tile: Tile,
        options: PredictOptions,
        *,
        title: str | None = None,
        tags: dict[str, Any] | None = None,
        confidence: bool = False,
    ) -> Prediction:
        """Predict on exactly the grid of `tile` (its CRS, bounds and resolution); no size limit is applied.

        `predict` calls this for a request's bbox; the mapping pipeline calls it for each block of a zone grid
        (with `confidence`: the winning probability as a uint8 band). Options as in `predict`.
        """
        opts = options
        self.check_options(opts)
        mode = opts.fusion_mode
        model_free = mode in (FusionMode.ONLY_OSM, *CORINE_MODES)
        s = self.settings
        threshold = s.threshold if opts.threshold is None else opts.threshold
        buffer_m = s.edge_buffer_m if opts.edge_buffer_m is None else opts.edge_buffer_m
        tta = s.tta if opts.tta is None else opts.tta
        res = tile.resolution
        transform = Affine(res, 0.0, tile.bounds[0], 0.0, -res, tile.bounds[3])
        crs = CRS.from_user_input(tile.crs)
        all_tags: dict[str, Any] = {
            "THRESHOLD": threshold,
            "FUSION_MODE": mode.value,
            "MODEL": self.bundle.path.name,
            "ENGINE": "none" if model_free else engine(self.bundle, self.runtime, s.precision),
            "START": tile.start.isoformat(),
            "END": tile.end.isoformat(),
            "TTA_VARIANTS": opts.tta_variants if tta or opts.uncertainty else 0,
            "EDGE_BUFFER_M": buffer_m,
            **(tags or {}),
        }
        log.info("predicting %s: %d x %d px, %s", tile.id, tile.width, tile.height, mode.value)

        if mode == FusionMode.ONLY_CORINE:
            return self._raw_corine(tile, opts, transform, crs, all_tags, title or tile.id)
        osm = self._reference_labels(mode, tile)
        if model_free:
            assert osm is not None
            return self._labels_only(osm, opts.probabilities, transform, crs, all_tags, title or tile.id)

        buf = math.ceil(buffer_m / res - 1e-9)
        grid = (tile.height + 2 * buf, tile.width + 2 * buf)
        crop = (buf, buf + tile.height, buf, buf + tile.width)
        origin = (tile.bounds[0] - buf * res, tile.bounds[3] + buf * res)
        assembler = _run_model(
            self.bundle,
            grid,
            crop,
            self._block_source(tile, origin),
            window=s.window,
            overlap=s.overlap,
            batch_size=s.batch_size,
            block_px=self.block_px,
            threshold=threshold,
            mode=mode,
            mixin_weight=opts.mixin_weight,
            osm=osm,
            probabilities=opts.probabilities,
            uncertainty=opts.uncertainty,
            tta=tta,
            tta_variants=opts.tta_variants,
            progress=self.progress,
            runtime=self.runtime,
            precision=s.precision,
            confidence=confidence,
        )
        return _to_prediction(assembler, self.label_set, transform, crs, all_tags, title)

    def _reference_labels(self, mode: FusionMode, tile: Tile) -> np.ndarray | None:
        """OSM (or harmonised CORINE) labels on the request grid, for the modes that use them."""
        if mode == FusionMode.HARMONIZED_CORINE:
            assert self.corine is not None
            codes = self.corine.corine_codes(tile)
            return _on_grid(harmonize_corine(codes.data[0], self.label_set), tile, "CORINE source")
        if mode in OSM_MODES:
            from lulc_core.labelling import tile_labels

            assert self.osm_source is not None
            labels = tile_labels(self.osm_source, self.label_set, tile, when=tile.end)
            return _on_grid(np.asarray(labels.data[0], np.uint8), tile, "OSM labels")
        return None

    def _raw_corine(
        self, tile: Tile, opts: PredictOptions, transform: Affine, crs: CRS, tags: dict[str, Any], title: str
    ) -> Prediction:
        """only_corine: the CORINE classes themselves, with the CORINE legend (CLC colours and names)."""
        if opts.probabilities:
            raise InputError(
                "options.probabilities",
                "only_corine returns the CORINE classes, which have no probabilities",
                "ask for the classes only, or use harmonized_corine (one-hot over the model's classes)",
            )
        assert self.corine is not None
        codes = self.corine.corine_codes(tile)
        values = _on_grid(legend_values(codes.data[0]), tile, "CORINE source")
        legend = corine_legend()
        classes = Raster(values[None], transform, crs, ["class"], None, _class_tags(legend, tags))
        return Prediction(classes=classes, label_set=legend, title=title.replace(self.label_set.name, "CORINE", 1))

    def _labels_only(
        self,
        labels: np.ndarray,
        probabilities: bool,
        transform: Affine,
        crs: CRS,
        tags: dict[str, Any],
        title: str,
    ) -> Prediction:
        n = self.label_set.num_classes - 1
        classes = Raster(labels[None], transform, crs, ["class"], None, _class_tags(self.label_set, tags))
        probs = None
        if probabilities:
            probs = Raster(one_hot(labels, n).astype(np.float16), transform, crs, list(self.label_set.names[1:]))
        return Prediction(classes=classes, label_set=self.label_set, probabilities=probs, title=title)

    def _block_source(self, tile: Tile, origin: tuple[float, float]) -> BlockSource:
        """Fetch and normalise the imagery of one block footprint of the (buffered) grid."""
        bands = self.bundle.metadata.bands
        res = tile.resolution
        x_origin, y_origin = origin

        def source(region: Region) -> tuple[np.ndarray, np.ndarray]:
            r0, r1, c0, c1 = region
            block = Tile(
                id=f"{tile.id}-r{r0}-c{c0}",
                crs=tile.crs,
                bounds=(x_origin + c0 * res, y_origin - r1 * res, x_origin + c1 * res, y_origin - r0 * res),
                resolution=res,
                start=tile.start,
                end=tile.end,
            )
            try:
                fetched = self.store.fetch(block, bands)
            except NotCoveredError:
                if self.missing_imagery == "raise":
                    raise
                log.info("no imagery for %s: predicted as unknown", block.id)  # the mapping pipeline's blocks
                return np.zeros((len(bands), r1 - r0, c1 - c0), np.float32), np.zeros((r1 - r0, c1 - c0), bool)
            raster = _model_bands(fetched, bands, "imagery.bands")
            if raster.data.shape[1:] != (r1 - r0, c1 - c0):
                raise UpstreamError(
                    "imagery store",
                    f"returned {raster.data.shape[1:]} px for tile {block.id}, expected {(r1 - r0, c1 - c0)}",
                )
            return self._normalise(raster.data, raster.valid_mask)

        return source


def _on_grid(labels: np.ndarray, tile: Tile, what: str) -> np.ndarray:
    if labels.shape != (tile.height, tile.width):
        raise UpstreamError(what, f"returned {labels.shape} px, expected {(tile.height, tile.width)}")
    return labels
