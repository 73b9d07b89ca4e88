"""The folded decode head (lulc_core.decoder_fold): the original SegFormer's logits for far fewer FLOPs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from lulc_core.bundle import ONNX_FILE, export_onnx
from lulc_core.decoder_fold import FoldedSegformer, bilinear_weights

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _trained_like(decoder: int = 64, labels: int = 7, seed: int = 0) -> SegformerForSemanticSegmentation:
    """A small SegFormer whose BatchNorm statistics and biases are far from their initial values."""
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_channels=5, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], decoder_hidden_size=decoder,
        num_attention_heads=[1, 1, 2, 2], num_labels=labels,
    )  # fmt: skip
    model = SegformerForSemanticSegmentation(config).eval()
    bn = model.decode_head.batch_norm
    with torch.no_grad():
        bn.running_mean.uniform_(-2, 2)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        for mlp in model.decode_head.linear_projections:
            mlp.proj.bias.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (128, 32)])
def test_folded_logits_equal_the_original(size: tuple[int, int]) -> None:
    model = _trained_like()
    x = torch.randn(2, 5, *size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(pixel_values=x).logits
        got = FoldedSegformer(model)(x)
    assert got.shape == expected.shape == (2, 7, size[0] // 4, size[1] // 4)
    assert float((got - expected).abs().max()) <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.parametrize(("size_in", "size_out"), [(3, 12), (12, 96), (24, 96), (48, 96), (5, 7), (1, 4), (7, 7)])
def test_upsampling_products_equal_bilinear_interpolation(size_in: int, size_out: int) -> None:
    """The folded head upsamples by matrix products; they must be `F.interpolate`'s bilinear, edges included."""
    x = torch.randn(2, 3, size_in + 1, size_in, generator=torch.Generator().manual_seed(2))
    expected = torch.nn.functional.interpolate(x, size=(size_out + 2, size_out), mode="bilinear", align_corners=False)
    rows = bilinear_weights(size_in + 1, size_out + 2, x.device)
    got = rows @ x @ bilinear_weights(size_in, size_out, x.device).t()
    assert float((got - expected).abs().max()) < 1e-5


def test_folding_removes_most_of_b0s_flops() -> None:
    """MiT-b0's decoder (D = 256) at 1/4 resolution is most of the work; folded, it is a small part."""
    from torch.utils.flop_counter import FlopCounterMode

    config = SegformerConfig(num_channels=15, num_labels=10)  # MiT-b0
    model = SegformerForSemanticSegmentation(config).eval()
    x = torch.zeros(1, 15, 128, 128)
    counts = []
    for run in (lambda: model(pixel_values=x), lambda: FoldedSegformer(model)(x)):
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            run()
        counts.append(counter.get_total_flops())
    original, folded = counts
    assert folded < 0.5 * original, (original, folded)


def test_exported_onnx_is_folded_and_verified_against_the_original(tmp_path: Path, registry_tiny_bundle: Path) -> None:
    """export_onnx writes the folded graph (no 4D-channel fuse convolution) and checks it against the original."""
    out = export_onnx(registry_tiny_bundle, tmp_path / ONNX_FILE)
    names = [node.name for node in onnx.load(str(out)).graph.node]
    assert not [n for n in names if "linear_fuse" in n]
    assert [n for n in names if "/head/projections" in n]
