"""Vectorized sweeps: K runs that differ only in shape-free settings, trained as one program.

The K copies of the network's parameters and BN buffers are stacked on a new dim 0
(torch.func.stack_module_state); one training step is `vmap(grad_and_value(loss))` over
`functional_call` of a parameter-free skeleton, so every layer becomes one batched op for all K runs,
and our BatchNorm updates its stacked running statistics in place (see tests/test_norm.py). The SGD
update is one foreach op per stage over all parameters, with per-run learning rates (and weight
decay, momentum) as broadcast (K, 1, ...) factors; addcmul with such a factor rounds exactly like
torch.optim.SGD's `add_(grad, alpha=-lr)`.

Each run still gets exactly what `bnexp.train.train` would have given it:
  * the same initial weights: its model is built and initialized as train.py does (seeded twice);
  * the same batches: its own CPU generator, one permutation per epoch, last partial batch dropped
    (all K permutations are gathered with a single index op);
  * its own run folder, written by its own `bnexp.monitor.Monitor` with the same tags and steps:
    on logging steps the run's parameters are copied into its own (eager) model, which runs the same
    batch under `Monitor.probes` and hands its gradients to `Monitor.batch`; evaluations use
    `bnexp.train.evaluate` on that model; metrics.json has the same keys;
  * its own divergence: a run whose loss became non-finite is finished (recorded as diverged) at the
    next check, exactly where train.py would stop, and dropped from the stack; the others go on.

Results equal the sequential runs up to float round-off (the batched matmuls and the vmapped BN
backward sum in a different order): see tests/test_vectorized.py for the tolerance achieved.

Throughput (bnexp.vectorized.benchmark; 2 shared CPU cores, 1 intra-op thread, interleaved medians): whole
runs 1.5-1.6x the sequential ones at K = 8, 2.8x at K = 16, 3.0x at K = 32. At K = 8 the step is bound by
torch.func's per-op Python overhead (pytree flattening around the BN autograd.Function under vmap), not by
arithmetic: a plain-autograd step with the K runs folded into BN's channel dim measured ~4x.

What can be vectorized (`unsupported_reason`): optim sgd or momentum, model.dropout = 0 (dropout masks
under vmap cannot reproduce each run's own global-RNG stream, so such runs fall back to train.py),
and norms without a batching problem (bn, none, ln, gn; torch_bn's running-stat update is not ours).
"""
from __future__ import annotations

import copy
import logging
import os
import statistics
import tempfile
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import MISSING, OmegaConf
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from bnexp.config import UserError
from bnexp.data import load_data
from bnexp.init import initialize
from bnexp.models import build_model
from bnexp.monitor import Monitor
from bnexp.train import evaluate, finish as finish_run, learning_rate, resolve_device

log = logging.getLogger("bnexp")

# Config keys (flattened, dotted) that may differ between the runs of one vectorized program: none of
# them changes a tensor's shape or the program's control flow. Every other key must be equal.
SHAPE_FREE_KEYS = frozenset({
    "seed", "optim.lr", "optim.lr_batch_size", "optim.weight_decay", "optim.momentum", "init.std", "init.gain",
})
SUPPORTED_OPTIMIZERS = ("sgd", "momentum")
SUPPORTED_NORMS = ("bn", "none", "ln", "gn")
SUPPORTED_MODELS = ("mlp", "cnn")
# The settings train_vectorized implements (data.* are all the data loader's business). A setting added
# to the schema later is supported only at its default value: train.py may do something new with it.
IMPLEMENTED_KEYS = frozenset({
    "model.name", "model.depth", "model.width", "model.activation", "model.dropout", "model.bias_before_norm",
    "model.channels", "model.pool", "norm.name", "norm.eps", "norm.momentum", "norm.affine", "norm.groups",
    "init.name", "init.std", "init.gain", "optim.name", "optim.lr", "optim.weight_decay", "optim.momentum",
    "optim.lr_batch_size", "train.steps", "train.epochs", "train.eval_every", "log.stats_every", "log.hist_every",
    "log.progress_every", "seed", "device", "claim",
})


