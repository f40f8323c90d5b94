"""Batch normalization, as Ioffe & Szegedy (2015) write it: the suite's textbook page.

Algorithm 1, per channel over the m values of the mini-batch B (every example and position):

    μ_B  = (1/m) Σ x_i                       the batch mean
    σ²_B = (1/m) Σ (x_i − μ_B)²              the batch variance (biased)
    x̂_i  = (x_i − μ_B) / √(σ²_B + ε)         normalize
    y_i  = γ x̂_i + β                         scale and shift

and its gradients by the chain rule (Sec. 3), from the upstream ∂ℓ/∂y:

    ∂ℓ/∂x̂_i  = ∂ℓ/∂y_i · γ
    ∂ℓ/∂σ²_B = Σ ∂ℓ/∂x̂_i · (x_i − μ_B) · (−½)(σ²_B + ε)^(−3/2)
    ∂ℓ/∂μ_B  = Σ ∂ℓ/∂x̂_i · (−1/√(σ²_B + ε)) + ∂ℓ/∂σ²_B · (1/m) Σ −2(x_i − μ_B)
    ∂ℓ/∂x_i  = ∂ℓ/∂x̂_i / √(σ²_B + ε) + ∂ℓ/∂σ²_B · 2(x_i − μ_B)/m + ∂ℓ/∂μ_B / m
    ∂ℓ/∂γ    = Σ ∂ℓ/∂y_i · x̂_i
    ∂ℓ/∂β    = Σ ∂ℓ/∂y_i

At inference (Algorithm 2) the same affine map uses running averages of μ_B and of the unbiased variance
m/(m − 1)·σ²_B in their place. `BatchNorm` is a drop-in for torch.nn.BatchNorm1d/2d/3d: the same
constructor, parameters, buffers and state_dict keys.

`BatchNormFunction` is the one place this math runs as written. It supports a second derivative and the
torch.func transforms (vmap, grad). Training in bnexp takes `BatchNorm(fast=True)`, the same function with
its arithmetic arranged for speed (bnexp.fast_norm); the tests hold the two equal up to round-off.
`BatchRenorm` (Ioffe 2017) and noisy BN (Santurkar et al. 2018) are BatchNorm with one change each.
Each takes `ghost_batch_size` (Hoffer et al. 2017, "Train longer, generalize better", Sec. 4, Algorithm 1):
in training, the batch is normalized in consecutive "ghost" batches of that many examples, each by its own
statistics, and the running statistics move by each ghost batch in turn, as if it were a batch of its own
(the paper's update is that sequence written out); evaluation is unchanged. The gradient's batch and the
statistics' batch then differ: the noise of the one is set apart from the noise of the other.
"""

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnexp.channels import per_channel, reduce_dims
from bnexp.fast_norm import FusedBatchNorm


