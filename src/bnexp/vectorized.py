"""Vectorized sweeps: K runs that differ only in shape-free settings, trained as one program.

The K networks become one (`fold`): every layer's counterpart computes all K runs side by side on
"folded" tensors (B, K·C, *), run k's channels at k·C ... (k+1)·C − 1. Linear layers become one batched
matmul, convolutions grouped ones, BatchNorm a BatchNorm over K·C channels (per-channel statistics, so
each run's own), GroupNorm/LayerNorm a GroupNorm with K times the groups; activations and pooling act
per channel anyway. A step (`Folded`, a stepper of bnexp.engine's loop) is then one ordinary eager forward
and backward of the sum of the K runs' losses (run k's gradient is its own loss's), and an SGD update of
every parameter viewed (K, -1), with per-run learning rates (and weight decay, momentum) as (K, 1) factors:
addcmul with such a factor rounds exactly like torch.optim.SGD's `add_(grad, alpha=-lr)`.

The engine's loop is the same for one run and for K, so everything but the step is shared: schedule,
batch order, logging, evaluation, divergence, epilogue. What the step gives each run is what bnexp.engine's
Eager stepper would: the same initial weights (its model is built and initialized the same way), the same
batches (bnexp.data.BatchOrder), the same dropout masks (its own generator, in the state the global RNG has
after the run's initialization, drawn as torch's CPU dropout draws them: `_GroupedDropout`), its slice of
the folded probe values and its gradients. Results equal the sequential runs up to float round-off
(batched matmuls sum in another order than the eager ones): see tests/test_vectorized.py for the tolerance.

What can be vectorized (`unsupported_reason`): the MLP and the CNN; optim sgd or momentum; dropout on the
CPU (a GPU's fused dropout kernel draws its masks in a way one program cannot follow per run), one
dropout rate per program (model.dropout changes the network: a sweep over it makes one program per rate); the
deterministic norms (bn, batch_renorm, torch_bn, none, ln, gn; not noisy_bn or noisy_none, whose noise is
drawn from the global RNG).
"""

import copy
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import MISSING, OmegaConf
from torch import nn

from bnexp.config import UserError, check_ranges
from bnexp.data import InMemoryData
from bnexp.models import LinearizedSigmoid
from bnexp.monitor import captured
from bnexp.norm import BatchNorm, BatchRenorm
from bnexp.runtime import device_name
from bnexp.step import StepOutput, initialized_model, learning_rate

# Config keys (flattened, dotted) that may differ between the runs of one vectorized program: none of
# them changes a tensor's shape or the program's control flow. Every other key must be equal.
SHAPE_FREE_KEYS = frozenset(
    {
        "seed",
        "optim.lr",
        "optim.lr_batch_size",
        "optim.weight_decay",
        "optim.momentum",
        "init.std",
        "init.gain",
    }
)
SUPPORTED_OPTIMIZERS = ("sgd", "momentum")
SUPPORTED_NORMS = ("bn", "batch_renorm", "torch_bn", "none", "ln", "gn")
SUPPORTED_MODELS = ("mlp", "cnn")
# The settings Folded implements (data.* are all the data loader's business). A setting added to the schema
# later is supported only at its default value: the Eager stepper may do something new with it.
IMPLEMENTED_KEYS = frozenset(
    {
        "model.name",
        "model.depth",
        "model.width",
        "model.activation",
        "model.dropout",
        "model.dropout_before_bn",
        "model.bias_before_norm",
        "model.channels",
        "model.pool",
        "model.norm_fc",
        "model.norm_position",
        "norm.name",
        "norm.eps",
        "norm.momentum",
        "norm.affine",
        "norm.groups",
        "norm.fast",
        "norm.r_max",  # batch_renorm's clips and schedule: the folded layer takes them as they are
        "norm.d_max",
        "norm.warmup",
        "norm.r_max_at",
        "norm.d_max_at",
        "norm.ghost_batch_size",
        "init.name",
        "init.std",
        "init.gain",
        "init.layers",
        "optim.name",
        "optim.lr",
        "optim.weight_decay",
        "optim.momentum",
        "optim.lr_batch_size",
        "train.steps",
        "train.epochs",
        "train.eval_every",
        "train.evals",
        "train.checkpoint_every",
        "eval.precise_bn_batches",  # evaluations read each run's own model (Folded.model)
        "measure.sharpness_every",  # measured on each run's own model (Folded.model), on a fixed batch
        "measure.sharpness_batch",
        "measure.sharpness_iters",
        "measure.sharpness_tol",
        "train.keep_checkpoint",
        "log.stats_every",
        "log.hist_every",
        "log.progress_every",
        "log.probe_batch",  # the engine observes each run's own model (Folded.model)
        "seed",
        "device",
        "threads",
        "claim",
    }
)


