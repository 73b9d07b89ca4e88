"""What makes N data-parallel processes train the model one process trains (same seed, same effective batch).

DDP splits each global batch across ranks and averages the gradients; that alone equals the single-process step
only if nothing in the forward pass depends on *which* samples share a process:

- **Stochastic layers** (SegFormer's classifier dropout and the encoder's drop-path) normally draw one random
  tensor per call for the whole local batch, so 2 ranks of 4 chips draw other masks than 1 process of 8.
  :func:`seed_stochastic_layers` replaces them with layers that draw each sample's mask from that sample's own seed
  (the seed :class:`lulc_core.dataset.ShardedSampler` gives it: seed, epoch, chip index), so a chip gets the same
  mask whichever rank, batch position or worker it lands on.
- **BatchNorm** (the decode head) normalises with the statistics of the local batch. On GPUs torch's
  `SyncBatchNorm` computes them over all ranks; torch has no CPU kernels for it, so :class:`GlooSyncBatchNorm`
  (a Lightning `LayerSync` plugin) does the same with differentiable all-reduces that work on gloo.

The loss normaliser (the class-weight total of all ranks) is in :class:`lulc_core.training.SegmentationTask`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from lightning.pytorch.plugins import LayerSync
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

_MIX = 1_000_003


class SampleNoise:
    """The per-sample seeds of the batch being forwarded, shared by the seeded layers of one model."""

    def __init__(self) -> None:
        self.seeds: list[int] | None = None
        self.calls = 0

    @contextmanager
    def batch(self, seeds: torch.Tensor | None) -> Iterator[None]:
        """Seed the stochastic layers with one seed per sample for one forward pass (None: torch's global RNG)."""
        self.seeds = None if seeds is None else [int(s) for s in seeds.tolist()]
        self.calls = 0
        try:
            yield
        finally:
            self.seeds = None

    def uniform(self, like: torch.Tensor, per_sample: tuple[int, ...]) -> torch.Tensor:
        """Uniform [0, 1) numbers of shape (batch, *per_sample), each sample's from its own seed and this call."""
        self.calls += 1
        batch = like.shape[0]
        if self.seeds is None or len(self.seeds) != batch:
            return torch.rand((batch, *per_sample), dtype=like.dtype, device=like.device)
        out = torch.empty((batch, *per_sample))
        for i, seed in enumerate(self.seeds):
            generator = torch.Generator().manual_seed((seed * _MIX + self.calls) % (2**63))
            out[i] = torch.rand(per_sample, generator=generator)
        return out.to(device=like.device, dtype=like.dtype)


class _SeededLayer(nn.Module):
    """A stochastic layer (probability `p`) whose random numbers for a sample come from that sample's seed."""

    def __init__(self, p: float, noise: SampleNoise) -> None:
        super().__init__()
        self.p = p
        self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.keep(x) / (1.0 - self.p)

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        """1 where `x` is kept, 0 where it is dropped (broadcastable to `x`)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"p={self.p}, per-sample seeded"


class SeededDropout(_SeededLayer):
    """Element-wise dropout whose mask for a sample depends only on that sample's seed."""

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        return (self.noise.uniform(x, tuple(x.shape[1:])) >= self.p).to(x.dtype)


class SeededDropPath(_SeededLayer):
    """Stochastic depth (a residual branch dropped per sample) drawn from each sample's seed."""

    def keep(self, x: torch.Tensor) -> torch.Tensor:
        return torch.floor(self.noise.uniform(x, (1,) * (x.ndim - 1)) + (1.0 - self.p))


def seed_stochastic_layers(model: nn.Module) -> SampleNoise:
    """Replace the dropout and drop-path layers of `model` by per-sample seeded ones; returns their seed holder.

    Parameters and the state dict are unchanged (these layers have none); in evaluation mode they are identities.
    """
    noise = SampleNoise()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            drop_path = float(getattr(child, "drop_prob", 0.0)) if type(child).__name__.endswith("DropPath") else 0.0
            if isinstance(child, nn.Dropout) and child.p > 0:
                setattr(parent, name, SeededDropout(child.p, noise))
            elif drop_path > 0:
                setattr(parent, name, SeededDropPath(drop_path, noise))
    return noise


class _SyncedBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device and backend."""

    def _check_input_dim(self, input: torch.Tensor) -> None:  # the original class checked it at build time
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable: the backward all-reduces too

        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        local_count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dims), local_count]))
        count = total[-1]
        mean = total[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce((centred * centred).sum(dims)) / count
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                n = float(count)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / max(n - 1.0, 1.0), alpha=m)
        return y


class GlooSyncBatchNorm(LayerSync):
    """Lightning plugin: BatchNorm layers use the statistics of all ranks' samples while fitting (CPU/gloo too)."""

    def apply(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, _BatchNorm) and not isinstance(module, _SyncedBatchNorm):
                vars(module)["original_class"] = type(module)
                module.__class__ = _SyncedBatchNorm  # same parameters and buffers: the state dict is unchanged
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if isinstance(module, _SyncedBatchNorm):
                module.__class__ = vars(module).pop("original_class")
        return model
