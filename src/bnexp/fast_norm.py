"""Training-mode batch normalization made fast: bnexp.norm's function, its arithmetic arranged for speed.

`BatchNorm(fast=True)` (what bnexp's runs train with, `norm.fast=true`) computes its training forward and
backward here; `python -m bnexp.bench --only norm,step` measures both kernels against torch's. The tricks:

  * x̂ is never stored: the forward writes y = (x − μ_B)·s + β with the one per-channel factor
    s = γ/√(σ²_B + ε), and the backward works from x − μ_B in the same way,

        ∂ℓ/∂x = s·(∂ℓ/∂y − (∂ℓ/∂β + (x − μ_B)·(∂ℓ/∂γ)/√(σ²_B + ε))/m),  ∂ℓ/∂γ = Σ ∂ℓ/∂y·(x − μ_B)/√(σ²_B + ε),

    which is the textbook backward with the terms collected (bnexp.norm);
  * the backward computes in the memory of the forward's x − μ_B, its own tensor, which it uses up: it
    allocates no full-size tensor, and at the CNN's sizes memory is where the time goes;
  * one output, y, with the running statistics updated inside the forward (the layer's `track`), and the
    older forward(ctx, ...) style, which torch calls without binding its arguments by signature: less
    per-call overhead, which is most of the cost at the MLP's sizes.

What it gives up: torch.func transforms (vmap, grad) cannot transform this style (they need fast=False), and
it has no second derivative of its own: a backward that is itself differentiated (create_graph=True), or a
second backward through a retained graph, differentiates the layer's textbook function (`layer.function`,
bnexp.norm.BatchNormFunction) instead.
"""

import torch
from torch import Tensor

from bnexp.channels import per_channel, reduce_dims, scale_shift


class FusedBatchNorm(torch.autograd.Function):
    """y = BN_γ,β(x) in training mode for the BatchNorm `layer`, whose running statistics it also moves."""

    @staticmethod
    def forward(ctx, x: Tensor, weight, bias, layer) -> Tensor:
        dims = reduce_dims(x)
        mean = x.mean(dims)
        centered = x - per_channel(mean, x)  # x − μ_B
        var = (centered * centered).mean(dims)  # σ²_B, two passes as in bnexp.norm
        invstd = (var + layer.eps).rsqrt_()
        scale = invstd if weight is None else weight * invstd  # s
        y = centered * per_channel(scale, x) if bias is None else scale_shift(centered, scale, bias)
        layer.track(mean, var, x.numel() // x.shape[1])
        ctx.save_for_backward(x, weight, bias)
        ctx.eps, ctx.textbook = layer.eps, layer.function
        ctx.fused = (
            centered,
            mean,
            invstd,
            scale,
        )  # this function's own tensors: the backward overwrites them
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled() or ctx.fused is None:  # differentiated again, or a second backward
            return _textbook_backward(ctx, dy, x, weight, bias)
        (buffer, mean, invstd, scale), ctx.fused = ctx.fused, None
        dims, m = reduce_dims(dy), dy.numel() // dy.shape[1]
        dbeta = dy.sum(dims)  # Σ ∂ℓ/∂y
        buffer.mul_(dy)  # ∂ℓ/∂y·(x − μ_B)
        dgamma = buffer.sum(dims).mul_(invstd)  # Σ ∂ℓ/∂y·x̂
        torch.sub(x, per_channel(mean, x), out=buffer)  # x − μ_B again
        scale_shift(buffer, invstd * dgamma, dbeta, out=buffer)  # ∂ℓ/∂β + x̂·∂ℓ/∂γ
        dx = torch.sub(dy, buffer, alpha=1 / m, out=buffer).mul_(per_channel(scale, dy))
        return (
            dx if ctx.needs_input_grad[0] else None,
            dgamma if ctx.needs_input_grad[1] else None,
            dbeta if ctx.needs_input_grad[2] else None,
            None,
        )


def _textbook_backward(ctx, dy, x, weight, bias):
    """The gradients by differentiating the textbook function at the same inputs, with a graph when grad mode
    is on (create_graph=True): what a second derivative needs."""

    inputs = [(i, t) for i, t in enumerate((x, weight, bias)) if ctx.needs_input_grad[i]]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        # Inputs that are not part of a graph become leaves of this one.
        leaves = [t if t.requires_grad else t.detach().requires_grad_() for _, t in inputs]
        args = [x, weight, bias]
        for (i, _), leaf in zip(inputs, leaves):
            args[i] = leaf
        y, _, _ = ctx.textbook.apply(*args, ctx.eps)
        grads = torch.autograd.grad(y, leaves, dy, create_graph=create_graph)
    out = [None, None, None, None]
    for (i, _), g in zip(inputs, grads):
        out[i] = g
    return tuple(out)