def _flat(cfg) -> dict:
    """The whole task config (no `hydra` node) as {dotted.key: value}, resolved."""
    container = {key: OmegaConf.to_container(node, resolve=True, enum_to_str=True)
                 if OmegaConf.is_config(node) else getattr(node, "value", node)
                 for key, node in cfg.items() if key != "hydra"}  # (hydra's own keys need HydraConfig set)
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


def unsupported_reason(cfg) -> Optional[str]:
    """Why this run cannot be part of a vectorized program (None: it can)."""
    if cfg.optim.name not in SUPPORTED_OPTIMIZERS:
        return f"optim={cfg.optim.name} (only {'/'.join(SUPPORTED_OPTIMIZERS)} are vectorized)"
    if cfg.model.dropout > 0:
        return "model.dropout > 0 (dropout masks under vmap cannot follow each run's own RNG stream)"
    if cfg.norm.name not in SUPPORTED_NORMS:
        return f"norm={cfg.norm.name} (only {'/'.join(SUPPORTED_NORMS)} are vectorized)"
    if cfg.model.name not in SUPPORTED_MODELS:
        return f"model={cfg.model.name} (only {'/'.join(SUPPORTED_MODELS)} are vectorized)"
    defaults = _schema_defaults()
    for key, value in _flat(cfg).items():
        if key not in IMPLEMENTED_KEYS and not key.startswith("data.") and value != defaults.get(key, value + "?"):
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
        out += [members[j:j + max_batch] for j in range(0, len(members), max_batch)]
    out += singles
    return sorted(out, key=lambda g: g[0])


def _per_run(values: list[float], like: torch.Tensor):
    """A Python float when all runs share the value (exactly train.py's arithmetic), else a (K,) tensor."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def _bcast(value, t: torch.Tensor):
    """value (float or (K,) tensor) shaped (K, 1, ...) to broadcast against the stacked t."""
    return value.view(-1, *[1] * (t.dim() - 1)) if isinstance(value, torch.Tensor) else value


class _Run:
    """One run's own things: config, folder, eager model (for logging and evaluation), monitor."""

    def __init__(self, cfg, run_dir: str, model, logger: logging.Logger):
        self.cfg, self.run_dir, self.model, self.log = cfg, run_dir, model, logger
        self.monitor = Monitor(run_dir, model, cfg.log)
        self.lr = learning_rate(cfg)
        self.metrics: Optional[dict] = None


