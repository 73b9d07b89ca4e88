"""The model bundle: everything needed to predict, without the training code.

A bundle is a directory::

    model/             save_pretrained() output of SegformerForSemanticSegmentation (config.json,
                       model.safetensors)
    lulc.json          BundleMetadata: bands, resolution, normalisation, label set, metrics, provenance
    model.onnx         optional ONNX export (`export_onnx`): pixel_values (B, bands, H, W) -> logits
                       (B, classes, H/4, W/4), dynamic batch/height/width, verified against torch
    model.int8.onnx    optional static int8 quantisation of model.onnx (`registry.onnx_quantization`,
                       lulc_core.quantization), present only when it agreed with fp32 on the test tiles

The registry stores the directory; KServe's storage initializer puts it under /mnt/models; the predictor loads
it with `ModelBundle.load(path)`.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lulc_core import __version__
from lulc_core.decoder_fold import LogitsOnly, inference_network
from lulc_core.errors import ConfigError, NotFoundError
from lulc_core.labels import LabelSet
from lulc_core.raster import atomic_path, publish_tree

log = logging.getLogger(__name__)

METADATA_FILE = "lulc.json"
WEIGHTS_DIR = "model"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXPORT_PROP = "lulc.export"
"""Key of model.onnx's metadata_props entry that records what a verified export was made from
(`export_fingerprint`)."""


class Normalisation(BaseModel):
    """Per-band mean and standard deviation, in band order."""

    model_config = ConfigDict(extra="forbid")

    mean: list[float]
    std: list[float]


class Provenance(BaseModel):
    """Lineage of a model: which code, config, labels, area, time and imagery made it."""

    model_config = ConfigDict(extra="forbid")

    code_version: str = Field(default=__version__, description="git SHA or package version.")
    config_hash: str | None = Field(default=None, description="RunConfig.fingerprint().")
    label_set: str | None = Field(default=None, description="Label set name and fingerprint.")
    area: str | None = Field(default=None, description="AOI name, bbox or file.")
    time_frames: list[str] = Field(default_factory=list, description="ISO 'start/end' strings.")
    imagery_source: str | None = Field(default=None, description="Imagery store and settings.")
    osm_source: str | None = Field(default=None, description="Label source.")
    run_url: str | None = Field(default=None, description="Link to the training run.")
    tracking_run: str | None = Field(
        default=None,
        description="Id of the tracker run holding the training curves (MLflow run id or Neptune run id); "
        "registration turns that run into the version.",
    )
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class BundleMetadata(BaseModel):
    """The contents of lulc.json."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    architecture: str = Field(default="segformer", description="Model family.")
    variant: str = Field(description="MiT variant b0..b5.")
    bands: list[str] = Field(min_length=1, description="Input bands in channel order.")
    resolution: float = Field(gt=0, description="Pixel size in metres the model was trained at.")
    chip_size: int = Field(gt=0, description="Training chip edge in pixels.")
    normalisation: Normalisation
    label_set: LabelSet
    metrics: dict[str, Any] = Field(default_factory=dict, description="Evaluation metrics (test split).")
    hyperparameters: dict[str, Any] = Field(default_factory=dict, description="Training settings.")
    provenance: Provenance = Field(default_factory=Provenance)
    run_config: dict[str, Any] | None = Field(default=None, description="The RunConfig that trained the model.")


class ModelBundle:
    """A loaded bundle: metadata plus the model (on CPU until moved)."""

    def __init__(self, path: Path, metadata: BundleMetadata, model: torch.nn.Module) -> None:
        self.path = path
        self.metadata = metadata
        self.model = model

    @staticmethod
    def read_metadata(path: str | Path) -> BundleMetadata:
        """Read and validate lulc.json of the bundle at `path`."""
        p = Path(path)
        meta_file = p / METADATA_FILE
        if not meta_file.is_file():
            raise NotFoundError(f"{p} is not a model bundle: {METADATA_FILE} is missing")
        try:
            return BundleMetadata.model_validate_json(meta_file.read_text())
        except ValidationError as exc:
            raise ConfigError(f"{meta_file}", f"invalid bundle metadata: {exc.errors()[0]['msg']}") from exc

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ModelBundle:
        """Load metadata and weights; the model is put in eval mode on `device`."""
        from transformers import SegformerForSemanticSegmentation

        p = Path(path)
        metadata = cls.read_metadata(p)
        weights = p / WEIGHTS_DIR
        if not (weights / "config.json").is_file():
            raise NotFoundError(f"{p} is not a model bundle: {WEIGHTS_DIR}/config.json is missing")
        model = SegformerForSemanticSegmentation.from_pretrained(weights)
        check_model_matches(model, metadata, p)
        model.eval().to(device)
        return cls(p, metadata, model)

    def write_metadata(self) -> None:
        """Rewrite lulc.json (e.g. after metrics were added), atomically."""
        with atomic_path(self.path / METADATA_FILE) as tmp:
            tmp.write_text(self.metadata.model_dump_json(indent=2))


