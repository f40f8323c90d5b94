"""Vectorized sweeps: K runs that differ only in shape-free settings, trained as one program.

The K networks become one (`fold`): every layer's counterpart computes all K runs side by side on
"folded" tensors (B, K·C, *), run k's channels at k·C ... (k+1)·C − 1. Linear layers become one batched
matmul, convolutions grouped ones, BatchNorm a BatchNorm over K·C channels (per-channel statistics, so
each run's own), GroupNorm/LayerNorm a GroupNorm with K times the groups; activations and pooling act
per channel anyway. A step is then one ordinary eager forward and backward of the sum of the K runs'
losses (run k's gradient is its own loss's), through our BatchNorm's fast path: no torch.func
transform, whose per-op Python overhead bound the step at small K. The SGD update is one foreach op per
stage over all parameters viewed (K, -1), with per-run learning rates (and weight decay, momentum) as
(K, 1) factors; addcmul with such a factor rounds exactly like torch.optim.SGD's `add_(grad, alpha=-lr)`.

Each run still gets exactly what `bnexp.train.train` would have given it:
  * the same initial weights: its model is built and initialized as train.py does (seeded twice);
  * the same batches: its own CPU generator, one permutation per epoch, last partial batch dropped
    (all K permutations are gathered with a single index op);
  * the same dropout masks: its own generator, in the state train.py's global RNG has after the run's
    initialization, draws its masks as torch's CPU dropout does (`_GroupedDropout`);
  * its own run folder, written by its own `bnexp.monitor.Monitor` with the same tags and steps: on
    logging steps it gets the run's slice of the folded probe values and the run's gradients (on the
    run's own eager model, which also serves the evaluations: parameters are copied into it first);
    metrics.json has the same keys;
  * its own divergence: a run whose loss became non-finite is finished (recorded as diverged) at the
    next check, exactly where train.py would stop, and dropped from the stack; the others go on.

Results equal the sequential runs up to float round-off (batched matmuls sum in another order than
the eager ones): see tests/test_vectorized.py for the tolerance achieved.

Throughput: `python -m bnexp.bench --only vectorized` (the README's Performance section has the figures).

What can be vectorized (`unsupported_reason`): the MLP and the CNN; optim sgd or momentum; dropout on the
CPU (a GPU's fused dropout kernel draws its masks in a way one program cannot follow per run), one
dropout rate per program (model.dropout changes the network: a sweep over it makes one program per rate); the
deterministic norms (bn, torch_bn, none, ln, gn; not noisy_bn, whose noise is drawn per layer from the
global RNG).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from omegaconf import MISSING, OmegaConf
from torch import nn

from bnexp.config import UserError, check_ranges
from bnexp.data import load_data
from bnexp.monitor import Monitor, captured
from bnexp.norm import BatchNorm
from bnexp.train import (
    check_batch_statistics,
    device_name,
    initialized_model,
    learning_rate,
    planned_steps,
    record_evaluation,
    resolve_device,
)
from bnexp.train import (
    finish as finish_run,
)

log = logging.getLogger("bnexp")

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
SUPPORTED_NORMS = ("bn", "torch_bn", "none", "ln", "gn")
SUPPORTED_MODELS = ("mlp", "cnn")
# The settings train_vectorized implements (data.* are all the data loader's business). A setting added
# to the schema later is supported only at its default value: train.py may do something new with it.
IMPLEMENTED_KEYS = frozenset(
    {
        "model.name",
        "model.depth",
        "model.width",
        "model.activation",
        "model.dropout",
        "model.bias_before_norm",
        "model.channels",
        "model.pool",
        "norm.name",
        "norm.eps",
        "norm.momentum",
        "norm.affine",
        "norm.groups",
        "norm.fast",
        "init.name",
        "init.std",
        "init.gain",
        "optim.name",
        "optim.lr",
        "optim.weight_decay",
        "optim.momentum",
        "optim.lr_batch_size",
        "train.steps",
        "train.epochs",
        "train.eval_every",
        "log.stats_every",
        "log.hist_every",
        "log.progress_every",
        "seed",
        "device",
        "threads",
        "claim",
    }
)


def _flat(cfg) -> dict:
    """The whole task config (no `hydra` node) as {dotted.key: value}, resolved."""
    container = {
        key: OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        if OmegaConf.is_config(node)
        else getattr(node, "value", node)
        for key, node in cfg.items()
        if key != "hydra"
    }  # (hydra's own keys need HydraConfig set)
    return _walk(container)


def _walk(container: dict) -> dict:
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
    return tuple(sorted((k, v) for k, v in _flat(cfg).items() if k not in SHAPE_FREE_KEYS))


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
    if cfg.model.dropout > 0 and _device_type(cfg) != "cpu":
        return "model.dropout > 0 off the CPU (dropout there draws its masks as no program can split per run)"
    if cfg.norm.name not in SUPPORTED_NORMS:
        return f"norm={cfg.norm.name} (only {'/'.join(SUPPORTED_NORMS)} are vectorized)"
    if cfg.model.name not in SUPPORTED_MODELS:
        return f"model={cfg.model.name} (only {'/'.join(SUPPORTED_MODELS)} are vectorized)"
    defaults = _schema_defaults()
    for key, value in _flat(cfg).items():
        if (
            key not in IMPLEMENTED_KEYS
            and not key.startswith("data.")
            and value != defaults.get(key, value + "?")
        ):
            return f"{key}={value} (a setting the vectorized trainer does not implement)"
    return None


def _device_type(cfg) -> str:
    """The type of device the run would train on; an unavailable one as named (train.py then reports it)."""
    return device_name(cfg.device)


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
    return _walk(container)


def plan_groups(cfgs: Sequence, max_batch: int = 32) -> list[list[int]]:
    """Indices of `cfgs` grouped into programs of at most `max_batch` runs, in first-seen order.

    Unsupported runs, and runs that share their group with no other, are groups of one (trained by
    bnexp.train.train).
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
    """A Python float when all runs share the value (exactly train.py's arithmetic), else a (K, 1) column."""
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
    if type(module) is BatchNorm:  # per channel: K·C channels are K runs' C
        return BatchNorm(
            k * module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            fast=module.fast,
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


class _Run:
    """One run's own things: config, folder, eager model (for logging and evaluation), monitor."""

    def __init__(self, cfg, run_dir: str, model, logger: logging.Logger):
        self.cfg, self.run_dir, self.model, self.log = cfg, run_dir, model, logger
        self.monitor = Monitor(run_dir, model, cfg.log)
        self.lr = learning_rate(cfg)
        self.metrics: dict | None = None


def train_vectorized(
    cfgs: Sequence, run_dirs: Sequence[str], loggers: Sequence[logging.Logger] | None = None
) -> list[dict]:
    """Train the runs `cfgs` (all of one `group_key`, all supported) as one program, each recording into
    its run_dirs entry exactly as bnexp.train.train(cfg, run_dir) would; return their metrics."""
    start = time.perf_counter()
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError(
            "train_vectorized needs runs that differ only in " + ", ".join(sorted(SHAPE_FREE_KEYS))
        )
    for cfg in cfgs:
        if (reason := unsupported_reason(cfg)) is not None:
            raise ValueError(f"this run cannot be vectorized: {reason}")
    cfg0 = cfgs[0]
    if cfg0.threads > 0:
        torch.set_num_threads(cfg0.threads)
    loggers = loggers or [log] * len(cfgs)
    device = resolve_device(cfg0.device)
    data = load_data(cfg0.data, device)  # the same for every run (the data config is shared)
    runs, dropout_rngs = [], []
    for cfg, run_dir, logger in zip(cfgs, run_dirs, loggers):
        runs.append(_Run(cfg, run_dir, initialized_model(cfg, data, device), logger))
        # train.py's dropout masks come from the global RNG as the initialization left it
        dropout_rngs.append(torch.Generator().set_state(torch.get_rng_state()))
    check_batch_statistics(cfg0, runs[0].model)
    batch_size = cfg0.data.batch_size
    per_epoch = data.steps_per_epoch(batch_size)  # checks the batch size, as train_batches does
    steps = planned_steps(cfg0, data)
    eval_every = cfg0.train.eval_every

    momentum = cfg0.optim.name == "momentum"
    n_train, channels = len(data.train_y), data.input_shape[0]
    generators = [torch.Generator().manual_seed(r.cfg.seed) for r in runs]

    def stack_runs():
        """The active runs (their eager models' current state) folded into one network, and their per-run SGD
        settings as floats or (K, 1) factors against parameters viewed (K, -1)."""
        folded = fold([r.model for r in runs]).train()
        for m in folded.modules():
            if isinstance(m, _GroupedDropout):
                m.generators = dropout_rngs
        like = next(folded.parameters())
        lr = _per_run([-r.lr for r in runs], like)
        wd = _per_run([r.cfg.optim.weight_decay for r in runs], like)
        mom = _per_run([r.cfg.optim.momentum for r in runs], like) if momentum else 0.0
        return folded, dict(folded.named_parameters()), lr, wd, mom

    folded, params, neg_lr, wd, mom = stack_runs()
    momentum_bufs: list | None = None
    K = len(runs)
    loss_sum = torch.zeros(K, device=device)
    correct = torch.zeros(K, dtype=torch.long, device=device)
    seen = batches = 0
    first_bad = torch.zeros(K, dtype=torch.long, device=device)
    orders = None

    def load_into(k: int) -> None:
        """Run k's current parameters and BN buffers into its eager model (a copy: the folded network keeps
        them)."""
        state = _tensors(folded)
        with torch.no_grad():
            for name, t in _tensors(runs[k].model).items():
                t.copy_(_stacked(state[name], len(runs))[k])

    def finish(k: int, step: int, diverged_step: int | None) -> None:
        """Evaluate run k, write its metrics.json and close its events: train.py's epilogue."""
        run = runs[k]
        load_into(k)
        record_evaluation(run.model, data, run.monitor, step, steps, run.log)
        # The program's wall time so far: the K runs were trained together.
        run.metrics = finish_run(
            run.cfg, run.run_dir, run.model, data, run.monitor, step, steps, diverged_step, start
        )

    all_runs = list(runs)
    for step in range(1, steps + 1):
        i = (step - 1) % per_epoch
        if i == 0:  # a new epoch: each run's own permutation from its own generator
            orders = torch.stack([torch.randperm(n_train, generator=g) for g in generators]).to(device)
        idx = orders[:, i * batch_size : (i + 1) * batch_size]  # (K, B)
        # All K runs' steps as one: run k's batch in channels k·C ... (k+1)·C − 1 of one folded batch. The
        # sum of the runs' losses has each run's own loss gradient w.r.t. that run's parameters. Gathered as
        # (B, K, *input_shape), the folded batch is a view of contiguous data: one copy of the batch, not two.
        folded_x = data.prepare(data.train_x[idx.t()]).reshape(
            batch_size, K * channels, *data.input_shape[1:]
        )
        y = data.train_y[idx]  # (K, B)
        stats, observed = (
            runs[0].monitor.wants_stats(step),
            runs[0].monitor.observes(step),
        )  # the same log config
        with captured(folded) if observed else nullcontext({}) as folded_acts:
            logits = folded(folded_x).view(batch_size, K, -1).transpose(0, 1)  # (K, B, classes)
        loss = F.cross_entropy(logits.reshape(K * batch_size, -1), y.reshape(-1), reduction="none")
        loss = loss.view(K, batch_size).mean(1)
        grads = dict(zip(params, torch.autograd.grad(loss.sum(), list(params.values()))))
        loss, logits = loss.detach(), logits.detach()
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)

        if observed:
            # Each run's own Monitor sees exactly what train.py hands it: the probe values of this
            # batch's forward (run k's channels of the folded ones), its gradients (on its eager model,
            # for the per-layer norms), and the running sums of loss and accuracy so far.
            for k, run in enumerate(runs):
                model, monitor = run.model, run.monitor
                for name, t in model.named_parameters():
                    t.grad = _stacked(grads[name], K)[k]
                acts = {name: v.unflatten(1, (K, -1))[:, k] for name, v in folded_acts.items()}
                monitor.histograms(step, acts)
                monitor.loss_sum, monitor.correct, monitor.seen, monitor.batches = (
                    loss_sum[k],
                    correct[k],
                    seen,
                    batches,
                )
                monitor.batch(step, loss[k], logits[k], y[k], run.lr, acts)
                loss_sum[k], correct[k] = monitor.loss_sum, monitor.correct
                for t in model.parameters():
                    t.grad = None
            seen, batches = runs[0].monitor.seen, runs[0].monitor.batches  # the same for every run
        else:
            loss_sum = loss_sum + loss
            correct = correct + (logits.argmax(-1) == y).sum(1)
            seen += y[0].numel()
            batches += 1

        # SGD (torch.optim.SGD's single-tensor arithmetic), one foreach op per stage for all runs, on every
        # tensor viewed (K, -1) so that a per-run factor is a (K, 1) column.
        with torch.no_grad():
            p_list = [p.view(K, -1) for p in params.values()]
            g_list = [g.view(K, -1) for g in grads.values()]
            if isinstance(wd, torch.Tensor):
                g_list = torch._foreach_addcmul(g_list, p_list, [wd] * len(p_list))
            elif wd != 0:
                g_list = torch._foreach_add(g_list, p_list, alpha=wd)
            if momentum:
                if momentum_bufs is None:
                    momentum_bufs = [g.clone() for g in g_list]
                else:
                    torch._foreach_mul_(
                        momentum_bufs, [mom] * len(p_list) if isinstance(mom, torch.Tensor) else mom
                    )
                    torch._foreach_add_(momentum_bufs, g_list)
                g_list = momentum_bufs
            if isinstance(neg_lr, torch.Tensor):
                torch._foreach_addcmul_(p_list, g_list, [neg_lr] * len(p_list))
            else:
                torch._foreach_add_(p_list, g_list, alpha=neg_lr)

        evaluating = step % eval_every == 0 or step == steps
        done = [False] * len(runs)
        if evaluating or stats:
            bad = first_bad.tolist()
            for k, run in enumerate(runs):
                if bad[k]:
                    run.log.info(f"diverged: the loss became non-finite at step {bad[k]}; stopping this run")
                    finish(k, step, bad[k])
                    done[k] = True
                elif evaluating:
                    if step == steps:
                        finish(k, step, None)
                        done[k] = True
                    else:
                        load_into(k)
                        record_evaluation(run.model, data, run.monitor, step, steps, run.log)
        if not evaluating and cfg0.log.progress_every and step % cfg0.log.progress_every == 0:
            for k, run in enumerate(
                runs
            ):  # as train.py: no progress line where an evaluation or divergence is logged
                if not done[k]:
                    run.log.info(f"step {step:>6}/{steps}")
        if any(done):
            keep = [k for k in range(len(runs)) if not done[k]]
            if not keep:
                break
            for k in keep:  # the runs that go on, refolded from their current state
                load_into(k)
            index = torch.tensor(keep, device=device)
            runs = [runs[k] for k in keep]
            generators = [generators[k] for k in keep]
            dropout_rngs = [dropout_rngs[k] for k in keep]
            folded, params, neg_lr, wd, mom = stack_runs()
            K = len(runs)
            if momentum_bufs is not None:
                momentum_bufs = [b.index_select(0, index) for b in momentum_bufs]
            orders, loss_sum, correct, first_bad = (
                t.index_select(0, index) for t in (orders, loss_sum, correct, first_bad)
            )
    return [r.metrics for r in all_runs]
