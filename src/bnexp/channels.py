"""Per-channel arithmetic on (N, C) or (N, C, *) tensors, the layout of every norm here: channels in dim 1, a
channel's statistics pooled over the batch and every position."""

import torch
from torch import Tensor


def reduce_dims(x: Tensor) -> list[int]:
    """Every dim except the channel dim 1."""
    return [0, *range(2, x.dim())]


def per_channel(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast against x of shape (N, C, *)."""
    return t if x.dim() == 2 else t.view(-1, *[1] * (x.dim() - 2))


def scale_shift(t: Tensor, scale: Tensor, shift: Tensor, out=None) -> Tensor:
    """scale·t + shift with per-channel scale and shift, into `out` if given."""
    if t.dim() == 2:
        return torch.addcmul(shift, t, scale, out=out)  # one pass over t
    # With two (C, 1, ...) operands addcmul takes a slow path on the CPU.
    return torch.mul(t, per_channel(scale, t), out=out).add_(per_channel(shift, t))
