"""Normalization layers: our own BatchNorm, and the registry the models build their norms from.

BatchNorm follows Ioffe & Szegedy (2015), Algorithm 1: per channel, over the mini-batch B,

    μ_B = mean(x),   σ²_B = mean((x − μ_B)²),   x̂ = (x − μ_B) / √(σ²_B + ε),   y = γ·x̂ + β,

and at inference the same affine map with running averages in place of μ_B and σ²_B. It is a
drop-in for torch.nn.BatchNorm1d/2d/3d: same constructor, parameters, buffers and state_dict keys.
"""

from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from bnexp.config import NormConfig, UserError


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dim except the channel dim 1: a channel's statistics pool the batch and all positions."""
    return [0, *range(2, x.dim())]


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    """Shape a per-channel vector (C,) to broadcast against x of shape (N, C, *)."""
    # For (N, C) input, (C,) already broadcasts; skipping the view saves a call per use.
    return t if x.dim() == 2 else t.view(-1, *[1] * (x.dim() - 2))


def _normalize(
    deviation: Tensor, var: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """y = γ·(x − μ)/√(σ² + ε) + β from the deviations x − μ, computed in place on them.

    The inference map, with the running statistics; plain autograd differentiates it. μ is
    subtracted before scaling because the shorter x·scale + (β − μ·scale) loses digits when
    |μ| ≫ σ.
    """
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    y = deviation.mul_(_per_channel(scale, deviation))
    return y if bias is None else y.add_(_per_channel(bias, deviation))


# ---- training mode: the forward and backward passes, written out -----------------------------
#
# Forward, per channel over the n = N·(positions) values of the batch:
#
#     μ = mean(x),   σ² = mean((x − μ)²),   invstd = 1/√(σ² + ε),   x̂ = (x − μ)·invstd,
#     y = γ·x̂ + β = (x − μ)·(γ·invstd) + β.
#
# Backward, from the upstream gradient dy:
#
#     dβ = Σ dy,   dγ = Σ dy·x̂ = invstd·Σ dy·(x − μ),   dx = γ·invstd·(dy − (dβ + x̂·dγ)/n),
#
# the gradient through x̂ minus its projections onto the two directions the normalization removes
# (shifts and scalings). Both passes work from x − μ rather than x̂: one multiply fewer over the
# whole tensor, the scaling folded into per-channel numbers. The backward appears twice below:
# `_backward` with plain, differentiable tensor ops (what torch.func and double backward use), and
# `_backward_in_place`, which writes every full-size intermediate into the forward's x − μ (what
# ordinary training runs).


def _forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """Training-mode batch norm: y, μ_B and σ²_B, plus for the backward pass x − μ_B, invstd and
    the scale γ·invstd (invstd when there is no γ)."""
    dims = _reduce_dims(x)
    mean = x.mean(dims)
    centered = x - _per_channel(mean, x)  # x − μ
    # Two passes (mean, then mean of squared deviations): exact even when |μ| ≫ σ, where
    # E[x²] − μ² would cancel catastrophically.
    var = (centered * centered).mean(dims)  # biased: the batch's own spread
    invstd = (var + eps).rsqrt_()
    if weight is None:
        scale = invstd
        y = centered * _per_channel(scale, x)
    else:
        scale = weight * invstd
        y = _scale_shift(centered, scale, bias)
    return y, mean, var, centered, invstd, scale


def _scale_shift(t: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """scale·t + shift with per-channel scale and shift, into `out` if given."""
    if t.dim() == 2:
        return torch.addcmul(shift, t, scale, out=out)  # one pass over t
    # With two (C, 1, ...) operands addcmul takes a slow path on the CPU (2-5x slower than this).
    return torch.mul(t, _per_channel(scale, t), out=out).add_(_per_channel(shift, t))


def _backward(dy, x, weight, mean, var, eps, dmean, dvar):
    """dx, dγ, dβ from the inputs and outputs alone, with differentiable, vmap-able ops only.

    x − μ is recomputed from x and μ so that autograd can differentiate this function itself
    (double backward) and torch.func can batch it; there is no out= or addcmul_ (vmap has no
    batching rule for them).
    """
    dims = _reduce_dims(x)
    n = x.numel() // x.shape[1]  # values per channel
    if dy is None:  # only in double backward, where y itself is unused
        dy = torch.zeros_like(x)
    invstd = torch.rsqrt(var + eps)
    centered = x - _per_channel(mean, x)
    dbeta = dy.sum(dims)  # Σ dy
    dgamma = (dy * centered).sum(dims) * invstd  # Σ dy·x̂
    k = invstd if weight is None else weight * invstd  # γ·invstd
    # dx = γ·invstd·(dy − (Σdy + x̂·Σ(dy·x̂))/n), with x̂·dγ = (x − μ)·(invstd·dγ)
    dx = torch.sub(dy, _scale_shift(centered, invstd * dgamma, dbeta), alpha=1 / n)
    dx = dx.mul_(_per_channel(k, x))
    # Gradients that reach μ_B or σ²_B directly (∂μ/∂x = 1/n, ∂σ²/∂x = 2(x − μ)/n); only double
    # backward sends any, through the μ and σ² used above.
    if dmean is not None:
        dx = dx + _per_channel(dmean / n, x)
    if dvar is not None:
        dx = dx + centered * _per_channel(2 * dvar / n, x)
    return dx, dgamma, dbeta


def _backward_in_place(dy: Tensor, centered: Tensor, x: Tensor, mean: Tensor, invstd: Tensor, scale: Tensor):
    """The same dx, dγ, dβ, computed in the memory of x − μ: no new full-size tensor at all.

    At MB sizes a fresh tensor can cost more than its arithmetic (the allocator hands freed memory
    back to the system and page-faults it in again), so this backward takes over the forward's
    x − μ: first for dy·(x − μ), then for x − μ recomputed from x, finally for dx. Not
    differentiable (out= and in-place ops), so only for a first-order backward outside torch.func,
    and only once per forward: a second backward through a retained graph takes `_backward`.
    """
    dims = _reduce_dims(dy)
    n = dy.numel() // dy.shape[1]
    dbeta = dy.sum(dims)  # Σ dy
    buffer = centered.mul_(dy)  # dy·(x − μ)
    dgamma = buffer.sum(dims).mul_(invstd)  # Σ dy·x̂
    torch.sub(x, _per_channel(mean, x), out=buffer)  # x − μ again
    # dx = γ·invstd·(dy − (Σdy + x̂·Σ(dy·x̂))/n), each step written over the previous one
    _scale_shift(buffer, invstd * dgamma, dbeta, out=buffer)
    torch.sub(dy, buffer, alpha=1 / n, out=buffer).mul_(_per_channel(scale, dy))
    return buffer, dgamma, dbeta


class _BatchNormFunction(torch.autograd.Function):
    """Training-mode batch normalization with a hand-written backward, for eager mode.

    Returns y and the batch statistics μ_B and σ²_B (the module folds them into its running
    averages). Written in the old style, forward(ctx, ...), because it is cheaper to call: torch
    binds the arguments of a setup_context-style forward with inspect.signature on every call,
    about 60 µs here, as much as the rest of a small layer's forward. torch.func cannot transform
    this style; under torch.func `_TransformableBatchNorm` runs instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        y, mean, var, centered, invstd, scale = _forward(x, weight, bias, eps)
        # x, μ and σ² (an input and outputs) for a differentiable backward, invstd and γ·invstd
        # for the fast one. x − μ is handed to the fast backward outside save_for_backward: it is
        # this function's own tensor, and that backward overwrites it.
        ctx.save_for_backward(x, weight, mean, var, invstd, scale)
        ctx.centered = centered
        ctx.eps = eps
        # Gradients w.r.t. μ_B and σ²_B arrive as None (not zero tensors) unless something used
        # them, so the usual backward skips their terms.
        ctx.set_materialize_grads(False)
        return y, mean, var

    @staticmethod
    def backward(ctx, dy: Tensor | None, dmean: Tensor | None, dvar: Tensor | None):
        x, weight, mean, var, invstd, scale = ctx.saved_tensors
        centered, ctx.centered = ctx.centered, None  # usable once: the fast backward uses it up
        # Grad mode is on inside backward only when its result is to be differentiated again
        # (create_graph=True): then autograd must see the computation from x, μ and σ².
        differentiable = torch.is_grad_enabled() or dmean is not None or dvar is not None
        if centered is None or dy is None or differentiable:
            dx, dgamma, dbeta = _backward(dy, x, weight, mean, var, ctx.eps, dmean, dvar)
        else:
            dx, dgamma, dbeta = _backward_in_place(dy, centered, x, mean, invstd, scale)
        return (
            dx if ctx.needs_input_grad[0] else None,
            dgamma if ctx.needs_input_grad[1] else None,
            dbeta if ctx.needs_input_grad[2] else None,
            None,  # eps
        )


class _TransformableBatchNorm(torch.autograd.Function):
    """The same function in the setup_context style that torch.func (vmap, grad) can transform.

    Everything backward needs is an input or an output, and backward uses only differentiable
    torch ops: that is what lets torch.func derive the batching rule and what makes double
    backward work.
    """

    generate_vmap_rule = True  # torch.func derives the batching rule from forward and backward

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        y, mean, var, _, _, _ = _forward(x, weight, bias, eps)
        return y, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, var = output
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy: Tensor | None, dmean: Tensor | None, dvar: Tensor | None):
        x, weight, mean, var = ctx.saved_tensors
        dx, dgamma, dbeta = _backward(dy, x, weight, mean, var, ctx.eps, dmean, dvar)
        return (
            dx if ctx.needs_input_grad[0] else None,
            dgamma if ctx.needs_input_grad[1] else None,
            dbeta if ctx.needs_input_grad[2] else None,
            None,  # eps
        )


# Whether a torch.func transform (vmap, grad, ...) is running. A private torch function (the one
# torch's own autograd.Function dispatch asks); should it ever go away, every call takes the
# transformable path, which is correct, only slower.
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: True)


def batch_norm_train(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
    """y, μ_B, σ²_B of training-mode batch norm over dim 1, differentiable (also twice, and
    under torch.func)."""
    function = _TransformableBatchNorm if _functorch_active() else _BatchNormFunction
    return function.apply(x, weight, bias, eps)


class BatchNorm(nn.Module):
    """Batch normalization over dim 1 of (N, C) or (N, C, *) input; a drop-in for
    torch.nn.BatchNorm1d/2d/3d.

    Training: normalize with the mini-batch mean and biased variance of each channel, and (if
    track_running_stats) move running_mean/running_var a fraction `momentum` toward the batch's
    mean and unbiased variance; momentum=None gives the plain average of all batches so far.
    Eval: normalize with the running statistics, or with batch statistics when they are not tracked.

    The running-statistics update is in place, uses tensor ops only and no Python branch on tensor
    values, so K stacked copies of the parameters and buffers can be trained at once under
    torch.func.vmap + torch.func.functional_call.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        # Registered as None when absent, exactly like torch, so state_dicts carry the same keys.
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))  # γ
            self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))  # β
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs))
            self.register_buffer("running_var", torch.ones(num_features, **factory_kwargs))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """γ = 1 and β = 0: at initialization the layer outputs x̂ itself."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (N, {self.num_features}) or (N, {self.num_features}, *) "
                f"(channels in dim 1), got input of shape {tuple(x.shape)}"
            )

        if not self.training and self.track_running_stats:
            # Inference: a fixed affine map with the running statistics; plain autograd
            # differentiates it.
            deviation = x - _per_channel(self.running_mean, x)
            return _normalize(deviation, self.running_var, self.weight, self.bias, self.eps)

        n = x.numel() // self.num_features  # values per channel
        if n == 1:  # a single value has variance 0 and x̂ = 0: there is nothing to normalize
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        y, mean, var = batch_norm_train(x, self.weight, self.bias, self.eps)

        if self.training and self.track_running_stats:
            # Running statistics are bookkeeping, not part of the model's gradient.
            running_mean, running_var = self.running_mean, self.running_var
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                # running ← (1 − factor)·running + factor·batch. The variance is the unbiased one,
                # n/(n − 1)·σ²_B, an estimate of the population's, as the paper uses at inference.
                # (mul_/add_ rather than lerp_: vmap has batching rules for them, not for lerp_.)
                if self.momentum is None:
                    # Cumulative average: the k-th batch gets weight 1/k. A tensor, so the factor
                    # differs per copy when num_batches_tracked is stacked under vmap.
                    factor = 1.0 / self.num_batches_tracked.to(running_mean.dtype)
                    running_mean.mul_(1 - factor).add_(factor * mean)
                    running_var.mul_(1 - factor).add_(factor * (n / (n - 1)) * var)
                else:
                    # A number: add_'s alpha takes it without creating a tensor (cheaper).
                    factor = self.momentum
                    running_mean.mul_(1 - factor).add_(mean, alpha=factor)
                    running_var.mul_(1 - factor).add_(var, alpha=factor * n / (n - 1))
        return y


class NoisyBatchNorm(BatchNorm):
    """BatchNorm followed, in training mode only, by a per-unit scale and shift that change at every
    step: the "noisy BatchNorm" of Santurkar et al. (2018, Sec. 2.1), a BN network whose layer inputs
    are made deliberately unstable (more internal covariate shift than even the plain network).

    Per layer and training forward:  μ ~ U(−0.5, 0.5),  σ ~ U(1, 1.25);  per unit (channel) c:
    m_c ~ U(μ − 0.1, μ + 0.1),  s_c ~ N(σ, 0.1²);  output s_c·BN(x)_c + m_c (the same m_c, s_c for
    every example and position of the batch). Eval mode: plain BatchNorm, no noise.

    The noise is drawn from torch's global RNG (on the input's device), so a seed makes runs
    repeatable; one draw per training forward. The module holds the last draw in `noise` (s, m).
    Inside `held_noise(model)` training forwards reuse the held noise and draw nothing: that is how
    the measurements of `bnexp.ics`, which re-run the step's batch after loss.backward(), see the
    very noise the step was trained with, and leave the RNG stream alone. Under torch.func.vmap the
    draw needs vmap's `randomness` argument (the default, "error", refuses it).
    """

    SHIFT = 0.5  # μ ~ U(−SHIFT, SHIFT)
    SCALE = (1.0, 1.25)  # σ ~ U(SCALE)
    UNIT_SHIFT = 0.1  # m_c ~ U(μ − UNIT_SHIFT, μ + UNIT_SHIFT)
    UNIT_SCALE = 0.1  # s_c ~ N(σ, UNIT_SCALE²)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise: tuple[Tensor, Tensor] | None = None  # (s, m), each (C,): the last draw
        self.hold_noise = False  # set by held_noise(): reuse `noise` instead of drawing

    def draw_noise(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """A fresh (s, m) for this layer, on like's device and dtype: two RNG calls, no host sync."""
        c = self.num_features
        u = torch.rand(2 + c, device=like.device, dtype=like.dtype)
        z = torch.randn(c, device=like.device, dtype=like.dtype)
        mu = (2 * u[0] - 1) * self.SHIFT
        sigma = self.SCALE[0] + (self.SCALE[1] - self.SCALE[0]) * u[1]
        m = (2 * u[2:] - 1) * self.UNIT_SHIFT + mu
        s = z * self.UNIT_SCALE + sigma
        return s, m

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        if not self.training:
            return y
        if self.noise is None or not self.hold_noise:
            self.noise = self.draw_noise(y)
        s, m = self.noise
        return _scale_shift(y, s, m)  # s·y + m, per channel