def train_vectorized(cfgs: Sequence, run_dirs: Sequence[str], loggers: Optional[Sequence[logging.Logger]] = None
                     ) -> list[dict]:
    """Train the runs `cfgs` (all of one `group_key`, all supported) as one program, each recording into
    its run_dirs entry exactly as bnexp.train.train(cfg, run_dir) would; return their metrics."""
    start = time.perf_counter()
    if len({group_key(c) for c in cfgs}) != 1:
        raise ValueError("train_vectorized needs runs that differ only in " + ", ".join(sorted(SHAPE_FREE_KEYS)))
    for cfg in cfgs:
        if (reason := unsupported_reason(cfg)) is not None:
            raise ValueError(f"this run cannot be vectorized: {reason}")
    cfg0 = cfgs[0]
    loggers = loggers or [log] * len(cfgs)
    device = resolve_device(cfg0.device)
    data = load_data(cfg0.data, device)  # the same for every run (the data config is shared)
    runs = []
    for cfg, run_dir, logger in zip(cfgs, run_dirs, loggers):
        torch.manual_seed(cfg.seed)  # as train.py: seeded, built, seeded again, initialized
        model = build_model(cfg, data.input_shape, data.num_classes)
        torch.manual_seed(cfg.seed)
        runs.append(_Run(cfg, run_dir, initialize(model, cfg.init).to(device), logger))
    batch_size = cfg0.data.batch_size
    per_epoch = data.steps_per_epoch(batch_size)  # checks the batch size, as train_batches does
    steps = cfg0.train.steps if cfg0.train.epochs is None else cfg0.train.epochs * per_epoch
    if steps < 1 or cfg0.train.eval_every < 1 or cfg0.log.stats_every < 1 or cfg0.log.hist_every < 1:
        raise UserError(f"train.steps (or train.epochs), train.eval_every, log.stats_every and log.hist_every must "
                        f"be at least 1; got {steps} steps, eval_every={cfg0.train.eval_every}, "
                        f"stats_every={cfg0.log.stats_every}, hist_every={cfg0.log.hist_every}.")
    eval_every, stats_every, hist_every = cfg0.train.eval_every, cfg0.log.stats_every, cfg0.log.hist_every

    params, buffers = stack_module_state([r.model for r in runs])
    params = {name: p.detach() for name, p in params.items()}
    names = list(params)
    skeleton = copy.deepcopy(runs[0].model).to("meta").train()

    def loss_fn(p, b, x, y):
        logits = functional_call(skeleton, (p, b), (x,))
        return F.cross_entropy(logits, y), logits

    step_fn = vmap(grad_and_value(loss_fn, has_aux=True))

    momentum = cfg0.optim.name == "momentum"
    like = params[names[0]]

    def hyper():
        """Per-run SGD settings of the runs still active, as floats or (K,) tensors."""
        lr = _per_run([-r.lr for r in runs], like)
        wd = _per_run([r.cfg.optim.weight_decay for r in runs], like)
        mom = _per_run([r.cfg.optim.momentum for r in runs], like) if momentum else 0.0
        return lr, wd, mom

    neg_lr, wd, mom = hyper()
    momentum_bufs: Optional[list] = None
    generators = [torch.Generator().manual_seed(r.cfg.seed) for r in runs]
    n_train = len(data.train_y)
    K = len(runs)
    loss_sum = torch.zeros(K, device=device)
    correct = torch.zeros(K, dtype=torch.long, device=device)
    seen = batches = 0
    first_bad = torch.zeros(K, dtype=torch.long, device=device)
    orders = None

    def load_into(k: int) -> None:
        """Run k's current parameters and BN buffers into its eager model (a copy: the stack stays)."""
        model = runs[k].model
        with torch.no_grad():
            for name, t in model.named_parameters():
                t.copy_(params[name][k])
            for name, t in model.named_buffers():
                t.copy_(buffers[name][k])

    def finish(k: int, step: int, diverged_step: Optional[int]) -> None:
        """Evaluate run k, write its metrics.json and close its events: train.py's epilogue."""
        run = runs[k]
        load_into(k)
        model, monitor = run.model, run.monitor
        (train_loss, train_acc), (test_loss, test_acc) = evaluate(model, data, "train"), evaluate(model, data, "test")
        monitor.scalars(step, {"train/loss": train_loss, "train/acc": train_acc,
                               "test/loss": test_loss, "test/acc": test_acc})
        run.log.info(f"step {step:>6}/{steps}  train loss {train_loss:.4f}  test acc {test_acc:.4f}")
        # The program's wall time so far: the K runs were trained together.
        run.metrics = finish_run(run.cfg, run.run_dir, model, data, monitor, step, steps, diverged_step, start)

    all_runs = list(runs)
    for step in range(1, steps + 1):
        i = (step - 1) % per_epoch
        if i == 0:  # a new epoch: each run's own permutation from its own generator
            orders = torch.stack([torch.randperm(n_train, generator=g) for g in generators]).to(device)
        idx = orders[:, i * batch_size:(i + 1) * batch_size]  # (K, B)
        x, y = data.prepare(data.train_x[idx]), data.train_y[idx]

        grads, (loss, logits) = step_fn(params, buffers, x, y)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), step, first_bad)

        stats, hist = step % stats_every == 0, step % hist_every == 0
        if stats or hist:
            # Each run's own Monitor sees exactly what train.py hands it: the probe values of this
            # batch's forward, its gradients, and the running sums of loss and accuracy so far.
            # (Parameters and buffers are those before this step's update, as in train.py.)
            for k, run in enumerate(runs):
                load_into(k)
                model, monitor = run.model, run.monitor
                for name, t in model.named_parameters():
                    t.grad = grads[name][k]
                model.train()
                with torch.no_grad(), monitor.probes(step) as acts:
                    model(x[k])
                monitor.loss_sum, monitor.correct, monitor.seen, monitor.batches = loss_sum[k], correct[k], seen, batches
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

        # SGD (torch.optim.SGD's single-tensor arithmetic), one foreach op per stage for all runs.
        with torch.no_grad():
            p_list, g_list = [params[n] for n in names], [grads[n] for n in names]
            if isinstance(wd, torch.Tensor):
                g_list = torch._foreach_addcmul(g_list, p_list, [_bcast(wd, p) for p in p_list])
            elif wd != 0:
                g_list = torch._foreach_add(g_list, p_list, alpha=wd)
            if momentum:
                if momentum_bufs is None:
                    momentum_bufs = [g.detach().clone() for g in g_list]
                else:
                    torch._foreach_mul_(momentum_bufs, [_bcast(mom, b) for b in momentum_bufs]
                                        if isinstance(mom, torch.Tensor) else mom)
                    torch._foreach_add_(momentum_bufs, g_list)
                g_list = momentum_bufs
            if isinstance(neg_lr, torch.Tensor):
                torch._foreach_addcmul_(p_list, g_list, [_bcast(neg_lr, p) for p in p_list])
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
                        (tl, ta), (vl, va) = evaluate(run.model, data, "train"), evaluate(run.model, data, "test")
                        run.monitor.scalars(step, {"train/loss": tl, "train/acc": ta, "test/loss": vl, "test/acc": va})
                        run.log.info(f"step {step:>6}/{steps}  train loss {tl:.4f}  test acc {va:.4f}")
        elif cfg0.log.progress_every and step % cfg0.log.progress_every == 0:
            for run in runs:
                run.log.info(f"step {step:>6}/{steps}")
        if any(done):
            keep = [k for k in range(len(runs)) if not done[k]]
            if not keep:
                break
            index = torch.tensor(keep, device=device)
            runs = [runs[k] for k in keep]
            generators = [generators[k] for k in keep]
            params = {n: t.index_select(0, index) for n, t in params.items()}
            buffers = {n: t.index_select(0, index) for n, t in buffers.items()}
            if momentum_bufs is not None:
                momentum_bufs = [b.index_select(0, index) for b in momentum_bufs]
            orders, loss_sum, correct, first_bad = (t.index_select(0, index) for t in (orders, loss_sum, correct,
                                                                                          first_bad))
            neg_lr, wd, mom = hyper()
    return [r.metrics for r in all_runs]


