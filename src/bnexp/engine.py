"""The training engine: one loop that owns a run's schedule, for one run or K runs trained together.

`train_runs` decides when things happen (`Schedule`): the steps (train.steps, or train.epochs passes over the
data), the batch order, the logging steps, the measurements, the evaluations, the divergence checks, the
progress lines, and each run's epilogue (final metrics, the HParams summary, metrics.json). What one step
computes is the stepper's (bnexp.step):

  * `bnexp.step.Eager` trains one run's model with its torch.optim optimizer (every model, norm, optimizer);
  * `bnexp.vectorized.Folded` trains K runs that differ only in shape-free settings (seeds, learning rates,
    init scales, ...) as one network K times wider.

Divergence is flagged on the device and looked at on every logging and evaluation step, so a diverged run
stops within log.stats_every steps, recording the exact step its loss first became non-finite.

With train.checkpoint_every, each run saves what the loop carries from step to step (bnexp.checkpoint), and
a run whose folder holds a checkpoint goes on from it.
"""

import logging
import time
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from bnexp import checkpoint, records, runtime
from bnexp.config import UserError, check_ranges
from bnexp.data import BatchOrder, InMemoryData, load_data
from bnexp.measures import gradient_ics, landscape, sharpness
from bnexp.monitor import Meter, Monitor, gradient_stats, observe, probe_stats
from bnexp.step import Eager, learning_rate
from bnexp.vectorized import Folded, check_foldable

log = logging.getLogger("bnexp")


# ---- the schedule and what a run must satisfy ----------------------------------------------------------
def planned_steps(cfg, data: InMemoryData) -> int:
    """The run's optimizer steps: train.steps (or its model's in train.steps_by_model), or train.epochs
    passes over the data."""
    if cfg.train.epochs is None:
        return (cfg.train.steps_by_model or {}).get(cfg.model.name, cfg.train.steps)
    return cfg.train.epochs * data.steps_per_epoch(cfg.data.batch_size)


