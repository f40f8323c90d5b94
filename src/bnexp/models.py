"""The networks: an MLP (the BN paper's MNIST network), a small VGG-style CNN and an Elman RNN.

All are stacks of the same hidden `Layer` (the RNN applies its layers at every time step): an
affine map, the norm, a probe, the nonlinearity g, dropout -- g(BN(Wu)) as in the BN paper, or with
`norm_position="post"` BN(g(Wu + b)), the norm after the nonlinearity. The norm is a constructor argument
(a factory from `bnexp.norm`), so every model runs with every norm. The probe sits exactly at the input of
g: the tensor whose distribution the BN paper plots, and the one every analysis reads.
"""

import math
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn

from bnexp.config import UserError
from bnexp.norm import BatchNorm, BatchRenorm, Noise, NoisyBatchNorm, renormalize

# (num_features, spatial_dims) -> norm layer; spatial_dims is 0 for (N, C), 1 for (N, C, L), ...
NormFactory = Callable[[int, int], nn.Module]

_TORCH_BATCHNORM = {0: nn.BatchNorm1d, 1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _ours(layer):
    """Our BatchNorm, or a variant of it, from the norm group's keys."""

    def build(c, spatial_dims, eps, momentum, affine, fast, ghost_batch_size, **_):
        return layer(c, eps, momentum, affine, fast=fast, ghost_batch_size=ghost_batch_size)

    return build


def _batch_renorm(
    c, spatial_dims, eps, momentum, affine, r_max, d_max, warmup, r_max_at, d_max_at, ghost_batch_size, **_
):
    inf = math.inf  # null: unclipped
    clips = dict(r_max=inf if r_max is None else r_max, d_max=inf if d_max is None else d_max)
    schedule = dict(warmup=warmup, r_max_at=r_max_at, d_max_at=d_max_at)
    return BatchRenorm(c, eps, momentum, affine, ghost_batch_size=ghost_batch_size, **schedule, **clips)


def _torch_bn(c, spatial_dims, eps, momentum, affine, **_):
    return _TORCH_BATCHNORM[spatial_dims](c, eps, momentum, affine)


def _group_norm(c, spatial_dims, eps, affine, groups, **_):
    if groups <= 0 or c % groups:
        divisors = [d for d in range(1, c + 1) if c % d == 0]
        raise UserError(
            f"norm.groups={groups} does not divide the {c} channels of a layer; choose norm.groups from the "
            f"divisors of {c} ({', '.join(map(str, divisors))}) that also divide every other layer's width, "
            f"or change the model's widths."
        )
    return nn.GroupNorm(groups, c, eps, affine)


# The norms by name: each builds its layer for (num_features, spatial_dims) from the norm group's keys
# (eps, momentum, affine, groups, fast, batch renorm's clips; each takes the ones it has). A new variant
# is one entry.
NORMS: dict[str, Callable[..., nn.Module]] = {
    "none": lambda c, spatial_dims, **_: nn.Identity(),
    "bn": _ours(BatchNorm),
    "torch_bn": _torch_bn,
    # Santurkar et al.'s noise after BN (noisy BN), and the same noise in the plain network: their control.
    "noisy_bn": _ours(NoisyBatchNorm),
    "noisy_none": lambda c, spatial_dims, **_: Noise(c),
    # Ioffe (2017): BN renormalized toward its running statistics, r and d clipped on a schedule.
    "batch_renorm": _batch_renorm,
    # LayerNorm over each example's channels and positions, with per-channel γ and β.
    "ln": lambda c, spatial_dims, eps, affine, **_: nn.GroupNorm(1, c, eps, affine),
    "gn": _group_norm,
}


def make_norm(cfg, num_features: int, spatial_dims: int = 0) -> nn.Module:
    """The norm layer cfg.name names (cfg: the norm group), for num_features channels and spatial_dims
    dims."""
    if cfg.name not in NORMS:
        raise UserError(
            f"norm.name={cfg.name!r} is not a known normalization; choose one of: {', '.join(NORMS)}."
        )
    keys = dict(eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine, groups=cfg.groups, fast=cfg.fast)
    keys |= {
        k: getattr(cfg, k) for k in ("r_max", "d_max", "warmup", "r_max_at", "d_max_at", "ghost_batch_size")
    }
    norm = NORMS[cfg.name](num_features, spatial_dims, **keys)
    if cfg.ghost_batch_size is not None and not isinstance(norm, BatchNorm):
        raise UserError(
            f"norm.ghost_batch_size={cfg.ghost_batch_size} splits the batch for our batch norms' statistics "
            f"(norm=bn, noisy_bn, batch_renorm), but norm={cfg.name} has none to split; choose one of them, "
            f"or leave norm.ghost_batch_size at null."
        )
    if getattr(norm, "weight", None) is not None:  # γ (affine norms)
        nn.init.constant_(norm.weight, cfg.gamma_init)
    return norm


class LinearizedSigmoid(nn.Module):
    """The sigmoid's tangent at 0, σ(0) + σ'(0)·x = 0.5 + x/4: the sigmoid network without its
    nonlinearity."""

    def forward(self, x):
        return 0.5 + x / 4


ACTIVATIONS = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "linearized_sigmoid": LinearizedSigmoid,
}