def check_model_matches(model: Any, metadata: BundleMetadata, where: str | Path = "bundle") -> None:
    """The model's input channels and classes must be the metadata's bands and label set."""
    config = getattr(model, "config", None)
    channels = getattr(config, "num_channels", None)
    labels = getattr(config, "num_labels", None)
    if channels is not None and channels != len(metadata.bands):
        raise ConfigError(
            f"{where}: bands",
            f"the model takes {channels} channels but lulc.json lists {len(metadata.bands)} bands",
            "write the bundle with the bands the model was trained on",
        )
    if labels is not None and labels != metadata.label_set.num_classes:
        raise ConfigError(
            f"{where}: label_set",
            f"the model predicts {labels} classes but the label set has {metadata.label_set.num_classes} "
            "(unknown included)",
            "write the bundle with the label set the model was trained on",
        )


def save_bundle(path: str | Path, model: Any, metadata: BundleMetadata) -> Path:
    """Write a bundle directory atomically: built beside `path`, then renamed into place."""
    target = Path(path)
    check_model_matches(model, metadata, target)
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model.save_pretrained(staging / WEIGHTS_DIR, safe_serialization=True)
        (staging / METADATA_FILE).write_text(metadata.model_dump_json(indent=2))
        publish_tree(staging)  # save_pretrained writes model.safetensors 0600 (temp file + rename)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model bundle written to %s", target)
    return target


def export_onnx(
    bundle_dir: str | Path,
    output: str | Path | None = None,
    *,
    opset: int = 17,
    verify: bool = True,
    atol: float = 1e-4,
    reuse: bool = False,
) -> Path:
    """Export the bundle's SegFormer to ONNX (default `<bundle>/model.onnx`, written atomically).

    Input ``pixel_values`` float32 (batch, bands, height, width), normalised as lulc.json says; output ``logits``
    (batch, classes, height/4, width/4). Batch, height and width are dynamic (height and width multiples of 32).
    The graph is the model with its decode head folded (`lulc_core.decoder_fold`: same logits, about half the
    FLOPs). With `verify`, onnxruntime runs the file at two input sizes and must match the original (unfolded)
    torch model within `atol` (scaled by the logits' magnitude), otherwise nothing is written; a verified file
    records `export_fingerprint` in its metadata_props.

    `reuse`: keep a target that a verified export of the same weights, export code and opset wrote (registration
    after `lulc run`'s int8 step, which exported it already) instead of exporting again.
    """
    import warnings

    import onnx

    target = Path(output) if output is not None else Path(bundle_dir) / ONNX_FILE
    bundle = ModelBundle.load(bundle_dir)  # what is not a bundle is refused before anything else
    fingerprint = export_fingerprint(bundle_dir, opset)
    if reuse and verify and recorded_fingerprint(target) == fingerprint:
        log.info("%s is a verified export of these weights: kept", target)
        return target
    original = LogitsOnly(bundle.model).eval()  # eval() reaches the model: both graphs use running statistics
    wrapper = inference_network(bundle.model)
    channels = len(bundle.metadata.bands)
    example = torch.zeros(1, channels, 64, 64)
    with atomic_path(target) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            (example,),
            str(tmp),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_axes={
                "pixel_values": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height_4", 3: "width_4"},
            },
            opset_version=opset,
            dynamo=False,
        )
        if verify:
            diff = verify_onnx(original, tmp, channels, atol=atol)
            log.info("ONNX matches torch (max abs diff %.2e)", diff)
            graph = onnx.load(str(tmp))
            onnx.helper.set_model_props(graph, {EXPORT_PROP: fingerprint})
            onnx.save(graph, str(tmp))
    log.info("ONNX model written to %s", target)
    return target


def export_fingerprint(bundle_dir: str | Path, opset: int) -> str:
    """SHA-256 of what `export_onnx` makes model.onnx from: the weights' files, the folding code, the opset."""
    from lulc_core import decoder_fold

    digest = hashlib.sha256(f"opset {opset}".encode())
    digest.update(Path(decoder_fold.__file__).read_bytes())
    for path in sorted((Path(bundle_dir) / WEIGHTS_DIR).iterdir()):
        if path.is_file():
            digest.update(path.name.encode())
            with path.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def recorded_fingerprint(onnx_path: Path) -> str | None:
    """The `export_fingerprint` a verified export recorded in `onnx_path`, or None (no file, or not recorded)."""
    if not onnx_path.is_file():
        return None
    import onnx

    props = onnx.load(str(onnx_path), load_external_data=False).metadata_props
    return next((p.value for p in props if p.key == EXPORT_PROP), None)


def verify_onnx(
    model: torch.nn.Module,
    onnx_path: str | Path,
    channels: int,
    sizes: tuple[tuple[int, int, int], ...] = ((1, 64, 64), (2, 96, 64)),
    atol: float = 1e-4,
) -> float:
    """Run an exported model with onnxruntime at several (batch, height, width) and compare with torch.

    Returns the largest absolute difference; raises `ConfigError` when a difference exceeds
    ``atol * max(1, |logits|max)``.
    """
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for batch, height, width in sizes:
        x = torch.randn(batch, channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(["logits"], {"pixel_values": x.numpy()})[0]
        if got.shape != expected.shape:
            raise ConfigError(
                "onnx", f"ONNX output shape {got.shape} != torch {expected.shape} at input {tuple(x.shape)}"
            )
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        if diff > atol * max(1.0, float(np.abs(expected).max())):
            raise ConfigError(
                "onnx",
                f"ONNX and torch logits differ by {diff:.3g} at input {tuple(x.shape)}",
                "try another --opset; the export is not written",
            )
    return worst
