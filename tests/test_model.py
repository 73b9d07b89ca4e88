"""The SegFormer: MiT variants, any channel count, pretrained encoders inflated from RGB (local files only)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import SegformerForSemanticSegmentation

from lulc_core.errors import ConfigError
from lulc_core.model import (
    MIT_VARIANTS,
    build_segformer,
    inflate_patch_embedding,
    logits_at_input_size,
    segformer_config,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

PATCH_KEY = "stages.0.patch_embeddings.proj.weight"


@pytest.mark.parametrize("variant", sorted(MIT_VARIANTS))
def test_variant_configs(variant: str) -> None:
    cfg = segformer_config(variant, 15, 7)
    assert cfg.num_channels == 15 and cfg.num_labels == 7
    assert cfg.hidden_sizes == MIT_VARIANTS[variant]["hidden_sizes"]
    assert cfg.depths == MIT_VARIANTS[variant]["depths"]


def test_bad_variant_and_channels() -> None:
    with pytest.raises(ConfigError, match="not a MiT variant") as info:
        segformer_config("b9", 3, 2)
    assert info.value.field == "model.variant"
    with pytest.raises(ConfigError, match="at least one input band"):
        segformer_config("b0", 0, 2)


def test_any_channel_count_gives_logits_at_input_size() -> None:
    torch.manual_seed(0)
    model = build_segformer("b0", 15, 7).eval()
    x = torch.randn(2, 15, 64, 96)
    with torch.no_grad():
        assert model(pixel_values=x).logits.shape == (2, 7, 16, 24)
        assert logits_at_input_size(model, x).shape == (2, 7, 64, 96)
    assert build_segformer("b0", 1, 2).config.num_channels == 1


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake "pretrained" 3-channel SegFormer (150 ADE20k-like classes) saved locally."""
    torch.manual_seed(1)
    donor = SegformerForSemanticSegmentation(segformer_config("b0", 3, 150))
    path = tmp_path_factory.mktemp("rgb_segformer")
    donor.save_pretrained(path)
    return path


def test_pretrained_rgb_checkpoint_inflates_to_15_bands(rgb_checkpoint: Path) -> None:
    donor = SegformerForSemanticSegmentation.from_pretrained(rgb_checkpoint)
    rgb = [3, 2, 1]  # B04, B03, B02 of the default band list
    model = build_segformer("b0", 15, 7, pretrained=str(rgb_checkpoint), rgb_channels=rgb)
    d, m = donor.segformer.state_dict(), model.segformer.state_dict()
    w = d[PATCH_KEY]
    assert m[PATCH_KEY].shape == (32, 15, 7, 7) and w.shape == (32, 3, 7, 7)
    scale = 3 / 15
    for src, dst in enumerate(rgb):
        torch.testing.assert_close(m[PATCH_KEY][:, dst], w[:, src] * scale)
    for other in (0, 4, 14):
        torch.testing.assert_close(m[PATCH_KEY][:, other], w.mean(dim=1) * scale)
    # Every other encoder tensor is copied as is.
    for key, value in d.items():
        if key != PATCH_KEY:
            torch.testing.assert_close(m[key], value, msg=key)
    # Decoder MLPs transfer, the classifier (150 -> 7 classes) is new.
    head_d, head_m = donor.decode_head.state_dict(), model.decode_head.state_dict()
    torch.testing.assert_close(head_m["linear_fuse.weight"], head_d["linear_fuse.weight"])
    assert head_m["classifier.weight"].shape == (7, 256, 1, 1)
    # An RGB image in the mapped bands gives the donor's patch activations (scaled by 3/15).
    x = torch.randn(1, 3, 32, 32)
    x15 = torch.zeros(1, 15, 32, 32)
    x15[:, rgb] = x
    conv_d = donor.segformer.stages[0].patch_embeddings.proj
    conv_m = model.segformer.stages[0].patch_embeddings.proj
    with torch.no_grad():
        torch.testing.assert_close(
            conv_m(x15) - conv_m.bias[None, :, None, None], (conv_d(x) - conv_d.bias[None, :, None, None]) * scale
        )


def test_default_inflation_uses_first_channels(rgb_checkpoint: Path) -> None:
    model = build_segformer("b0", 4, 3, pretrained=str(rgb_checkpoint))
    w = SegformerForSemanticSegmentation.from_pretrained(rgb_checkpoint).segformer.state_dict()[PATCH_KEY]
    got = model.segformer.state_dict()[PATCH_KEY]
    torch.testing.assert_close(got[:, :3], w * 0.75)
    torch.testing.assert_close(got[:, 3], w.mean(dim=1) * 0.75)


def test_pretrained_errors(tmp_path: Path, rgb_checkpoint: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load") as info:
        build_segformer("b0", 15, 7, pretrained=str(tmp_path / "nothing-here"))
    assert info.value.field == "model.pretrained"
    with pytest.raises(ConfigError, match="same MiT variant"):
        build_segformer("b1", 15, 7, pretrained=str(rgb_checkpoint))
    with pytest.raises(ConfigError, match="do not fit"):
        inflate_patch_embedding(torch.zeros(8, 3, 7, 7), 4, rgb_channels=[0, 1, 9])