def _flat_task(cfg) -> dict:
    """The whole task config (no `hydra` node) as {dotted.key: value}, resolved."""
    container = {
        key: OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        if OmegaConf.is_config(node)
        else getattr(node, "value", node)
        for key, node in cfg.items()
        if key != "hydra"
    }  # (hydra's own keys need HydraConfig set)
    return _dotted(container)


def _dotted(container: dict) -> dict:
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = repr(node)  # lists become hashable strings

    walk(container, "")
    return out


def group_key(cfg) -> tuple:
    """Runs with equal keys can be trained as one program: everything equal but SHAPE_FREE_KEYS."""
    return tuple(sorted((k, v) for k, v in _flat_task(cfg).items() if k not in SHAPE_FREE_KEYS))


def unsupported_reason(cfg) -> str | None:
    """Why this run cannot be part of a vectorized program (None: it can)."""
    try:
        check_ranges(cfg)
    except UserError:  # alone, the run fails with the message; in a program, it would take the others with it
        return "a value out of its range"
    if OmegaConf.select(cfg, "hydra.job.chdir"):  # a sweep's job config
        return "hydra.job.chdir=true (a program's runs share one process, so one working folder)"
    if cfg.optim.name not in SUPPORTED_OPTIMIZERS:
        return f"optim={cfg.optim.name} (only {'/'.join(SUPPORTED_OPTIMIZERS)} are vectorized)"
    if cfg.model.dropout > 0 and device_name(cfg.device) != "cpu":
        return "model.dropout > 0 off the CPU (dropout there draws its masks as no program can split per run)"
    if cfg.norm.name not in SUPPORTED_NORMS:
        return f"norm={cfg.norm.name} (only {'/'.join(SUPPORTED_NORMS)} are vectorized)"
    if cfg.model.name not in SUPPORTED_MODELS:
        return f"model={cfg.model.name} (only {'/'.join(SUPPORTED_MODELS)} are vectorized)"
    defaults = _schema_defaults()
    for key, value in _flat_task(cfg).items():
        if (
            key not in IMPLEMENTED_KEYS
            and not key.startswith(("data.", "train.steps_by_model"))  # planned_steps reads it
            and value != defaults.get(key, value + "?")
        ):
            return f"{key}={value} (a setting the vectorized trainer does not implement)"
    return None


def _schema_defaults() -> dict:
    """{dotted.key: repr(default)} of the typed schema (bnexp.config.Config and its groups' dataclasses)."""
    import dataclasses
    import typing

    from bnexp.config import Config

    types = typing.get_type_hints(Config)
    container = {}
    for f in dataclasses.fields(Config):
        if f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        elif f.default == MISSING and dataclasses.is_dataclass(types[f.name]):
            value = types[f.name]()  # a config group: its dataclass's own defaults
        else:
            value = f.default
        if dataclasses.is_dataclass(value):
            value = OmegaConf.to_container(OmegaConf.structured(value), enum_to_str=True)
        container[f.name] = getattr(value, "value", value)
    return _dotted(container)


def plan_groups(cfgs: Sequence, max_batch: int = 32) -> list[list[int]]:
    """Indices of `cfgs` grouped into programs of at most `max_batch` runs, in first-seen order.

    Unsupported runs, and runs that share their group with no other, are groups of one (trained alone).
    """
    groups: dict[tuple, list[int]] = {}
    singles: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if unsupported_reason(cfg) is not None:
            singles.append([i])
        else:
            groups.setdefault(group_key(cfg), []).append(i)
    out = []
    for members in groups.values():
        out += [members[j : j + max_batch] for j in range(0, len(members), max_batch)]
    out += singles
    return sorted(out, key=lambda g: g[0])


