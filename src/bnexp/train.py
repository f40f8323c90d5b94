"""One training run: data, model, optimizer, the loop, evaluation, and the run folder's records.

The run folder holds the TensorBoard events and `metrics.json` (config, final and best metrics,
divergence, every logged curve), which is all any later analysis reads. Divergence is detected on
the device and looked at every log.stats_every steps, so a diverged run stops within that many steps
(recording the exact step it diverged at).
"""

import json
import logging
import math
import os
import time
from copy import deepcopy

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from bnexp.config import UserError, check_ranges
from bnexp.data import InMemoryData, load_data
from bnexp.ics import gradient_ics, landscape
from bnexp.init import initialize
from bnexp.models import build_model
from bnexp.monitor import Monitor

log = logging.getLogger("bnexp")


def device_name(name) -> str:
    """cpu, cuda or mps: `device=` as named, auto made the accelerator when there is one (else cpu)."""
    name = getattr(name, "value", name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return name


def resolve_device(name) -> torch.device:
    """The device `device=` names, if PyTorch sees it. For CUDA, cuDNN is also set to full float32 precision
    and deterministic algorithms (exact_cuda)."""
    name = device_name(name)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise UserError(
            f"device={name} was asked for, but PyTorch sees no {name} device here. "
            f"Use device=auto (the accelerator when there is one) or device=cpu."
        )
    if name == "cuda":
        exact_cuda()
    return torch.device(name)


def exact_cuda() -> None:
    """cuDNN's float32 convolutions in full precision and its deterministic algorithms. By default it takes
    TF32 (10-bit mantissas) on Ampere and later GPUs and picks algorithms by speed: the numbers would differ
    from the CPU's beyond round-off, and one seed's runs from each other."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9's setting
        conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def learning_rate(cfg) -> float:
    """optim.lr, scaled linearly with the batch size when optim.lr_batch_size is set."""
    if cfg.optim.lr_batch_size is None:
        return cfg.optim.lr
    return cfg.optim.lr * cfg.data.batch_size / cfg.optim.lr_batch_size


def make_optimizer(params, cfg, lr: float) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise UserError(
        f"optim={cfg.name!r} is not an optimizer; choose optim=sgd, optim=momentum or optim=adam."
    )


def step_module(cfg, model, input_shape) -> tuple[torch.nn.Module, torch.memory_format]:
    """What the training steps call, per the opt-in speed flags: `model` itself, or torch.compile's
    wrapper of it (train.compile; the same parameters), and the memory format of their batches
    (train.channels_last, which also converts the model's convolution weights, in place)."""
    memory_format = torch.contiguous_format
    if cfg.train.channels_last:
        if cfg.model.name != "cnn" or len(input_shape) != 3:
            raise UserError(
                f"train.channels_last stores images channels-last for 2-D convolutions: it needs model=cnn "
                f"and a dataset of images (C, H, W), but this run has model={cfg.model.name} and examples "
                f"of shape {tuple(input_shape)}. Leave train.channels_last=false."
            )
        memory_format = torch.channels_last
        model.to(memory_format=memory_format)
    return (torch.compile(model) if cfg.train.compile else model), memory_format


def has_running_statistics(model) -> bool:
    return any(getattr(m, "track_running_stats", False) for m in model.modules())


def check_batch_statistics(cfg, model) -> None:
    """BN's batch statistics need two examples: a batch of one has no spread to normalize by."""
    if cfg.data.batch_size < 2 and has_running_statistics(model):
        raise UserError(
            f"norm={cfg.norm.name} normalizes by statistics over each batch, and a batch of "
            f"{cfg.data.batch_size} example has none; set data.batch_size to 2 or more, or choose a norm "
            f"without batch statistics (ln, gn, none)."
        )


def change_length(data: InMemoryData, x: torch.Tensor, length: int) -> torch.Tensor:
    """Prepared sequences x (steps along dim 2: L of (N, C, L), the rows H of (N, C, H, W)) made
    `length` steps long, aligned at their end: the first steps dropped, or blank steps (a raw 0: no
    signal, an image's background) put before the first. The steps a classifier reads last stay."""
    extra = length - x.shape[2]
    if extra <= 0:
        return x[:, :, -length:]
    blank = data.prepare(x.new_zeros(x.shape[0], x.shape[1], extra, *x.shape[3:]))
    return torch.cat([blank, x], 2)


@torch.no_grad()
def evaluate(
    model,
    data: InMemoryData,
    split: str,
    batch_size: int = 1000,
    batch_statistics: bool = False,
    length: int | None = None,
) -> tuple[float, float]:
    """Loss and accuracy on a whole split, in eval mode: BN uses its running statistics.

    With `batch_statistics`, BN layers instead normalize each batch (of `batch_size`) by its own
    statistics, as in training. The gap between the two shows how far the running averages are
    from what the network was trained with, which grows as batches shrink (Wu & He 2018).
    With `length`, every sequence is first made that many steps long (`change_length`).
    """
    if batch_statistics:
        model = deepcopy(model)  # in train mode BN updates running statistics: not the real model's
    model.eval()
    for m in model.modules():
        if batch_statistics and getattr(m, "track_running_stats", False):
            m.train()
    loss, correct, n = 0.0, 0, 0
    for x, y in data.eval_batches(split, batch_size):
        if batch_statistics and len(y) < 2:  # a last batch of one example has no statistics
            continue
        logits = model(x if length is None else change_length(data, x, length))
        loss = loss + F.cross_entropy(logits, y, reduction="sum")
        correct = correct + (logits.argmax(1) == y).sum()
        n += len(y)
    return float(loss) / n, int(correct) / n


def record_evaluation(
    model, data: InMemoryData, monitor: Monitor, step: int, steps: int, logger: logging.Logger
):
    """The full train and test splits evaluated at this step: into the run's curves and its log."""
    (train_loss, train_acc), (test_loss, test_acc) = (
        evaluate(model, data, "train"),
        evaluate(model, data, "test"),
    )
    monitor.scalars(
        step, {"train/loss": train_loss, "train/acc": train_acc, "test/loss": test_loss, "test/acc": test_acc}
    )
    logger.info(f"step {step:>6}/{steps}  train loss {train_loss:.4f}  test acc {test_acc:.4f}")


def flat_config(cfg) -> dict:
    """The run's resolved settings as flat `group.key: value` pairs (metrics.json, HParams)."""
    out = {}
    for group in ("model", "norm", "init", "data", "optim", "train", "measure"):
        for key, value in OmegaConf.to_container(cfg[group], resolve=True, enum_to_str=True).items():
            out[f"{group}.{key}"] = value
    out.update(seed=cfg.seed, device=str(getattr(cfg.device, "value", cfg.device)), claim=cfg.get("claim"))
    return out


def _finite(x):
    return x if x is not None and math.isfinite(x) else None


def write_json(path: str, obj) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, allow_nan=False)
    os.replace(tmp, path)


def initialized_model(cfg, data: InMemoryData, device: torch.device):
    """The run's network, built and initialized from its seed."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.input_shape, data.num_classes)
    # Seeded again so an explicit init draws the same weights whatever else the model holds: networks
    # with and without the (redundant) bias before BN then start, and train, identically.
    torch.manual_seed(cfg.seed)
    return initialize(model, cfg.init).to(device)


def planned_steps(cfg, data: InMemoryData) -> int:
    """The run's optimizer steps: train.steps, or train.epochs passes over the data."""
    return (
        cfg.train.steps
        if cfg.train.epochs is None
        else cfg.train.epochs * data.steps_per_epoch(cfg.data.batch_size)
    )


def train(cfg, run_dir: str) -> dict:
    """Train the run described by `cfg` (a composed Config), recording into `run_dir`; return its metrics."""
    start = time.perf_counter()
    check_ranges(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_data(cfg.data, device)
    model = initialized_model(cfg, data, device)
    check_batch_statistics(cfg, model)
    lr = learning_rate(cfg)
    optimizer = make_optimizer(model.parameters(), cfg.optim, lr)
    batch_size = cfg.data.batch_size
    steps = planned_steps(cfg, data)
    lengths = list(cfg.train.eval_lengths)
    if lengths and not getattr(model, "reads_any_length", False):
        raise UserError(
            f"train.eval_lengths={lengths} tests on sequences of other lengths, which needs a model "
            f"that reads any length (model=rnn)."
        )
    # Batches come from their own CPU generator: the same order on every device, for every model.
    batches = data.train_batches(batch_size, torch.Generator().manual_seed(cfg.seed))
    fast_model, memory_format = step_module(cfg, model, data.input_shape)
    monitor = Monitor(run_dir, model, cfg.log)
    # bnexp.ics measurements on the step's batch, after backward and before the update.
    measures = [
        (every, fn)
        for every, fn in ((cfg.measure.ics_every, gradient_ics), (cfg.measure.landscape_every, landscape))
        if every
    ]

    diverged_step = None
    # Divergence is flagged on the device (no per-step sync); the host looks at each logging step.
    first_bad = torch.zeros((), dtype=torch.long, device=device)
    step = 0
    for step in range(1, steps + 1):
        x, y = next(batches)
        x = x.contiguous(memory_format=memory_format)
        model.train()
        with monitor.probes(step) as acts:
            # Observed steps run eagerly: the probes' hooks are Python, outside any compiled graph.
            logits = (model if monitor.observes(step) else fast_model)(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        monitor.batch(step, loss, logits, y, lr, acts)
        for every, measure in measures:
            if step % every == 0:
                monitor.scalars(step, measure(model, x, y, lr))
        optimizer.step()

        evaluating = step % cfg.train.eval_every == 0 or step == steps
        if (evaluating or monitor.wants_stats(step)) and first_bad.item():
            diverged_step = int(first_bad)
            log.info(f"diverged: the loss became non-finite at step {diverged_step}; stopping this run")
        if evaluating or diverged_step:
            record_evaluation(model, data, monitor, step, steps, log)
        elif cfg.log.progress_every and step % cfg.log.progress_every == 0:
            log.info(f"step {step:>6}/{steps}")
        if diverged_step:
            break

    return finish(cfg, run_dir, model, data, monitor, step, steps, diverged_step, start)


def finish(
    cfg,
    run_dir: str,
    model,
    data: InMemoryData,
    monitor: Monitor,
    step: int,
    steps: int,
    diverged_step: int | None,
    start: float,
) -> dict:
    """A run's epilogue: final metrics from its logged curves, the extra evaluations, the HParams
    summary and metrics.json. Returns the metrics."""
    lengths = list(cfg.train.eval_lengths)
    last = {tag: points[-1][1] for tag, points in monitor.series.items()}
    metrics = dict(
        final_test_acc=last["test/acc"],
        best_test_acc=max(acc for _, acc in monitor.series["test/acc"]),
        final_train_acc=last["train/acc"],
        final_train_loss=_finite(last["train/loss"]),
        final_test_loss=_finite(last["test/loss"]),
        diverged=diverged_step is not None,
        diverged_step=diverged_step,
        steps=step,
        steps_planned=steps,
    )
    if has_running_statistics(model):
        metrics["final_test_acc_batch_stats"] = evaluate(
            model, data, "test", cfg.data.batch_size, batch_statistics=True
        )[1]
    if lengths:  # the step axis's length in training, then the test accuracy at each other length
        metrics["train_length"] = data.input_shape[1]
    for length in lengths:
        metrics[f"final_test_acc_length_{length}"] = evaluate(model, data, "test", length=length)[1]
    metrics["wall_time_s"] = time.perf_counter() - start
    config = flat_config(cfg)
    monitor.close(config, {k: float("nan") if v is None else float(v) for k, v in metrics.items()}, step)
    series = {tag: [[s, _finite(v)] for s, v in points] for tag, points in monitor.series.items()}
    write_json(os.path.join(run_dir, "metrics.json"), dict(config=config, **metrics, series=series))
    return metrics
