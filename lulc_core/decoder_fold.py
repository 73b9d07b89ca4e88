"""SegFormer for inference with its decode head folded: the same logits for half the FLOPs.

SegFormer's all-MLP decoder (`SegformerDecodeHead`) projects each encoder stage i to D channels (a linear layer
L_i), upsamples it bilinearly to 1/4 resolution, concatenates the four maps (4D channels), mixes them with a 1x1
convolution W (`linear_fuse`, no bias), then BatchNorm, ReLU and the 1x1 classifier. At 1/4 resolution that
convolution is most of the network's work: for MiT-b0 at 512² px, 8.6 of 14.1 GFLOP per window (b2-b5, D = 768:
77 GFLOP).

Bilinear upsampling is linear, per channel, and its weights sum to one, so a per-pixel linear map commutes with
it: W · concat_i(up(L_i c_i)) = sum_i up(W_i L_i c_i), with W_i the block of W that reads stage i. `FoldedSegformer`
therefore applies one 1x1 convolution A_i = s * (W_i L_i) per stage at the stage's own resolution, upsamples the
D-channel results and adds them, with the linear layers' biases and the BatchNorm (running statistics: eval mode,
scale s and shift t) folded into one bias; then ReLU and the classifier, unchanged. No 4D-channel concat, no
1/4-resolution 4D -> D convolution; the logits equal the original's up to float rounding
(`lulc_core.bundle.export_onnx` verifies the exported graph against the original model).

Used for inference only (ONNX export and the predictor's torch runtime); training, checkpoints and the bundle
keep the transformers model unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FoldedDecodeHead(nn.Module):
    """A trained `SegformerDecodeHead` (eval mode) as per-stage 1x1 convolutions summed at 1/4 resolution."""

    def __init__(self, head: Any) -> None:
        super().__init__()
        stages = len(head.linear_projections)
        hidden = head.linear_fuse.out_channels
        fuse = head.linear_fuse.weight.detach()[:, :, 0, 0].double()  # (D, stages * D)
        bn = head.batch_norm
        scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
        bias = bn.bias.detach().double() - scale * bn.running_mean.detach().double()
        self.projections = nn.ModuleList()
        for i, mlp in enumerate(head.linear_projections):
            block = stages - 1 - i  # the head concatenates the stages in reverse order
            w_i = fuse[:, block * hidden : (block + 1) * hidden]
            weight = scale[:, None] * (w_i @ mlp.proj.weight.detach().double())
            bias = bias + scale * (w_i @ mlp.proj.bias.detach().double())
            conv = nn.Conv2d(weight.shape[1], hidden, kernel_size=1, bias=False)
            conv.weight = nn.Parameter(weight.float()[:, :, None, None], requires_grad=False)
            self.projections.append(conv.to(head.linear_fuse.weight.device))
        self.bias = nn.Parameter(bias.float().to(head.linear_fuse.weight.device)[None, :, None, None], False)
        self.classifier = head.classifier

    def forward(self, stages: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Encoder stage maps (B, C_i, H_i, W_i), finest first -> logits (B, classes, H_0, W_0).

        The coarser stages' projections are upsampled and summed by two matrix products: each along its width
        (B, D, h_i, w_i) @ (w_i, W), then all at once along the height, [A_1 | A_2 | A_3] (H, sum h_i) @ the
        width-upsampled maps stacked on their rows. The same numbers as `F.interpolate(..., mode="bilinear",
        align_corners=False)` and three additions, at less than half the time on a CPU (onnxruntime's Resize
        and Add are memory-bound there; the products are not).
        """
        height, width = stages[0].shape[2:]
        mixed = self.projections[0](stages[0]) + self.bias
        rows, columns = [], []
        for projection, state in zip(self.projections[1:], stages[1:], strict=True):
            rows.append(projection(state) @ bilinear_weights(state.shape[3], width, state.device).t())
            columns.append(bilinear_weights(state.shape[2], height, state.device))
        upsampled = torch.cat(columns, dim=1) @ torch.cat(rows, dim=2)
        return self.classifier(torch.relu(mixed + upsampled))  # type: ignore[no-any-return]


def bilinear_weights(size_in: Any, size_out: Any, device: torch.device) -> torch.Tensor:
    """(size_out, size_in) weights of bilinear upsampling along one axis, as `F.interpolate(mode="bilinear",
    align_corners=False)`: output o samples input position (o + 0.5) * size_in / size_out - 0.5, clamped to the
    edges, between its two neighbours. Sizes may be traced (ONNX export keeps them dynamic)."""
    source = torch.arange(size_out, dtype=torch.float32, device=device)
    positions = torch.arange(size_in, dtype=torch.float32, device=device)
    source = ((source + 0.5) * (size_in / size_out) - 0.5).clamp(min=0)
    source = torch.minimum(source, positions[-1])
    return torch.relu(1 - (source[:, None] - positions[None, :]).abs())


class FoldedSegformer(nn.Module):
    """`SegformerForSemanticSegmentation` for inference: pixel_values -> 1/4-resolution logits, decoder folded.

    Built from the model's current weights (call again after further training); always in eval mode.
    """

    def __init__(self, model: Any) -> None:
        super().__init__()
        if model.config.reshape_last_stage is False:
            raise ValueError("FoldedSegformer needs reshape_last_stage=True (SegFormer's default)")
        self.encoder = model.segformer
        self.head = FoldedDecodeHead(model.decode_head)
        self.eval()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        stages = self.encoder(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        return self.head(tuple(stages))  # type: ignore[no-any-return]


def inference_network(model: Any) -> nn.Module:
    """pixel_values -> 1/4-resolution logits for inference: SegFormer folded, any other model's `.logits` as is."""
    if hasattr(model, "decode_head") and hasattr(model, "segformer"):
        return FoldedSegformer(model)
    return LogitsOnly(model.eval())


class LogitsOnly(nn.Module):
    """A model whose output has `.logits` (transformers' convention) as a tensor function (what ONNX exports)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits  # type: ignore[no-any-return]