class Schedule:
    """When a run of `steps` steps logs, observes, evaluates and reports progress (train and log groups)."""

    def __init__(self, cfg, steps: int):
        self.train, self.log, self.steps = cfg.train, cfg.log, steps
        evals = cfg.train.evals
        self.eval_every = cfg.train.eval_every if evals is None else max(steps // evals, 1)

    def wants_stats(self, step: int) -> bool:
        return step % self.log.stats_every == 0

    def wants_histograms(self, step: int) -> bool:
        """Every log.hist_every steps, and at the first and the last: a run shorter than the interval has
        its start and end."""
        return step % self.log.hist_every == 0 or step in (1, self.steps)

    def observes(self, step: int) -> bool:
        """Whether the probe points are observed at this step (statistics or histograms)."""
        return self.wants_stats(step) or self.wants_histograms(step)

    def evaluates(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.steps

    def checks_divergence(self, step: int) -> bool:
        """Whether the host looks at the divergence flags (a sync): on logging and evaluation steps."""
        return self.evaluates(step) or self.wants_stats(step)

    def reports_progress(self, step: int) -> bool:
        """A progress line, where no evaluation's line is logged anyway."""
        every = self.log.progress_every
        return bool(every) and step % every == 0 and not self.evaluates(step)


def has_running_statistics(model) -> bool:
    return any(getattr(m, "track_running_stats", False) for m in model.modules())


def check_batch_statistics(cfg, model) -> None:
    """BN's batch statistics need two examples: a batch of one has no spread to normalize by."""
    if cfg.data.batch_size < 2 and has_running_statistics(model):
        raise UserError(
            f"norm={cfg.norm.name} normalizes by statistics over each batch, and a batch of "
            f"{cfg.data.batch_size} example has none; set data.batch_size to 2 or more, or choose a "
            f"norm without batch statistics (ln, gn, none)."
        )


def fixed_probe_batch(data: InMemoryData, n: int) -> torch.Tensor | None:
    """The first n test examples, prepared, where the probe points are observed (log.probe_batch); None for
    n = 0 (observed on the training batch)."""
    if not n:
        return None
    if n > len(data.test_y):
        raise UserError(
            f"log.probe_batch={n} asks for more test examples than the test split holds "
            f"({len(data.test_y)}); set it to at most {len(data.test_y)}, or 0 to observe the training batch."
        )
    return next(data.eval_batches("test", n))[0]


def stability_limit(optim, lr: float) -> float | None:
    """The largest sharpness at which the optimizer's step is stable on a quadratic: 2/η for SGD, (2 + 2β)/η
    for heavy-ball momentum β (torch's SGD momentum; Cohen et al. 2021, Sec. 2 and App. on momentum); None
    for Adam, whose limit depends on its preconditioner."""
    if optim.name == "sgd":
        return 2 / lr
    if optim.name == "momentum":
        return (2 + 2 * optim.momentum) / lr
    return None


def record_sharpness(run, model, batch: tuple[torch.Tensor, torch.Tensor], step: int) -> None:
    """λ_max of the run's training loss on the fixed batch, in training mode, beside its stability limit."""
    m = run.cfg.measure
    lam, iters = sharpness(model.train(), *batch, m.sharpness_iters, m.sharpness_tol)
    values = {records.SHARPNESS: lam, records.SHARPNESS_ITERS: iters}
    limit = stability_limit(run.cfg.optim, run.lr) if run.lr > 0 else None
    if limit is not None:
        values[records.SHARPNESS_LIMIT] = limit
    run.monitor.scalars(step, values)


# ---- evaluation --------------------------------------------------------------------------------------
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


@torch.no_grad()
def with_precise_statistics(model, data: InMemoryData, batches: int, batch_size: int, seed: int):
    """A copy of `model` whose batch-norm layers hold precise population statistics (Wu & Johnson 2021,
    "Rethinking 'Batch' in BatchNorm", Sec. 3.1): the equally weighted average of the batch means and
    unbiased variances over `batches` training batches of `batch_size`, with the weights frozen, where the
    EMA weighs recent batches most and lags the weights. The batches are the first of a batch order seeded
    like the run's; the copy runs in training mode, as the batches the EMA averaged did (dropout and noise
    on), drawing from generators seeded like the run, forked: the run's own stay as they were."""
    precise = deepcopy(model).train()
    for m in precise.modules():
        if isinstance(m, _BatchNorm) and m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None  # the plain average of every batch from here on
    order = BatchOrder(data, batch_size, [seed])
    device = data.train_y.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the same draws whichever stepper trains the run
        for _ in range(batches):
            precise(data.batch(order.next()[0])[0])
    return precise.eval()


def record_evaluation(
    cfg, model, data: InMemoryData, monitor: Monitor, step: int, steps: int, logger: logging.Logger
):
    """The full train and test splits evaluated at this step (and the test split with precise statistics,
    eval.precise_bn_batches): into the run's curves and its log."""
    (train_loss, train_acc), (test_loss, test_acc) = (
        evaluate(model, data, "train"),
        evaluate(model, data, "test"),
    )
    values = {
        records.TRAIN_LOSS: train_loss,
        records.TRAIN_ACC: train_acc,
        records.TEST_LOSS: test_loss,
        records.TEST_ACC: test_acc,
    }
    batches = cfg.eval.precise_bn_batches
    if batches and has_running_statistics(model):
        precise = with_precise_statistics(model, data, batches, cfg.data.batch_size, cfg.seed)
        values[records.TEST_LOSS_PRECISE], values[records.TEST_ACC_PRECISE] = evaluate(precise, data, "test")
    monitor.scalars(step, values)
    logger.info(f"step {step:>6}/{steps}  train loss {train_loss:.4f}  test acc {test_acc:.4f}")


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class _Run:
    cfg: object
    run_dir: str
    log: logging.Logger
    monitor: Monitor
    lr: float
    metrics: dict | None = None


def train(cfg, run_dir: str) -> dict:
    """Train the run described by `cfg` (a composed Config), recording into `run_dir`; return its metrics."""
    return train_runs([cfg], [run_dir])[0]


def train_runs(
    cfgs: Sequence, run_dirs: Sequence[str], loggers: Sequence[logging.Logger] | None = None
) -> list[dict]:
    """Train the runs `cfgs`, each recording into its `run_dirs` entry, and return their metrics: one run with
    the Eager stepper, several (which must differ only in bnexp.vectorized.SHAPE_FREE_KEYS) folded
    together. A run its folder holds finished (records.finished: a sweep run again into its folder) is not
    trained again: its recorded metrics are returned."""
    loggers = loggers or [log] * len(cfgs)
    metrics = [records.finished(d, records.flat_config(c)) for c, d in zip(cfgs, run_dirs)]
    for m, d, logger in zip(metrics, run_dirs, loggers):
        if m is not None:
            logger.info(f"finished before, with this config: not trained again ({d})")
    todo = [k for k, m in enumerate(metrics) if m is None]
    try:
        # Runs resume together where their checkpoints are of one step and stepper (an Eager one is one
        # run's); the others start together from scratch.
        starts: dict[tuple, list] = {}
        for k in todo:
            state = checkpoint.load(run_dirs[k], records.flat_config(cfgs[k]), loggers[k])
            if state is None:
                records.clear_remains(run_dirs[k])
            key = (
                () if state is None else (state["step"], state["kind"], k if state["kind"] == "Eager" else 0)
            )
            starts.setdefault(key, []).append((k, state))
        for start in starts.values():
            ks, states = [k for k, _ in start], [s for _, s in start]
            picked = ([cfgs[k] for k in ks], [run_dirs[k] for k in ks], [loggers[k] for k in ks])
            for k, m in zip(ks, _train(*picked, None if states[0] is None else states)):
                metrics[k] = m
    except OSError as e:
        if e.errno not in records.WRITE_ERRORS:
            raise
        raise UserError(records.unwritable(e, [run_dirs[k] for k in todo])) from None
    return metrics


def _save_checkpoints(runs, index, step, stepper, order, meter, first_bad, elapsed) -> None:
    """The checkpoints of the runs at positions `index` among the training ones (`runs`), as of this step."""
    for k in index:
        run = runs[k]
        run.monitor.writer.flush()  # every event up to the checkpoint on disk: a resume keeps them
        state = {
            "config": records.flat_config(run.cfg),
            "step": step,
            "kind": type(stepper).__name__,
            "stepper": stepper.state(k),
            "order": order.state(k),
            "meter": meter.state(k),
            "first_bad": int(first_bad[k]),
            "series": run.monitor.series,
            "elapsed": elapsed,
        }
        checkpoint.save(run.run_dir, state)


def _train(
    cfgs: Sequence,
    run_dirs: Sequence[str],
    loggers: Sequence[logging.Logger],
    resume: list[dict] | None = None,
) -> list[dict]:
    """Train the runs (from their checkpoints' `resume`, one each, where given); return their metrics."""
    start = time.perf_counter() - (resume[0]["elapsed"] if resume else 0.0)
    for cfg in cfgs:
        check_ranges(cfg)
    if len(cfgs) > 1:
        check_foldable(cfgs)  # (which keeps measure.* out: a measurement needs a run of its own)
    cfg = cfgs[0]  # for what the runs share
    device = runtime.prepare(cfg)
    provenance = records.provenance(device)  # the code and device as the runs start
    data = load_data(cfg.data, device)
    folded = len(cfgs) > 1 or (resume is not None and resume[0]["kind"] == Folded.__name__)
    stepper = Folded(cfgs, data, device) if folded else Eager(cfg, data, device)
    check_batch_statistics(cfg, stepper.models[0])
    if cfg.eval.precise_bn_batches and cfg.norm.name == "batch_renorm":
        raise UserError(
            "eval.precise_bn_batches recomputes running statistics by forwards in training mode, where "
            "batch renorm normalizes by those same statistics as they are being recomputed: the result "
            "would not be its population statistics. Use it with norm=bn, noisy_bn or torch_bn, or set it "
            "to 0."
        )
    lengths = list(cfg.train.eval_lengths)
    if lengths and not getattr(stepper.models[0], "reads_any_length", False):
        raise UserError(
            f"train.eval_lengths={lengths} tests on sequences of other lengths, which needs a model "
            f"that reads any length (model=rnn)."
        )
    steps, batch_size = planned_steps(cfg, data), cfg.data.batch_size
    probe_x = fixed_probe_batch(data, cfg.log.probe_batch)
    schedule = Schedule(cfg, steps)  # the same for every run
    order = BatchOrder(data, batch_size, [c.seed for c in cfgs])
    runs = [_Run(c, d, logger, Monitor(d), learning_rate(c)) for c, d, logger in zip(cfgs, run_dirs, loggers)]
    # bnexp.measures' measurements on the step's batch, after backward and before the update
    measures = [
        (every, fn)
        for every, fn in ((cfg.measure.ics_every, gradient_ics), (cfg.measure.landscape_every, landscape))
        if every
    ]
    sharpness_every = cfg.measure.sharpness_every
    if sharpness_every:  # the first training examples, one fixed batch for every measurement
        n = min(cfg.measure.sharpness_batch, len(data.train_y))
        sharpness_batch = data.batch(torch.arange(n, device=data.train_y.device))
    meter = Meter(len(runs), device)
    first_bad = torch.zeros(
        len(runs), dtype=torch.long, device=device
    )  # the step each loss became non-finite
    active = list(runs)  # the runs still training, in the stepper's order
    step = done_before = resume[0]["step"] if resume else 0
    if resume:
        stepper.restore([r["stepper"] for r in resume])
        order.restore([r["order"] for r in resume])
        meter.restore([r["meter"] for r in resume])
        first_bad = torch.tensor([r["first_bad"] for r in resume], device=device)
        for run, r in zip(runs, resume):
            run.monitor.series = r["series"]
        checkpoint.restore_rng(resume[0]["rng"])  # the runs' shared global generators: as they were
    else:  # (a resumed run's events keep the layout it wrote)
        for run in runs:
            run.monitor.layout(list(stepper.models[0].probes()), sharpness=bool(sharpness_every))
    every = cfg.train.checkpoint_every
    for step in range(done_before + 1, steps + 1):
        observed = schedule.observes(step)
        fixed = observed and probe_x is not None  # the network as this step finds it, on the fixed batch
        fixed_probes = [observe(stepper.model(k), probe_x) for k in range(len(active))] if fixed else []
        out = stepper.forward_backward(order.next(), observed and not fixed)
        meter.add(out.loss, out.correct, batch_size)
        first_bad = torch.where((first_bad == 0) & ~torch.isfinite(out.loss), step, first_bad)
        probes = fixed_probes or out.probes
        if schedule.wants_histograms(step):
            for run, values in zip(active, probes):
                run.monitor.histograms(step, values)
        if schedule.wants_stats(step):
            losses, accs = meter.take()
            for k, run in enumerate(active):
                stats = {records.LR: run.lr, records.BATCH_LOSS: losses[k], records.BATCH_ACC: accs[k]}
                for name, v in probes[k].items():
                    stats.update(probe_stats(name, v))
                stats.update(gradient_stats(stepper.models[k], stepper.grads(k)))
                run.monitor.scalars(step, stats)
        for every, measure in measures:
            if step % every == 0:
                active[0].monitor.scalars(step, measure(stepper.model(0), *out.batch, active[0].lr))
        # at the first step too: the sharpness at initialization, before any update
        if sharpness_every and (step == 1 or step % sharpness_every == 0):
            for k, run in enumerate(active):
                record_sharpness(run, stepper.model(k), sharpness_batch, step)
        stepper.update()

        done = []
        if schedule.checks_divergence(step):
            for k, (run, bad) in enumerate(zip(active, first_bad.tolist())):
                if bad or schedule.evaluates(step):
                    if bad:
                        run.log.info(f"diverged: the loss became non-finite at step {bad}; stopping this run")
                    model = stepper.model(k)
                    record_evaluation(run.cfg, model, data, run.monitor, step, steps, run.log)
                    if bad or step == steps:
                        run.metrics = _finish(run, model, data, step, steps, bad or None, provenance, start)
                        done.append(k)
        if schedule.reports_progress(step):
            for k, run in enumerate(active):  # (a diverged run's evaluation was logged)
                if k not in done:
                    run.log.info(f"step {step:>6}/{steps}")
        checkpoints = [k for k in range(len(active)) if k not in done] if every and step % every == 0 else []
        # A finished run's checkpoint goes, or, kept, becomes the state at its end.
        checkpoints += [k for k in done if active[k].cfg.train.keep_checkpoint]
        _save_checkpoints(
            active, checkpoints, step, stepper, order, meter, first_bad, time.perf_counter() - start
        )
        for k in done:
            if not active[k].cfg.train.keep_checkpoint:
                checkpoint.remove(active[k].run_dir)
        if done:
            keep = [k for k in range(len(active)) if k not in done]
            if not keep:
                break
            stepper.keep(keep)  # (only a stepper of several runs gets here)
            order.keep(keep)
            index = torch.tensor(keep, device=device)
            meter.keep(index)
            first_bad = first_bad.index_select(0, index)
            active = [active[k] for k in keep]
    return [run.metrics for run in runs]


def _finish(
    run: _Run,
    model,
    data: InMemoryData,
    step: int,
    steps: int,
    diverged_step: int | None,
    provenance: dict,
    start: float,
) -> dict:
    """A run's epilogue: final metrics from its logged curves, the extra evaluations, the HParams summary and
    metrics.json. Returns the metrics."""
    cfg, series = run.cfg, run.monitor.series
    last = {tag: points[-1][1] for tag, points in series.items()}
    metrics = {
        records.FINAL_TEST_ACC: last[records.TEST_ACC],
        records.BEST_TEST_ACC: max(acc for _, acc in series[records.TEST_ACC]),
        records.FINAL_TRAIN_ACC: last[records.TRAIN_ACC],
        records.FINAL_TRAIN_LOSS: records.finite(last[records.TRAIN_LOSS]),
        records.FINAL_TEST_LOSS: records.finite(last[records.TEST_LOSS]),
        records.DIVERGED: diverged_step is not None,
        records.DIVERGED_STEP: diverged_step,
        records.STEPS: step,
        records.STEPS_PLANNED: steps,
    }
    if records.TEST_ACC_PRECISE in last:
        metrics[records.PRECISE_ACC] = last[records.TEST_ACC_PRECISE]
    if has_running_statistics(model):
        metrics[records.BATCH_STATS_ACC] = evaluate(
            model, data, "test", cfg.data.batch_size, batch_statistics=True
        )[1]
    lengths = list(cfg.train.eval_lengths)
    if lengths:  # the steps of a training sequence, then the test accuracy at each length
        metrics[records.TRAIN_LENGTH] = getattr(model, "train_length", data.input_shape[1])
    for length in lengths:
        metrics[records.acc_at_length(length)] = evaluate(model, data, "test", length=length)[1]
    if lengths and getattr(model, "pools_statistics", False):  # the same tests, per-step statistics pooled
        with model.pooled_statistics():
            for length in lengths:
                metrics[records.acc_at_length(length, pooled=True)] = evaluate(
                    model, data, "test", length=length
                )[1]
    metrics[records.WALL_TIME] = time.perf_counter() - start  # K runs trained together: the program's time
    config = records.flat_config(cfg)
    final = {k: float("nan") if v is None else float(v) for k, v in metrics.items()}
    run.monitor.close(None if runtime.in_sweep() else config, final, step)
    records.write_metrics(run.run_dir, config, provenance, metrics, series)
    return metrics