class Probe(nn.Identity):
    """A named point whose input is observed. Free unless someone registers a forward hook on it."""

    @property
    def observed(self) -> bool:
        """Whether a forward hook is registered (bnexp.monitor's, while it observes a step)."""
        return bool(self._forward_hooks)


class Layer(nn.Module):
    """One hidden layer: x -> W x (+ b) -> norm -> probe -> g -> dropout, or with norm_position="post"
    x -> W x + b -> probe -> g -> norm -> dropout."""

    def __init__(
        self,
        linear: Callable[..., nn.Module],
        fan_in: int,
        fan_out: int,
        norm: NormFactory,
        spatial_dims: int,
        activation: str,
        dropout: float,
        bias_before_norm: bool,
        norm_position: str = "pre",
    ):
        super().__init__()
        norm = norm(fan_out, spatial_dims)
        self.post = norm_position == "post"
        # A bias right before a normalization is removed by its mean subtraction: redundant. Without one
        # (none, or only noise), or with g between them (post), the layer keeps it.
        keep_bias = bias_before_norm or self.post or isinstance(norm, (nn.Identity, Noise))
        self.linear = linear(fan_in, fan_out, bias=keep_bias)
        self.norm = norm
        self.probe = Probe()
        self.g = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        if self.post:
            return self.dropout(self.norm(self.g(self.probe(self.linear(x)))))
        return self.dropout(self.g(self.probe(self.norm(self.linear(x)))))


class Network(nn.Module):
    """A sequence of named hidden `Layer`s (layer1, layer2, ... in depth order) and a linear head."""

    body: nn.Sequential
    head: nn.Linear

    def forward(self, x):
        return self.head(self.body(x))

    def layers(self) -> "OrderedDict[str, Layer]":
        return OrderedDict((name, m) for name, m in self.body.named_children() if isinstance(m, Layer))

    def probes(self) -> "OrderedDict[str, Probe]":
        """The probe points, by their stable names (`layer1`, `layer2`, ...), in depth order."""
        return OrderedDict((name, layer.probe) for name, layer in self.layers().items())


class MLP(Network):
    def __init__(
        self,
        input_shape,
        num_classes: int,
        norm: NormFactory,
        depth: int = 3,
        width: int = 100,
        activation: str = "sigmoid",
        dropout: float = 0.0,
        bias_before_norm: bool = False,
        norm_position: str = "pre",
    ):
        super().__init__()
        layer = partial(
            Layer,
            nn.Linear,
            norm=norm,
            spatial_dims=0,
            activation=activation,
            dropout=dropout,
            bias_before_norm=bias_before_norm,
            norm_position=norm_position,
        )
        modules = OrderedDict(flatten=nn.Flatten())
        fan_in = _numel(input_shape)
        for i in range(1, depth + 1):
            modules[f"layer{i}"] = layer(fan_in, width)
            fan_in = width
        self.body = nn.Sequential(modules)
        self.head = nn.Linear(fan_in, num_classes)


