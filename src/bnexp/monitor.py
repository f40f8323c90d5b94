"""What a run records: curves, the distributions at the probe points, gradient norms.

`Monitor` is one run's recorder: every scalar goes to TensorBoard and into its series (saved in
metrics.json, so that analyses read runs without parsing event files); the tags, and what each means, are
bnexp.records'. The statistics are computed only on the steps they are logged, stacked on the device and
read back together: one host-device sync per logging step. `Meter` keeps the running means of the batch
loss and accuracy between logging steps for K runs at once.
"""

import json
import threading
from contextlib import contextmanager
from pathlib import Path

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp import records
from bnexp.models import Network


def _write_errors_to_the_run(args) -> None:
    """TensorBoard writes events in a thread of its own, which dies on a full disk printing a traceback; the
    run's next write raises the same error in the run itself, which says what happened in one paragraph
    (bnexp.records.unwritable). Other errors in any thread: Python's default report."""
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in records.WRITE_ERRORS):
        threading.__excepthook__(args)


threading.excepthook = _write_errors_to_the_run


def percentiles(x: torch.Tensor) -> torch.Tensor:
    """The 15th/50th/85th percentiles of all values of `x`: the order statistics of ranks
    round(p/100·(n − 1)). On the CPU by selection (kthvalue, linear time, where a sort is n log n); on
    accelerators by one sort, the same order statistics: CUDA's kthvalue is far slower than its sort on
    large tensors (pytorch/pytorch#75599), and MPS has it only from torch 2.9 on."""
    v = x.detach().flatten()
    ranks = [round(p / 100 * (v.numel() - 1)) for p in records.PERCENTILES]
    if v.device.type != "cpu":
        return v.sort().values[ranks]
    return torch.stack([v.kthvalue(r + 1).values for r in ranks])


def probe_stats(layer: str, v: torch.Tensor) -> dict[str, torch.Tensor]:
    """The statistics of one probe point's values v, (B, C, *) (records.PROBE_STATS), on the device."""
    unit0 = v.select(1, 0)  # channel 0: one fixed unit, as the BN paper plots
    linear = (v.abs() < records.LINEAR_BOUND).float().mean()
    values = torch.cat([percentiles(v), v.mean()[None], v.std()[None], linear[None], percentiles(unit0)])
    return {records.act(layer, stat): value for stat, value in zip(records.PROBE_STATS, values)}


