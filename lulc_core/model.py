"""The SegFormer model: MiT-b0..b5 encoders with any number of input channels.

Random initialisation by default; a pretrained checkpoint (local directory or hub id) is optional. When the
checkpoint has fewer input channels than the bands, its RGB patch-embedding weights are inflated: the RGB
weights go to the red, green and blue bands, the mean over the checkpoint's channels to every other band, all
rescaled so activations keep their magnitude.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
    variant: str,
    num_channels: int,
    num_labels: int,
    pretrained: str | None = None,
    *,
    rgb_channels: Sequence[int] | None = None,
) -> SegformerForSemanticSegmentation:
    """A SegFormer for semantic segmentation.

    Args:
        variant: MiT encoder size, "b0".."b5".
        num_channels: input bands.
        num_labels: output classes including class 0 (unknown).
        pretrained: optional local directory (or hub id) of a SegFormer checkpoint whose encoder is copied.
        rgb_channels: indices of the red, green and blue bands among the inputs; the checkpoint's RGB
            patch-embedding weights go there (default: the first three channels).
    """
    config = segformer_config(variant, num_channels, num_labels)
    model = SegformerForSemanticSegmentation(config)
    if pretrained:
        _load_pretrained_encoder(model, pretrained, rgb_channels)
    return model


def _patch_embedding_key(state: Mapping[str, torch.Tensor]) -> str | None:
    """The key of the first patch-embedding convolution (transformers 5 and 4 layouts)."""
    for key in ("stages.0.patch_embeddings.proj.weight", "encoder.patch_embeddings.0.proj.weight"):
        if key in state:
            return key
    return None


def inflate_patch_embedding(
    weight: torch.Tensor, in_channels: int, rgb_channels: Sequence[int] | None = None
) -> torch.Tensor:
    """Inflate a (out, c, k, k) convolution weight to `in_channels` inputs.

    Every new channel gets the mean over the donor's channels, the donor's own channels go to `rgb_channels`
    (default: the first ones), and everything is scaled by c / in_channels so that activations keep their
    magnitude when all inputs are similarly normalised.
    """
    donor_ch = weight.shape[1]
    targets = list(rgb_channels) if rgb_channels is not None else list(range(min(donor_ch, in_channels)))
    if len(targets) > donor_ch or any(not 0 <= t < in_channels for t in targets):
        raise ConfigError(
            "model.pretrained",
            f"RGB channel indices {targets} do not fit {in_channels} input bands and {donor_ch} checkpoint channels",
        )
    inflated = weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    for src, dst in enumerate(targets):
        inflated[:, dst] = weight[:, src]
    return inflated * (donor_ch / in_channels)


def _load_pretrained_encoder(
    model: SegformerForSemanticSegmentation, source: str, rgb_channels: Sequence[int] | None = None
) -> None:
    """Copy encoder weights from `source`, inflating the first patch embedding to the model's channels."""
    try:
        donor = SegformerForSemanticSegmentation.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "model.pretrained",
            f"cannot load {source!r}: {exc}",
            "give a local directory with a SegFormer checkpoint, or leave unset for random initialisation",
        ) from exc
    donor_state = donor.segformer.state_dict()
    target_state = model.segformer.state_dict()
    key = _patch_embedding_key(donor_state)
    if key is not None and key in target_state and donor_state[key].shape[1] != target_state[key].shape[1]:
        donor_state[key] = inflate_patch_embedding(donor_state[key], target_state[key].shape[1], rgb_channels)
    compatible = {k: v for k, v in donor_state.items() if k in target_state and v.shape == target_state[k].shape}
    if len(compatible) < len(target_state) // 2:
        raise ConfigError(
            "model.pretrained",
            f"{source!r} fits only {len(compatible)} of {len(target_state)} encoder tensors "
            f"(checkpoint hidden sizes {donor.config.hidden_sizes}, model {model.config.hidden_sizes})",
            "use a checkpoint of the same MiT variant as model.variant",
        )
    missing = sorted(set(target_state) - set(compatible))
    model.segformer.load_state_dict(compatible, strict=False)
    # The decode head's MLPs transfer too when their shapes match; the classifier is always new.
    head_target = model.decode_head.state_dict()
    head = {
        k: v
        for k, v in donor.decode_head.state_dict().items()
        if not k.startswith("classifier.") and k in head_target and v.shape == head_target[k].shape
    }
    model.decode_head.load_state_dict(head, strict=False)
    log.info(
        "loaded %d encoder and %d decoder tensors from %s (%d encoder tensors kept random)",
        len(compatible),
        len(head),
        source,
        len(missing),
    )


def logits_at_input_size(model: SegformerForSemanticSegmentation, pixel_values: torch.Tensor) -> torch.Tensor:
    """Forward pass returning logits upsampled (bilinear) from 1/4 to the input's height and width."""
    logits = model(pixel_values=pixel_values).logits
    return torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