class BatchNormFunction(torch.autograd.Function):
    """y, μ_B, σ²_B of training-mode batch normalization over dim 1 (Algorithm 1), with the paper's backward.

    The backward is written in plain tensor ops of the function's inputs and outputs, so autograd can
    differentiate it again (double backward) and torch.func can batch it. Gradients that reach μ_B or σ²_B
    directly (when something differentiates through the returned statistics, as double backward does) join
    the paper's ∂ℓ/∂μ_B and ∂ℓ/∂σ²_B.
    """

    generate_vmap_rule = True  # torch.func derives the batching rule from forward and backward

    @staticmethod
    def forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float):
        dims = reduce_dims(x)
        mean = x.mean(dims)  # μ_B
        centered = x - per_channel(mean, x)  # x − μ_B
        # Two passes (mean, then mean of squared deviations): exact even when |μ| ≫ σ, where E[x²] − μ² is
        # not.
        var = (centered * centered).mean(dims)  # σ²_B
        x_hat = centered * per_channel(torch.rsqrt(var + eps), x)
        y = x_hat if weight is None else per_channel(weight, x) * x_hat  # γ·x̂
        y = y if bias is None else y + per_channel(bias, x)  # + β
        return y, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, var = output
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # unused outputs send None: their terms are skipped

    @staticmethod
    def backward(ctx, dy: Tensor | None, dmean: Tensor | None, dvar: Tensor | None):
        x, weight, mean, var = ctx.saved_tensors
        dims, m = reduce_dims(x), x.numel() // x.shape[1]
        if dy is None:  # only in double backward, where y itself is unused
            dy = torch.zeros_like(x)
        centered = x - per_channel(mean, x)  # x_i − μ_B
        invstd = torch.rsqrt(var + ctx.eps)  # 1/√(σ²_B + ε)
        x_hat = centered * per_channel(invstd, x)
        dx_hat = dy if weight is None else dy * per_channel(weight, x)
        dvar_total = (dx_hat * centered).sum(dims) * (-0.5 * invstd**3)
        if dvar is not None:
            dvar_total = dvar_total + dvar
        # The paper's second term of ∂ℓ/∂μ_B, ∂ℓ/∂σ²_B · (1/m) Σ −2(x_i − μ_B), is zero: Σ (x_i − μ_B) = 0.
        dmean_total = -dx_hat.sum(dims) * invstd
        if dmean is not None:
            dmean_total = dmean_total + dmean
        dx = (
            dx_hat * per_channel(invstd, x)
            + centered * per_channel(dvar_total * 2 / m, x)
            + per_channel(dmean_total / m, x)
        )
        dgamma = (dy * x_hat).sum(dims) if ctx.needs_input_grad[1] else None
        dbeta = dy.sum(dims) if ctx.needs_input_grad[2] else None
        return dx if ctx.needs_input_grad[0] else None, dgamma, dbeta, None