def gradient_stats(network: Network, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per hidden layer of `network`, the L2 norm of the gradients `grads` (by parameter name) of all its
    parameters, and of the bias before its norm where there is one; on the device."""
    stats = {}
    full = {id(m): name for name, m in network.named_modules()}
    for layer_name, layer in network.layers().items():
        prefix = full[id(layer)]
        norms = [
            grads[f"{prefix}.{name}"].norm()
            for name, _ in layer.named_parameters()
            if f"{prefix}.{name}" in grads
        ]
        if norms:
            stats[records.grad_norm(layer_name)] = torch.linalg.vector_norm(torch.stack(norms))
        bias = grads.get(f"{prefix}.linear.bias")
        if bias is not None:
            stats[records.grad_bias(layer_name)] = bias.norm()
    return stats


@contextmanager
def captured(model: Network):
    """Within: the output of each of `model`'s probe points in the forward pass, detached, by probe name."""
    values = {}
    hooks = [
        probe.register_forward_hook(lambda m, inp, out, name=name: values.__setitem__(name, out.detach()))
        for name, probe in model.probes().items()
    ]
    try:
        yield values
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def observe(model: Network, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The probe points' values for the fixed input x (log.probe_batch), the model in eval mode: BN by its
    running statistics, no dropout, no noise; nothing the model holds changes. On a fixed input the
    distribution moves only when the network does, where on each step's training batch the batch's own
    sampling noise moves it too."""
    was_training = model.training
    model.eval()
    try:
        with captured(model) as values:
            model(x)
    finally:
        model.train(was_training)
    return values


class Meter:
    """The mean batch loss and accuracy of K runs since the last logging step, accumulated on the device."""

    def __init__(self, k: int, device):
        self.loss_sum = torch.zeros(k, device=device)
        self.correct = torch.zeros(k, dtype=torch.long, device=device)
        self.seen = self.batches = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, n: int) -> None:
        """One mini-batch of n examples per run: its mean loss (K,) and number right (K,)."""
        self.loss_sum = self.loss_sum + loss
        self.correct = self.correct + correct
        self.seen += n
        self.batches += 1

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss (K,) and accuracy (K,) since the last take, and a fresh start."""
        out = self.loss_sum / self.batches, self.correct / self.seen
        self.loss_sum, self.correct = torch.zeros_like(self.loss_sum), torch.zeros_like(self.correct)
        self.seen = self.batches = 0
        return out

    def keep(self, index: torch.Tensor) -> None:
        """Only the runs at `index` go on."""
        self.loss_sum, self.correct = (
            self.loss_sum.index_select(0, index),
            self.correct.index_select(0, index),
        )

    def state(self, k: int) -> dict:
        """Run k's sums since the last take (a checkpoint's)."""
        return {
            "loss_sum": self.loss_sum[k],
            "correct": self.correct[k],
            "seen": self.seen,
            "n": self.batches,
        }

    def restore(self, states: list[dict]) -> None:
        """The sums of the runs, one state each, as `state` gave them at one step."""
        device = self.loss_sum.device
        self.loss_sum = torch.stack([s["loss_sum"] for s in states]).to(device)
        self.correct = torch.stack([s["correct"] for s in states]).to(device)
        self.seen, self.batches = states[0]["seen"], states[0]["n"]


class Monitor:
    """One run's records: its TensorBoard events (in the run folder itself) and its series."""

    def __init__(self, run_dir: str):
        self.writer = SummaryWriter(run_dir)
        self.series: dict[str, list] = {}  # every scalar recorded so far: {tag: [[step, value], ...]}

    def scalars(self, step: int, values: dict) -> None:
        """Record {tag: value} at this step, e.g. {"test/acc": 0.9}. Values still on the device (0-dim
        tensors) are read back together: one host-device sync."""
        on_device = [tag for tag, v in values.items() if isinstance(v, torch.Tensor)]
        if on_device:
            read = torch.stack([values[tag].float() for tag in on_device]).tolist()
            values = {**values, **dict(zip(on_device, read))}
        self._write(step, values)
        for tag, value in values.items():
            self.series.setdefault(tag, []).append([step, value])

    def layout(self, layers: list[str], sharpness: bool = False) -> None:
        """TensorBoard's Custom Scalars tab: each layer's probe percentiles in one chart (the BN paper's
        Fig. 1 panel), loss and accuracy on train and test together, and sharpness with its limit."""
        layout = {
            "input of g: 15th, 50th, 85th percentiles (Ioffe & Szegedy 2015, Fig. 1)": {
                layer: ["Multiline", records.act_percentiles(layer)] for layer in layers
            },
            "loss and accuracy": {
                "loss": ["Multiline", [records.TRAIN_LOSS, records.TEST_LOSS, records.BATCH_LOSS]],
                "accuracy": ["Multiline", [records.TRAIN_ACC, records.TEST_ACC, records.TEST_ACC_PRECISE]],
            },
        }
        if sharpness:
            layout["sharpness (Cohen et al. 2021)"] = {
                "λ_max and the stability limit 2/η": [
                    "Multiline",
                    [records.SHARPNESS, records.SHARPNESS_LIMIT],
                ]
            }
        self.writer.add_custom_scalars(layout)

    def histograms(self, step: int, probes: dict[str, torch.Tensor]) -> None:
        """The probe points' values as histograms, of their finite values: a diverging run's infinities and
        NaNs have no bin (TensorBoard's histogram refuses them), and once none is finite nothing is logged."""
        for name, v in probes.items():
            v = v.float().cpu()
            v = v[torch.isfinite(v)]
            if v.numel():
                self.writer.add_histogram(records.act(name), v, step)

    def _write(self, step: int, values: dict):
        # One event holding every tag, where add_scalar writes one event per tag: on logging steps that
        # cost rivalled the statistics themselves.
        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
        )
        self.writer.file_writer.add_summary(summary, step)

    def close(self, hparam_dict: dict | None, final: dict, step: int):
        """The final metrics as hparam/<metric> scalars and, given `hparam_dict` (a run alone), its HParams
        session with every setting: written into this run's own event file (add_hparams would make a
        sub-run). A sweep's runs get sessions of the keys it varies at its end (`write_sweep_hparams`)."""
        metrics = {records.hparam(k): v for k, v in final.items()}
        if hparam_dict is not None:
            for summary in hparams({k: _hparam(v) for k, v in hparam_dict.items()}, metrics):
                self.writer.file_writer.add_summary(summary)
        self._write(step, metrics)
        self.writer.close()


def _hparam(v):
    """A setting as HParams takes it: a number, string or bool; anything else (null, a list) in words."""
    return v if isinstance(v, (int, float, str, bool)) else str(v)


HPARAMS_SUFFIX = ".hparams"  # the event files write_sweep_hparams owns (and rewrites)


def write_sweep_hparams(sweep_dir, runs: list) -> None:
    """The HParams tab of a sweep (records.Run's): at its root, the experiment, the keys the sweep varies
    with their values as domains and the runs' final metrics; in each finished run's folder, its session
    with those keys' values. Written anew at every sweep's end (a resumed sweep's included)."""
    done = [r for r in runs if r.metrics is not None]
    if not done:
        return
    keys = sorted({k for r in done for k in r.config})
    varied = [k for k in keys if len({json.dumps(r.config.get(k)) for r in done}) > 1]
    values = {k: [_hparam(r.config.get(k)) for r in done] for k in varied}
    for k, vs in values.items():  # a domain of one type: mixed ones (a number and null) in words
        if len({type(v) for v in vs}) > 1:
            values[k] = [str(v) for v in vs]
    metrics = sorted(
        {m for r in done for m, v in r.metrics.items() if m not in records.RECORD_KEYS and _is_number(v)}
    )
    metric_dict = {records.hparam(m): 0.0 for m in metrics}  # names only: values come from each run's scalars
    domains = {k: sorted(set(vs)) for k, vs in values.items()}

    def rewrite(folder: Path, summaries) -> None:
        for old in folder.glob(f"events.out.tfevents.*{HPARAMS_SUFFIX}"):
            old.unlink()
        with SummaryWriter(str(folder), filename_suffix=HPARAMS_SUFFIX) as writer:
            for summary in summaries:
                writer.file_writer.add_summary(summary)

    for i, run in enumerate(done):
        _, start, end = hparams({k: vs[i] for k, vs in values.items()}, metric_dict, domains)
        rewrite(run.path, [start, end])
    experiment, _, _ = hparams({k: vs[0] for k, vs in values.items()}, metric_dict, domains)
    rewrite(Path(sweep_dir), [experiment])


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