# ---- throughput ---------------------------------------------------------------------------------


def benchmark(k_values=(8,), steps: int = 200, repeats: int = 3, overrides: Sequence[str] = ()) -> dict:
    """Training throughput of K runs (seeds 0..K-1) vectorized vs one after another with train.train.

    Interleaved repeats (sequential, vectorized, sequential, ...), median seconds of each; speedup =
    median sequential / median vectorized. Runs the default config (BN-MLP on digits) with `steps`
    steps, logging and evaluation included, on the CPU unless `overrides` say otherwise.
    """
    from hydra import compose, initialize_config_module

    from bnexp.config import register
    from bnexp.train import train

    register()
    with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):
        base = ["device=cpu", f"train.steps={steps}", *overrides]
        result = {}
        for K in k_values:
            cfgs = [compose(config_name="config", overrides=[*base, f"seed={s}"]) for s in range(K)]
            seq, vec = [], []
            with tempfile.TemporaryDirectory() as tmp:
                for r in range(repeats):
                    t = time.perf_counter()
                    for s, cfg in enumerate(cfgs):
                        train(cfg, os.path.join(tmp, f"seq{r}_{s}"))
                    seq.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    train_vectorized(cfgs, [os.path.join(tmp, f"vec{r}_{s}") for s in range(K)])
                    vec.append(time.perf_counter() - t)
            s_med, v_med = statistics.median(seq), statistics.median(vec)
            result[K] = dict(sequential_s=s_med, vectorized_s=v_med, speedup=s_med / v_med,
                             run_steps_per_s_sequential=K * steps / s_med, run_steps_per_s_vectorized=K * steps / v_med)
    return result