def _per_run(values: list[float], like: torch.Tensor):
    """A Python float when all runs share the value (exactly torch.optim.SGD's arithmetic), else a (K, 1)
    column."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, 1)


class _GroupedLinear(nn.Module):
    """K independent nn.Linear(I, O) side by side: folded input (B, K·I) -> (B, K·O), one batched matmul.

    `weight` is (K·O, I), `bias` (K·O,): run k's nn.Linear weight and bias are rows k·O ... (k+1)·O − 1.
    """

    def __init__(self, k: int, linear: nn.Linear):
        super().__init__()
        self.k, self.in_features, self.out_features = k, linear.in_features, linear.out_features
        self.weight = nn.Parameter(linear.weight.new_empty(k * self.out_features, self.in_features))
        self.bias = (
            nn.Parameter(linear.bias.new_empty(k * self.out_features)) if linear.bias is not None else None
        )

    def forward(self, x):
        k, i, o, b = self.k, self.in_features, self.out_features, x.shape[0]
        x = x.view(b, k, i).transpose(0, 1)  # (K, B, I)
        weight = self.weight.view(k, o, i).transpose(1, 2)  # (K, I, O)
        y = torch.bmm(x, weight) if self.bias is None else torch.baddbmm(self.bias.view(k, 1, o), x, weight)
        return y.transpose(0, 1).reshape(b, k * o)


class _GroupedDropout(nn.Module):
    """K runs' nn.Dropout(p) side by side: run k's mask from its own generator, drawn exactly as torch's CPU
    dropout draws it from the global one (a Bernoulli(1 − p) tensor shaped like the input, divided by 1 − p,
    multiplied in), so each run sees the masks it would see trained alone. `generators` is set by the
    trainer."""

    def __init__(self, k: int, p: float):
        super().__init__()
        self.k, self.p = k, p
        self.generators: list[torch.Generator] = []

    def forward(self, x):
        if not self.training:  # (p > 0: models hold no Dropout(0))
            return x
        shape = (x.shape[0], x.shape[1] // self.k, *x.shape[2:])  # one run's part
        masks = [
            x.new_empty(shape).bernoulli_(1 - self.p, generator=g).div_(1 - self.p) for g in self.generators
        ]
        return x * torch.cat(masks, 1)


def _folded(module: nn.Module, k: int) -> nn.Module:
    """Module's counterpart for K runs at once, on folded tensors (B, K·C, *): K copies side by side along
    the channel dim, run k's channels at k·C ... (k+1)·C − 1. Every parameter and buffer of the result is
    the K runs' tensors stacked, viewed flat: `_stacked` undoes that."""
    if isinstance(module, nn.Linear):
        return _GroupedLinear(k, module)
    if isinstance(
        module, (nn.Conv1d, nn.Conv2d)
    ):  # groups of groups: run k's convolution sees only its channels
        return type(module)(
            k * module.in_channels,
            k * module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            k * module.groups,
            module.bias is not None,
            module.padding_mode,
        )
    if type(module) in (BatchNorm, BatchRenorm):  # per channel: K·C channels are K runs' C
        # batch renorm's clip schedule is the same for every run: each counts the same batches
        schedule = ("r_max", "d_max", "warmup", "r_max_at", "d_max_at") if type(module) is BatchRenorm else ()
        return type(module)(
            k * module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            bias=module.bias is not None,
            fast=module.fast,
            ghost_batch_size=module.ghost_batch_size,  # ghost batches split the batch, not the channels
            **{key: getattr(module, key) for key in schedule},
        )
    if type(module) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return type(module)(
            k * module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
    if isinstance(module, nn.Dropout):
        return _GroupedDropout(k, module.p)
    if isinstance(module, nn.GroupNorm):  # per-example statistics over groups of channels
        return nn.GroupNorm(k * module.num_groups, k * module.num_channels, module.eps, module.affine)
    if isinstance(
        module,
        (
            nn.Flatten,
            nn.Identity,
            nn.Sigmoid,
            nn.ReLU,
            nn.Tanh,
            LinearizedSigmoid,
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.AvgPool1d,
            nn.AvgPool2d,
        ),
    ):
        return module  # per channel and position, or (Flatten) per example: as it is
    raise ValueError(f"the vectorized trainer cannot fold a {type(module).__name__} layer")


def fold(models: Sequence[nn.Module]) -> nn.Module:
    """One network that computes the K `models` (equal architectures) side by side: input (B, K·C, *) with
    run k's example in channels k·C ... (k+1)·C − 1, output likewise; the models' parameters and buffers
    copied in, on their device and in their dtype. In training mode it equals the K models' training
    steps: nothing mixes runs."""
    k = len(models)

    def build(module):  # on a copy of models[0]: containers keep their forward, layers are replaced
        for name, child in module.named_children():
            module._modules[name] = build(child)
        if next(module.children(), None) is None:
            return _folded(module, k)
        if any(True for _ in module.parameters(recurse=False)) or any(
            True for _ in module.buffers(recurse=False)
        ):
            raise ValueError(
                f"the vectorized trainer cannot fold a {type(module).__name__} with tensors of its own"
            )
        return module

    like = next(models[0].parameters())
    folded = (
        build(copy.deepcopy(models[0])).to(device=like.device, dtype=like.dtype).train(models[0].training)
    )
    states = [_tensors(m) for m in models]
    with torch.no_grad():
        for name, t in _tensors(folded).items():
            values = torch.stack([state[name] for state in states])
            if t.dim() == 0:  # shared by the runs (see _stacked)
                assert bool((values == values[0]).all()), name
                t.copy_(values[0])
            else:
                _stacked(t, k).copy_(values)
    return folded


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """A module's parameters and buffers by name."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _stacked(t: torch.Tensor, k: int) -> torch.Tensor:
    """A folded parameter or buffer as (K, ...): index k is run k's own tensor (a view). A 0-dim buffer
    (BN's num_batches_tracked: the K runs have seen the same number of batches) is shared, expanded."""
    return t.expand(k) if t.dim() == 0 else t.view(k, -1, *t.shape[1:])


def check_foldable(cfgs: Sequence) -> None:
    """Raise unless `cfgs` can be trained as one program (all of one group_key, each supported)."""
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("runs trained together must differ only in " + ", ".join(sorted(SHAPE_FREE_KEYS)))
    for cfg in cfgs:
        if (reason := unsupported_reason(cfg)) is not None:
            raise ValueError(f"this run cannot be vectorized: {reason}")


class Folded:
    """K runs as one folded network (a stepper of bnexp.engine's loop). Each run keeps its own eager model,
    the one its config builds (`models`): the folded network starts from their weights, and `model(k)` copies
    run k's current state back into its model for evaluation."""

    def __init__(self, cfgs: Sequence, data: InMemoryData, device: torch.device):
        self.data, self.cfgs = data, list(cfgs)
        self.models, self.dropout_rngs = [], []
        for cfg in self.cfgs:
            self.models.append(initialized_model(cfg, data, device))
            # the eager run's dropout masks come from the global RNG as the initialization left it
            self.dropout_rngs.append(torch.Generator().set_state(torch.get_rng_state()))
        self.momentum = cfgs[0].optim.name == "momentum"
        self.momentum_bufs: list[torch.Tensor] | None = None
        self._fold()

    def _fold(self) -> None:
        """The runs' eager models (their current state) folded into one network, and their SGD settings as
        floats or (K, 1) factors against parameters viewed (K, -1)."""
        self.folded = fold(self.models).train()
        for m in self.folded.modules():
            if isinstance(m, _GroupedDropout):
                m.generators = self.dropout_rngs
        self.params = dict(self.folded.named_parameters())
        like = next(self.folded.parameters())
        self.neg_lr = _per_run([-learning_rate(c) for c in self.cfgs], like)
        self.weight_decay = _per_run([c.optim.weight_decay for c in self.cfgs], like)
        self.momentum_factor = _per_run([c.optim.momentum for c in self.cfgs], like) if self.momentum else 0.0

    def forward_backward(self, idx: torch.Tensor, observe: bool) -> StepOutput:
        data, k, batch_size = self.data, len(self.models), idx.shape[1]
        # Run k's batch in channels k·C ... (k+1)·C − 1 of one folded batch. Gathered as (B, K, *input_shape),
        # the folded batch is a view of contiguous data: one copy of the batch, not two.
        x = data.prepare(data.train_x[idx.t()]).reshape(
            batch_size, k * data.input_shape[0], *data.input_shape[1:]
        )
        y = data.train_y[idx]  # (K, B)
        with captured(self.folded) if observe else nullcontext({}) as folded_probes:
            logits = self.folded(x).view(batch_size, k, -1).transpose(0, 1)  # (K, B, classes)
        loss = F.cross_entropy(logits.reshape(k * batch_size, -1), y.reshape(-1), reduction="none")
        loss = loss.view(k, batch_size).mean(1)
        # The sum of the runs' losses has each run's own loss gradient w.r.t. that run's parameters.
        self.grad = dict(zip(self.params, torch.autograd.grad(loss.sum(), list(self.params.values()))))
        loss, logits = loss.detach(), logits.detach()
        probes = [
            {name: v.unflatten(1, (k, -1))[:, i] for name, v in folded_probes.items()} for i in range(k)
        ]
        return StepOutput(loss, (logits.argmax(-1) == y).sum(1), probes)

    def grads(self, k: int) -> dict[str, torch.Tensor]:
        return {name: _stacked(g, len(self.models))[k] for name, g in self.grad.items()}

    @torch.no_grad()
    def update(self) -> None:
        """SGD as torch.optim.SGD computes it (its single-tensor path), for every run at once."""
        k, first = len(self.models), self.momentum_bufs is None
        if self.momentum and first:
            self.momentum_bufs = []
        for i, (p, g) in enumerate(zip(self.params.values(), self.grad.values())):
            p, g = p.view(k, -1), g.view(k, -1)
            if isinstance(self.weight_decay, torch.Tensor):
                g = torch.addcmul(g, p, self.weight_decay)
            elif self.weight_decay != 0:
                g = g.add(p, alpha=self.weight_decay)
            if self.momentum:  # buf ← g at the first step, then buf ← μ·buf + g; the step follows buf
                if first:
                    self.momentum_bufs.append(g.clone())
                else:
                    self.momentum_bufs[i].mul_(self.momentum_factor).add_(g)
                g = self.momentum_bufs[i]
            if isinstance(self.neg_lr, torch.Tensor):
                p.addcmul_(g, self.neg_lr)
            else:
                p.add_(g, alpha=self.neg_lr)

    def model(self, k: int) -> nn.Module:
        """Run k's eager model, holding the run's current parameters and BN buffers (copied from the folded
        network, which keeps its own)."""
        state, model = _tensors(self.folded), self.models[k]
        with torch.no_grad():
            for name, t in _tensors(model).items():
                t.copy_(_stacked(state[name], len(self.models))[k])
        return model

    def state(self, k: int) -> dict:
        """Run k's weights and BN buffers (its eager model's state_dict), momentum buffers (one per folded
        parameter, or None before the first step) and dropout generator."""
        momentum = None if self.momentum_bufs is None else [b[k].clone() for b in self.momentum_bufs]
        return {
            "model": self.model(k).state_dict(),
            "momentum": momentum,
            "dropout_rng": self.dropout_rngs[k].get_state(),
        }

    def restore(self, states: list[dict]) -> None:
        """The runs, one state each, as `state` gave them at one step: refolded from them."""
        for model, rng, state in zip(self.models, self.dropout_rngs, states):
            model.load_state_dict(state["model"])
            rng.set_state(state["dropout_rng"])
        if states[0]["momentum"] is not None:
            like = next(iter(self.params.values()))
            self.momentum_bufs = [
                torch.stack(bufs).to(like.device) for bufs in zip(*(s["momentum"] for s in states))
            ]
        self._fold()

    def keep(self, index: list[int]) -> None:
        """Only the runs at `index` go on: refolded from their current state."""
        for k in index:
            self.model(k)
        self.models = [self.models[k] for k in index]
        self.cfgs = [self.cfgs[k] for k in index]
        self.dropout_rngs = [self.dropout_rngs[k] for k in index]
        if self.momentum_bufs is not None:
            self.momentum_bufs = [b[index] for b in self.momentum_bufs]
        self._fold()