class BatchNorm(_BatchNorm):
    """Batch normalization over dim 1 of (N, C) or (N, C, *) input; a drop-in for torch.nn.BatchNorm1d/2d/3d.

    A subclass of torch's _BatchNorm, so that tools which find batch-norm layers by that class
    (torch.optim.swa_utils.update_bn, precise-BN utilities, SyncBatchNorm conversion) find ours; torch's
    constructor makes the parameters and buffers (the same names and state_dict), the forward and backward
    are ours. bias=False keeps γ without β, as in torch.

    Training: normalize with the mini-batch mean and biased variance of each channel, and (if
    track_running_stats) move running_mean/running_var a fraction `momentum` toward the batch's mean and
    unbiased variance; momentum=None gives the plain average of all batches so far. Eval: normalize with the
    running statistics, or with batch statistics when they are not tracked.

    fast=True computes the training forward and backward with bnexp.fast_norm's kernel (the same function,
    faster; no torch.func transforms); fast=False with BatchNormFunction, as the paper writes it.
    """

    function = BatchNormFunction  # the textbook one: the fast kernel differentiates it for 2nd derivatives

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
        *,
        bias: bool = True,
        fast: bool = False,
        ghost_batch_size: int | None = None,
    ) -> None:
        # torch's own keyword bias is recent: β is dropped here, so that every torch the suite takes has it.
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if affine and not bias:
            self.register_parameter("bias", None)  # None, as torch registers it: the same state_dict keys
        if ghost_batch_size is not None and ghost_batch_size < 2:
            raise ValueError(f"a ghost batch needs two examples or more to normalize, got {ghost_batch_size}")
        self.fast, self.ghost_batch_size = fast, ghost_batch_size

    def reset_parameters(self) -> None:
        """γ = 1 and β = 0: at initialization the layer outputs x̂ itself."""
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        bias = ", bias=False" if self.affine and self.bias is None else ""
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}{bias}, "
            f"track_running_stats={self.track_running_stats}"
            + (", fast=True" if self.fast else "")
            + (f", ghost_batch_size={self.ghost_batch_size}" if self.ghost_batch_size else "")
        )

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(
                f"expected input of shape (N, {self.num_features}) or (N, {self.num_features}, *) "
                f"(channels in dim 1), got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self.training and self.track_running_stats:
            return self.inference(x)
        batches = self.split(x)
        return self.normalize(x) if len(batches) == 1 else torch.cat([self.normalize(b) for b in batches])

    def split(self, x: Tensor) -> tuple[Tensor, ...]:
        """The batches x is normalized in: its ghost batches in training, else x whole."""
        if self.training and self.ghost_batch_size and x.shape[0] > self.ghost_batch_size:
            return ghost_batches(x, self.ghost_batch_size)
        return (x,)

    def normalize(self, x: Tensor) -> Tensor:
        """One batch (or ghost batch) in training mode, or without running statistics: normalized by its
        own statistics, which move the running ones."""
        if x.numel() == 0:  # an empty batch: as in torch, an empty output, the batch counted, no statistics
            if self.training and self.track_running_stats:
                self.num_batches_tracked.add_(1)
            y = x if self.weight is None else x * per_channel(self.weight, x)  # γ and β get (zero) gradients
            return y if self.bias is None else y + per_channel(self.bias, x)
        if x.numel() // self.num_features == 1:  # one value has variance 0 and x̂ = 0: nothing to normalize
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {x.size()}"
            )
        if self.fast:
            return FusedBatchNorm.apply(x, self.weight, self.bias, self)  # it calls self.track
        y, mean, var = BatchNormFunction.apply(x, self.weight, self.bias, self.eps)
        with torch.no_grad():  # running statistics are bookkeeping, not part of the model's gradient
            self.track(mean, var, x.numel() // self.num_features)
        return y

    def inference(self, x: Tensor) -> Tensor:
        """y = γ·(x − running_mean)/√(running_var + ε) + β, a fixed affine map; plain autograd differentiates
        it. μ is subtracted before scaling: the shorter x·s + (β − μ·s) loses digits when |μ| ≫ σ."""
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        y = (x - per_channel(self.running_mean, x)).mul_(per_channel(scale, x))
        return y if self.bias is None else y.add_(per_channel(self.bias, x))

    def track(self, mean: Tensor, var: Tensor, m: int) -> None:
        """Move the running statistics toward a training batch's μ_B and σ²_B (m values per channel), in
        training mode with track_running_stats (else nothing): running ← (1 − f)·running + f·batch with f =
        momentum, or f = 1/k for the k-th batch (momentum None: the plain average). The variance tracked is
        the unbiased m/(m − 1)·σ²_B, an estimate of the population's, as the paper uses at inference. In place
        and without a branch on tensor values, so stacked copies of the buffers update under torch.func.vmap
        (mul_/add_: vmap has batching rules for them, not for lerp_)."""
        if not (self.training and self.track_running_stats):
            return
        running_mean, running_var, batches = self.running_mean, self.running_var, self.num_batches_tracked
        batches.add_(1)
        if self.momentum is None:
            # A tensor, so the factor differs per copy when num_batches_tracked is stacked under vmap.
            f = 1.0 / batches.to(running_mean.dtype)
            running_mean.mul_(1 - f).add_(f * mean)
            running_var.mul_(1 - f).add_(f * (m / (m - 1)) * var)
        else:  # a number: add_'s alpha takes it without making a tensor of it
            f = self.momentum
            running_mean.mul_(1 - f).add_(mean, alpha=f)
            running_var.mul_(1 - f).add_(var, alpha=f * m / (m - 1))


def ghost_batches(x: Tensor, size: int) -> tuple[Tensor, ...]:
    """x split along the batch into consecutive ghost batches of `size` examples; a last one of a single
    example (no spread to normalize by) joins the one before."""
    n = x.shape[0]
    sizes = [size] * (n // size) + ([n % size] if n % size else [])
    if sizes[-1] == 1:
        sizes[-2:] = [sizes[-2] + 1]
    return x.split(sizes)


def renormalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    eps: float,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    r_max: float = math.inf,
    d_max: float = math.inf,
):
    """Batch renormalization's γ·(x̂·r + d) + β (Ioffe 2017, Algorithm 1) toward reference statistics
    (mean, var), per channel over dim 1 (γ = weight, β = bias, each left out when None), and the batch's
    μ_B, σ²_B:

        x̂ = (x − μ_B)/√(σ²_B + ε),   r = clip(√(σ²_B + ε)/√(var + ε), 1/r_max, r_max),
                                      d = clip((μ_B − mean)/√(var + ε), −d_max, d_max)

    r and d are constants to the gradient, which flows through μ_B and σ²_B as in BN (scaled by r).
    Unclipped, the value is (x − mean)/√(var + ε): each example normalized by the reference alone, its
    batch-mates out of its output. Normalizing by constant statistics without that gradient would let the
    weights undo the normalization (Ioffe & Szegedy 2015, Sec. 2). With r_max = 1 and d_max = 0 it is x̂."""
    x_hat, batch_mean, batch_var = BatchNormFunction.apply(x, None, None, eps)
    with torch.no_grad():
        invstd = torch.rsqrt(var + eps)
        r = (torch.sqrt(batch_var + eps) * invstd).clamp(1 / r_max, r_max)
        d = ((batch_mean - mean) * invstd).clamp(-d_max, d_max)
    y = torch.addcmul(per_channel(d, x), x_hat, per_channel(r, x))  # x̂·r + d
    y = y if weight is None else y * per_channel(weight, x)
    return (y if bias is None else y + per_channel(bias, x)), batch_mean, batch_var


def relaxed(start: float, limit: float, step: int, warmup: int, at: int) -> float:
    """A clip's bound at a training step: `start` for the first `warmup` steps, then linearly to `limit` by
    step `at` (at once where at <= warmup, or where the limit is infinite)."""
    if step < warmup:
        return start
    if step >= at or math.isinf(limit):
        return limit
    return start + (limit - start) * (step - warmup) / (at - warmup)


class BatchRenorm(BatchNorm):
    """Batch renormalization (Ioffe 2017): BatchNorm whose training forward is `renormalize` toward the
    running statistics as they stood before the batch, then γ and β; the running statistics move by the
    batch's as BatchNorm's do. Eval mode: BatchNorm's, the running statistics, so training and inference
    compute the same function of one example once r and d are within their clips.

    The clips follow the paper's schedule, counted in training steps as the paper counts it: r_max = 1,
    d_max = 0 (plain BN) for `warmup` steps, while the running statistics become meaningful, then relaxed
    linearly to `r_max` by step `r_max_at` and to `d_max` by step `d_max_at`. A step normalizing its batch
    in k ghost batches counts k in num_batches_tracked, so the step is that count ÷ k: exact while every
    batch splits alike, as the engine's training batches (all full) do. r_max = d_max = inf with
    warmup = 0 renormalizes unclipped from the first batch: BN without its batch noise. The paper keeps a
    moving σ where we keep BatchNorm's running variance (unbiased), so that the buffers and state_dict stay
    BatchNorm's. Always the textbook kernel (`fast` is not used).
    """

    def __init__(
        self,
        *args,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup: int = 5000,
        r_max_at: int = 40000,
        d_max_at: int = 25000,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if r_max < 1 or d_max < 0 or min(warmup, r_max_at, d_max_at) < 0:
            raise ValueError(
                f"batch renorm needs r_max >= 1, d_max >= 0 and step counts >= 0; got r_max={r_max}, "
                f"d_max={d_max}, warmup={warmup}, r_max_at={r_max_at}, d_max_at={d_max_at}"
            )
        self.r_max, self.d_max = r_max, d_max
        self.warmup, self.r_max_at, self.d_max_at = warmup, r_max_at, d_max_at
        self.step_clips = self.clips()  # this training step's, for each of its (ghost) batches

    def clips(self, batches_per_step: int = 1) -> tuple[float, float]:
        """(r_max, d_max) for the next training step, which normalizes `batches_per_step` (ghost) batches."""
        step = int(self.num_batches_tracked) // batches_per_step
        return (
            relaxed(1.0, self.r_max, step, self.warmup, self.r_max_at),
            relaxed(0.0, self.d_max, step, self.warmup, self.d_max_at),
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, warmup={self.warmup}, "
            f"r_max_at={self.r_max_at}, d_max_at={self.d_max_at}"
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.training and self.track_running_stats:
            self.step_clips = self.clips(len(self.split(x)))
        return super().forward(x)

    def normalize(self, x: Tensor) -> Tensor:
        # No running statistics, or an empty or one-value batch: BatchNorm's answer.
        if not self.track_running_stats or x.numel() // self.num_features <= 1:
            return super().normalize(x)
        r_max, d_max = self.step_clips
        y, mean, var = renormalize(
            x, self.running_mean, self.running_var, self.eps, self.weight, self.bias, r_max, d_max
        )
        with torch.no_grad():
            self.track(mean, var, x.numel() // self.num_features)
        return y


class Noise(nn.Module):
    """The noise of Santurkar et al. (2018, App. A.2.1, Algorithm 1), in training mode only: at every step,

        for each unit j:                μ_j ~ U(−0.5, 0.5),            σ_j ~ U(1, 1.25)
        for each sample i and unit j:   m_ij ~ U(μ_j − 0.1, μ_j + 0.1),  s_ij ~ N(σ_j, 0.1²)
                                        a_ij ← s_ij·a_ij + m_ij

    where a conv layer's positions count as part of the batch (every value of x gets its own m and s). Each
    unit's values thus move by a random shift and scale at every step and are spread by i.i.d. noise within
    the batch: a distribution of non-zero mean and non-unit variance that changes all the time, internal
    covariate shift made on purpose. (The paper writes N(σ_j, 0.1); we read 0.1 as the standard deviation.)
    Eval mode: the identity.

    The noise is drawn from torch's global RNG on the input's device, so a seed makes runs repeatable. The
    module keeps the last draw in `noise` (s, m), each of the input's shape. While `hold` is set (by
    `held_noise`), training forwards reuse it and draw nothing: the measurements of bnexp.measures re-run
    the step's batch and must see the noise the step was trained with, and leave the RNG stream alone.
    """

    SHIFT = 0.5  # μ_j ~ U(−SHIFT, SHIFT)
    SCALE = (1.0, 1.25)  # σ_j ~ U(SCALE)
    SAMPLE_SHIFT = 0.1  # m_ij ~ U(μ_j − SAMPLE_SHIFT, μ_j + SAMPLE_SHIFT)
    SAMPLE_SCALE = 0.1  # s_ij ~ N(σ_j, SAMPLE_SCALE²)

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.noise: tuple[Tensor, Tensor] | None = None  # (s, m), each of the input's shape: the last draw
        self.hold = False

    def draw(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """A fresh (s, m) of like's shape, device and dtype: three RNG calls, no host sync."""
        unit = torch.rand(2, self.num_features, device=like.device, dtype=like.dtype)
        mu = per_channel((2 * unit[0] - 1) * self.SHIFT, like)
        sigma = per_channel(self.SCALE[0] + (self.SCALE[1] - self.SCALE[0]) * unit[1], like)
        m = (2 * torch.rand_like(like) - 1).mul_(self.SAMPLE_SHIFT).add_(mu)
        s = torch.randn_like(like).mul_(self.SAMPLE_SCALE).add_(sigma)
        return s, m

    def forward(self, a: Tensor) -> Tensor:
        if not self.training:
            return a
        if self.noise is None or not self.hold:
            self.noise = self.draw(a)
        s, m = self.noise
        if s.shape != a.shape:
            raise RuntimeError(
                f"the held noise was drawn for input of shape {tuple(s.shape)}, not {tuple(a.shape)}: "
                f"held_noise() replays the step's own batch"
            )
        return torch.addcmul(m, s, a)  # s·a + m

    def extra_repr(self) -> str:
        return str(self.num_features)


class NoisyBatchNorm(BatchNorm):
    """The "noisy BatchNorm" of Santurkar et al. (2018, Sec. 2.1): BatchNorm followed by `Noise`, so a
    BN network's layer inputs are made deliberately unstable, more than even the plain network's. The noise
    holds no parameters or buffers: the state_dict is BatchNorm's. Eval mode: plain BatchNorm."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.perturb = Noise(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.perturb(super().forward(x))


@contextmanager
def held_noise(model: nn.Module):
    """Within: every `Noise` of `model` (noisy BN's too) reuses its last draw instead of drawing."""
    noisy = [m for m in model.modules() if isinstance(m, Noise)]
    before = [m.hold for m in noisy]
    for m in noisy:
        m.hold = True
    try:
        yield
    finally:
        for m, hold in zip(noisy, before):
            m.hold = hold