class CNN(Network):
    """Conv stages (3x3 conv, norm, g, pooling by 2), one hidden fully connected layer (normalized too,
    unless `norm_fc` is false), the head.

    2-D convolutions for images (C, H, W), 1-D convolutions for sequences (C, L).
    """

    def __init__(
        self,
        input_shape,
        num_classes: int,
        norm: NormFactory,
        channels=(32, 64),
        width: int = 100,
        activation: str = "relu",
        dropout: float = 0.0,
        bias_before_norm: bool = False,
        pool: str = "max",
        norm_fc: bool = True,
        norm_position: str = "pre",
    ):
        super().__init__()
        spatial_dims = len(input_shape) - 1
        if spatial_dims not in (1, 2):
            raise UserError(
                f"model=cnn needs images (C, H, W) or sequences (C, L), but this dataset's examples "
                f"have shape {tuple(input_shape)}. Use model=mlp for flat feature vectors."
            )
        conv = {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]
        pools = {"max": {1: nn.MaxPool1d, 2: nn.MaxPool2d}, "avg": {1: nn.AvgPool1d, 2: nn.AvgPool2d}}
        if pool not in (*pools, "none"):
            raise UserError(f"model.pool={pool!r} is not a pooling; choose one of max, avg, none.")
        common = dict(
            norm=norm,
            activation=activation,
            dropout=dropout,
            bias_before_norm=bias_before_norm,
            norm_position=norm_position,
        )
        modules = OrderedDict()
        size, fan_in = list(input_shape[1:]), input_shape[0]
        for i, c in enumerate(channels, start=1):
            modules[f"layer{i}"] = Layer(
                partial(conv, kernel_size=3, padding=1), fan_in, c, spatial_dims=spatial_dims, **common
            )
            if pool != "none" and min(size) >= 2:  # stop pooling once the feature map is one pixel wide
                modules[f"pool{i}"] = pools[pool][spatial_dims](2)
                size = [s // 2 for s in size]
            fan_in = c
        modules["flatten"] = nn.Flatten()
        if not norm_fc:  # the hidden fully connected layer unnormalized (and so with its bias)
            common["norm"] = NORMS["none"]
        modules[f"layer{len(channels) + 1}"] = Layer(
            nn.Linear, fan_in * _numel(size), width, spatial_dims=0, **common
        )
        self.body = nn.Sequential(modules)
        self.head = nn.Linear(width, num_classes)


def _running(norm: nn.Module) -> bool:
    """Whether a norm keeps running statistics (BN and its variants), used at test."""
    return getattr(norm, "running_mean", None) is not None


def _normalize(norm: nn.Module, x, mean, var):
    """x normalized by the given statistics (treated as constants) and `norm`'s γ and β."""
    return nn.functional.batch_norm(x, mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)


class PerStepNorm(nn.Module):
    """A norm with separate statistics for each time step t < `steps`; later steps reuse the last
    step's (Cooijmans et al. 2016, Sec. 4). All steps share one set of affine parameters γ, β.

    With `pooled` set, a norm with running statistics tests every step with the per-step running
    averages pooled over the steps, each step weighing the same: the mean of the means, and the
    variance of the mixture of the steps (the mean of σ²_t + μ_t², less the pooled mean squared)."""

    def __init__(self, make: Callable[[], nn.Module], steps: int):
        super().__init__()
        self.steps = nn.ModuleList(make() for _ in range(steps))
        for norm in self.steps[1:]:
            for name, p in self.steps[0].named_parameters(recurse=False):
                setattr(norm, name, p)  # tied: one γ and β, however many steps
        self.pooled = False

    def forward(self, x, t: int):
        norm = self.steps[min(t, len(self.steps) - 1)]
        if self.pooled and not norm.training and _running(norm):
            mean = torch.stack([n.running_mean for n in self.steps]).mean(0)
            second = torch.stack([n.running_var + n.running_mean**2 for n in self.steps]).mean(0)
            return _normalize(norm, x, mean, second - mean**2)
        return norm(x)


class SharedNorm(nn.Module):
    """A norm with one set of statistics for every time step, in training as at test. In training, a
    norm with running statistics normalizes every step of a batch by the batch's statistics pooled over
    all its steps, which a recurrence knows only after it ran: `Recurrent` runs the batch once without
    gradients, normalized by the last batch's pooled statistics (0 and 1 before the first batch), and
    hands the summed inputs of that pass, before the norm, to `pool`. Batch after batch this
    iterates towards statistics that reproduce themselves, which is what sharing them means in a
    recurrence. The running averages move once per batch, by the pooled statistics (the variance unbiased,
    as BN's).

    The real pass normalizes step t by those pooled statistics through batch renormalization (Ioffe 2017;
    bnexp.norm.renormalize, unclipped): its value is (a_t − μ_pooled)/σ_pooled, its gradient BN's through
    step t's own batch moments (times r). Pooled statistics used as plain constants would carry no gradient,
    where per-step BN's do, and a comparison of the two would be one of gradients, not of statistics
    (normalizing outside the gradient lets the weights undo it: Ioffe & Szegedy 2015, Sec. 2)."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm
        if _running(norm):  # μ and σ² of the last training batch pooled over its steps (before any: 0, 1)
            # Buffers, not attributes: state that a replay of the step (bnexp.measures) starts from afresh.
            self.register_buffer("pooled_mean", norm.running_mean.clone())
            self.register_buffer("pooled_var", norm.running_var.clone())

    def forward(self, x, t: int):
        if not (self.training and _running(self.norm)):
            return self.norm(x)
        norm = self.norm
        y = renormalize(x, self.pooled_mean, self.pooled_var, norm.eps, norm.weight, norm.bias)[0]
        return norm.perturb(y) if isinstance(norm, NoisyBatchNorm) else y  # noisy BN: its noise

    def pool(self, a):
        """Set the batch's statistics from the summed inputs a (N, C, L) of every step, before the norm, and
        move the running averages by them."""
        flat = a.transpose(1, 2).flatten(0, 1)
        mean, var = flat.mean(0), flat.var(0, unbiased=False)
        self.pooled_mean.copy_(mean)
        self.pooled_var.copy_(var)
        norm = self.norm
        norm.num_batches_tracked += 1
        rate = norm.momentum if norm.momentum is not None else 1 / float(norm.num_batches_tracked)
        norm.running_mean.lerp_(mean, rate)
        norm.running_var.lerp_(var * len(flat) / (len(flat) - 1), rate)


class Recurrent(Layer):
    """One Elman layer over a sequence (N, C, L) -> (N, width, L): at each step t
    h_t = g(norm(W [x_t; h_{t-1}] (+ b))), h_0 = 0, and the layer's output is dropout(h_t).

    The norm acts on the summed input, as in Ba et al. (2016) for LayerNorm (Cooijmans et al.
    normalize the input and recurrent terms separately). Its statistics are kept per step
    (`PerStepNorm`, `steps` > 0: BN normalizes each step's batch by its own statistics) or shared by
    all steps (`SharedNorm`). The probe sees the inputs of g at all steps at once, as (N, width, L).
    """

    def __init__(
        self,
        fan_in: int,
        width: int,
        norm: NormFactory,
        activation: str,
        dropout: float,
        bias_before_norm: bool,
        steps: int = 0,
    ):
        super().__init__(
            nn.Linear,
            fan_in + width,
            width,
            norm,
            spatial_dims=0,
            activation=activation,
            dropout=dropout,
            bias_before_norm=bias_before_norm,
        )
        self.fan_in = fan_in
        self.norm = PerStepNorm(partial(norm, width, 0), steps) if steps > 0 else SharedNorm(self.norm)

    def forward(self, x):
        w_in, w_rec = self.linear.weight.split([self.fan_in, self.linear.out_features], dim=1)
        # The input term of every step in one matrix product, outside the loop: (N, L, width).
        inputs = nn.functional.linear(x.transpose(1, 2), w_in, self.linear.bias)
        if isinstance(self.norm, SharedNorm) and self.training and _running(self.norm.norm):
            with torch.no_grad():  # the first pass, for the statistics of all steps
                self.norm.pool(self.unroll(inputs, w_rec)[0])
        _, pre, out = self.unroll(inputs, w_rec)
        if self.probe.observed:  # for observers only
            self.probe(pre)
        return out

    def unroll(self, inputs, w_rec):
        """The summed inputs (N, width, L) of every step, before and after the norm, and its outputs."""
        h = inputs.new_zeros(inputs.shape[0], w_rec.shape[0])
        summed, pre, out = [], [], []
        for t in range(inputs.shape[1]):
            summed.append(torch.addmm(inputs[:, t], h, w_rec.t()))
            pre.append(self.norm(summed[-1], t))
            h = self.g(pre[-1])
            out.append(self.dropout(h))
        return torch.stack(summed, 2), torch.stack(pre, 2), torch.stack(out, 2)


class Steps(nn.Module):
    """A sequence (N, C, L) as it is; an image (N, C, H, W) as H steps (its rows) of C·W features. With
    `crop`, in training, each example is cut to a random window of `crop` consecutive steps."""

    def __init__(self, crop: int | None = None):
        super().__init__()
        self.crop = crop

    def forward(self, x):
        x = x if x.dim() == 3 else x.permute(0, 1, 3, 2).flatten(1, 2)
        if not (self.training and self.crop):
            return x
        n, c, length = x.shape
        start = torch.randint(0, length - self.crop + 1, (n, 1, 1), device=x.device)
        return x.gather(2, (start + torch.arange(self.crop, device=x.device)).expand(n, c, self.crop))


class LastStep(nn.Module):
    def forward(self, x):
        return x[:, :, -1]


class RNN(Network):
    """Stacked Elman layers (`Recurrent`) that read a sequence step by step; the head classifies the
    last step's hidden state. Sequences (C, L) are L steps of C features, images (C, H, W) H steps
    (rows) of C·W features. Trained on whole sequences, or with `crop` on random windows of `crop`
    steps, each example its own (`train_length`: T_max). Any length runs: with `per_step_stats`,
    steps beyond T_max reuse the statistics of its last step."""

    reads_any_length = True  # the step axis (dim 2) may differ from the training length

    def __init__(
        self,
        input_shape,
        num_classes: int,
        norm: NormFactory,
        depth: int = 1,
        width: int = 64,
        activation: str = "tanh",
        dropout: float = 0.0,
        bias_before_norm: bool = False,
        per_step_stats: bool = False,
        crop: int | None = None,
    ):
        super().__init__()
        if len(input_shape) not in (2, 3):
            raise UserError(
                f"model=rnn needs sequences (C, L) or images (C, H, W), but this dataset's examples "
                f"have shape {tuple(input_shape)}. Use model=mlp for flat feature vectors."
            )
        if depth < 1:
            raise UserError(f"model=rnn needs at least one recurrent layer; got model.depth={depth}.")
        if crop is not None and crop > input_shape[1]:
            raise UserError(
                f"model.crop={crop} is longer than this dataset's sequences of {input_shape[1]} steps; "
                f"choose a crop of at most {input_shape[1]} steps, or model.crop=null for whole sequences."
            )
        self.train_length = crop or input_shape[1]
        fan_in = input_shape[0] * (input_shape[2] if len(input_shape) == 3 else 1)
        steps = self.train_length if per_step_stats else 0
        modules = OrderedDict(steps=Steps(crop))
        for i in range(1, depth + 1):
            modules[f"layer{i}"] = Recurrent(
                fan_in, width, norm, activation, dropout, bias_before_norm, steps
            )
            fan_in = width
        modules["last"] = LastStep()
        self.body = nn.Sequential(modules)
        self.head = nn.Linear(width, num_classes)

    @property
    def pools_statistics(self) -> bool:
        """Whether its per-step statistics can be tested pooled (`pooled_statistics`)."""
        return any(isinstance(m, PerStepNorm) and _running(m.steps[0]) for m in self.modules())

    @contextmanager
    def pooled_statistics(self):
        """Within: every per-step norm tests with its statistics pooled over the steps."""
        norms = [m for m in self.modules() if isinstance(m, PerStepNorm)]
        for m in norms:
            m.pooled = True
        try:
            yield self
        finally:
            for m in norms:
                m.pooled = False


def _numel(shape) -> int:
    return int(torch.Size(shape).numel())


def build_model(cfg, input_shape, num_classes: int) -> Network:
    """The network named by `cfg.model` with the norm named by `cfg.norm` (both config nodes)."""
    m = cfg.model
    norm = partial(make_norm, cfg.norm)
    common = dict(
        norm=norm,
        width=m.width,
        activation=_name(m.activation),
        dropout=m.dropout,
        bias_before_norm=m.bias_before_norm,
    )
    if m.name != "cnn" and not m.norm_fc:
        raise UserError(
            f"model.norm_fc=false leaves the norm off a CNN's hidden fully connected layer, but "
            f"model={m.name} has no convolutions to keep it on; drop model.norm_fc=false or use model=cnn."
        )
    position = _name(m.norm_position)
    if m.name == "rnn" and position != "pre":
        raise UserError(
            f"model.norm_position={position} is for model=mlp and model=cnn; an rnn normalizes its summed "
            f"inputs before the nonlinearity. Leave model.norm_position at pre."
        )
    if m.name == "mlp":
        model = MLP(input_shape, num_classes, depth=m.depth, norm_position=position, **common)
    elif m.name == "cnn":
        model = CNN(
            input_shape,
            num_classes,
            channels=tuple(m.channels),
            pool=m.pool,
            norm_fc=m.norm_fc,
            norm_position=position,
            **common,
        )
    elif m.name == "rnn":
        model = RNN(
            input_shape, num_classes, depth=m.depth, per_step_stats=m.per_step_stats, crop=m.crop, **common
        )
    else:
        raise UserError(f"model.name={m.name!r} is not a model; choose model=mlp, model=cnn or model=rnn.")
    if not m.dropout_before_bn:
        layers = list(model.layers().values())
        for layer, following in zip(layers, layers[1:]):
            if getattr(following.norm, "running_mean", None) is not None:
                layer.dropout = nn.Identity()
    return model


def _name(value) -> str:
    """An Enum config value (typed configs) or a plain string (tests) as a string."""
    return getattr(value, "value", value)
