"""The SegFormer model: MiT-b0..b5 encoders with any number of input channels.

Random initialisation by default; a pretrained checkpoint (local directory or hub id) is optional. When the
checkpoint has fewer input channels than the bands, its RGB patch-embedding weights are inflated: the mean
over the checkpoint's channels is copied to every band and rescaled so activations keep their magnitude.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from lulc_core.errors import ConfigError

log = logging.getLogger(__name__)

# Encoder hyper-parameters of the MiT variants (SegFormer paper, table 6; HF `nvidia/mit-b*` configs).
MIT_VARIANTS: dict[str, dict[str, Any]] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
    "b3": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 18, 3], "decoder_hidden_size": 768},
    "b4": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 8, 27, 3], "decoder_hidden_size": 768},
    "b5": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "decoder_hidden_size": 768},
}


def segformer_config(variant: str, num_channels: int, num_labels: int) -> SegformerConfig:
    """The transformers config of a MiT variant with `num_channels` inputs and `num_labels` classes."""
    if variant not in MIT_VARIANTS:
        raise ConfigError("model.variant", f"{variant!r} is not a MiT variant", f"choose from {list(MIT_VARIANTS)}")
    if num_channels < 1:
        raise ConfigError("imagery.bands", "at least one input band is needed")
    return SegformerConfig(num_channels=num_channels, num_labels=num_labels, **MIT_VARIANTS[variant])  # type: ignore[call-arg]


def build_segformer(
    variant: str, num_channels: int, num_labels: int, pretrained: str | None = None
) -> SegformerForSemanticSegmentation:
    """A SegFormer for semantic segmentation; `pretrained` is a local path or hub id of a checkpoint."""
    config = segformer_config(variant, num_channels, num_labels)
    model = SegformerForSemanticSegmentation(config)
    if pretrained:
        _load_pretrained_encoder(model, pretrained)
    return model


def _load_pretrained_encoder(model: SegformerForSemanticSegmentation, source: str) -> None:
    """Copy encoder weights from `source`, inflating the first patch embedding to the model's channels."""
    try:
        donor = SegformerForSemanticSegmentation.from_pretrained(source)
    except OSError as exc:
        raise ConfigError(
            "model.pretrained",
            f"cannot load {source!r}: {exc}",
            "give a local directory with a SegFormer checkpoint, or leave unset for random initialisation",
        ) from exc
    donor_state = donor.segformer.state_dict()
    target_state = model.segformer.state_dict()
    key = "encoder.patch_embeddings.0.proj.weight"
    if key in donor_state and donor_state[key].shape[1] != target_state[key].shape[1]:
        w = donor_state[key]
        in_ch = target_state[key].shape[1]
        mean = w.mean(dim=1, keepdim=True)
        inflated = mean.repeat(1, in_ch, 1, 1) * (w.shape[1] / in_ch)
        inflated[:, : min(w.shape[1], in_ch)] = w[:, : min(w.shape[1], in_ch)] * (w.shape[1] / in_ch)
        donor_state[key] = inflated
    compatible = {k: v for k, v in donor_state.items() if k in target_state and v.shape == target_state[k].shape}
    missing = sorted(set(target_state) - set(compatible))
    model.segformer.load_state_dict(compatible, strict=False)
    log.info("loaded %d encoder tensors from %s (%d kept random)", len(compatible), source, len(missing))


def logits_at_input_size(model: SegformerForSemanticSegmentation, pixel_values: torch.Tensor) -> torch.Tensor:
    """Forward pass returning logits upsampled (bilinear) from 1/4 to the input's height and width."""
    logits = model(pixel_values=pixel_values).logits
    return torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