@contextmanager
def held_noise(model: nn.Module):
    """Within: every NoisyBatchNorm of `model` reuses its last noise draw (see NoisyBatchNorm)."""
    noisy = [m for m in model.modules() if isinstance(m, NoisyBatchNorm)]
    before = [m.hold_noise for m in noisy]
    for m in noisy:
        m.hold_noise = True
    try:
        yield
    finally:
        for m, hold in zip(noisy, before):
            m.hold_noise = hold


_TORCH_BATCHNORM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _group_norm(num_features: int, spatial_dims: int, cfg: NormConfig) -> nn.Module:
    if cfg.groups <= 0 or num_features % cfg.groups:
        divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
        raise UserError(
            f"norm.groups={cfg.groups} does not divide the {num_features} channels of a layer; "
            f"choose norm.groups from the divisors of {num_features} "
            f"({', '.join(map(str, divisors))}) that also divide every other layer's width, "
            f"or change the model's widths."
        )
    return nn.GroupNorm(cfg.groups, num_features, eps=cfg.eps, affine=cfg.affine)


# name -> factory (num_features, spatial_dims, cfg) -> module, where spatial_dims is 0 for (N, C)
# input, 1 for (N, C, L), 2 for (N, C, H, W), 3 for (N, C, D, H, W). A new variant is one entry.
NORMS: dict[str, Callable[[int, int, NormConfig], nn.Module]] = {
    "none": lambda c, spatial_dims, cfg: nn.Identity(),
    "bn": lambda c, spatial_dims, cfg: BatchNorm(c, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine),
    "torch_bn": lambda c, spatial_dims, cfg: _TORCH_BATCHNORM[spatial_dims](
        c, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine
    ),
    # BN plus per-unit noise that changes every training step (Santurkar et al. 2018).
    "noisy_bn": lambda c, spatial_dims, cfg: NoisyBatchNorm(
        c, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine
    ),
    # LayerNorm over each example's channels and positions, with per-channel γ and β.
    "ln": lambda c, spatial_dims, cfg: nn.GroupNorm(1, c, eps=cfg.eps, affine=cfg.affine),
    "gn": _group_norm,
}


def make_norm(cfg: NormConfig, num_features: int, spatial_dims: int = 0) -> nn.Module:
    """The norm layer cfg.name names, for num_features channels and spatial_dims spatial dims."""
    if cfg.name not in NORMS:
        raise UserError(
            f"norm.name={cfg.name!r} is not a known normalization; choose one of: {', '.join(NORMS)}."
        )
    return NORMS[cfg.name](num_features, spatial_dims, cfg)
