"""What a run records: curves, the distributions at the probe points, gradient norms.

Every scalar goes to TensorBoard and into `series` (tag -> [[step, value], ...]), which the runner
saves in metrics.json so that analyses read runs without parsing event files. Everything is
computed only on the steps it is logged, and each logging step costs one host-device sync:
statistics are stacked on the device and read back together.

Tags (one run = one event directory, the run folder itself):
  train/loss, train/acc, test/loss, test/acc   full splits in eval mode, every train.eval_every steps
  batch/loss, batch/acc, lr                    mean over the mini-batches since the last log
  act/<layer>/p15|p50|p85|mean|std             the input of the layer's nonlinearity (BN paper, Fig. 1)
  act/<layer>/unit0/p15|p50|p85                the same for one fixed unit (channel 0) of the layer
  act/<layer>/linear_frac                      fraction of those inputs with |x| < 1, where the sigmoid
                                               is near-linear (sigmoid(x) within 0.02 of 1/2 + x/4)
  act/<layer>                                  histograms, every log.hist_every steps
  grad/<layer>/norm                            L2 norm of the gradient of the layer's parameters
  grad/<layer>/bias                            L2 norm of the gradient of the bias before the norm, if kept
  hparams (HParams tab)                        the config and final metrics, in this same event file
"""

from contextlib import contextmanager

import torch
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from bnexp.models import Network

PERCENTILES = (15, 50, 85)
LINEAR_BOUND = 1.0  # |x| below this: the near-linear region of the sigmoid
STATS = ("p15", "p50", "p85", "mean", "std", "linear_frac", "unit0/p15", "unit0/p50", "unit0/p85")


def percentiles(x: torch.Tensor) -> torch.Tensor:
    """The 15th/50th/85th percentiles of all values of `x`: the order statistics of ranks
    round(p/100·(n − 1)). On the CPU by selection (kthvalue, linear time: a sort cost 5x more at 6000
    values, torch.quantile more still); on accelerators by one sort, the same order statistics: CUDA's
    kthvalue is far slower than its sort on large tensors (pytorch/pytorch#75599), MPS has it only from
    torch 2.9 on."""
    v = x.detach().flatten()
    ranks = [round(p / 100 * (v.numel() - 1)) for p in PERCENTILES]
    if v.device.type != "cpu":
        return v.sort().values[ranks]
    return torch.stack([v.kthvalue(r + 1).values for r in ranks])


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


class Monitor:
    def __init__(self, run_dir: str, model: Network, cfg):
        self.writer = SummaryWriter(run_dir)
        self.model, self.cfg = model, cfg
        self.series: dict[str, list] = {}
        self.loss_sum = self.correct = self.seen = 0
        self.batches = 0

    def wants_stats(self, step: int) -> bool:
        return step % self.cfg.stats_every == 0

    def observes(self, step: int) -> bool:
        """Whether this step's forward pass is observed at the probe points (statistics or histograms)."""
        return self.wants_stats(step) or step % self.cfg.hist_every == 0

    @contextmanager
    def probes(self, step: int):
        """Collects the probe points' values during the forward pass of a logging step, else nothing."""
        if not self.observes(step):
            yield {}
            return
        with captured(self.model) as values:
            yield values
        self.histograms(step, values)

    def histograms(self, step: int, values: dict):
        """The probe points' values (as `probes` collects them) as histograms, on histogram steps."""
        if step % self.cfg.hist_every == 0:
            for name, v in values.items():
                self.writer.add_histogram(f"act/{name}", v.float().cpu(), step)

    def batch(self, step: int, loss, logits, y, lr: float, acts: dict):
        """Accumulate this mini-batch (on the device); on logging steps write the statistics."""
        self.loss_sum = self.loss_sum + loss.detach()
        self.correct = self.correct + (logits.detach().argmax(1) == y).sum()
        self.seen += y.numel()
        self.batches += 1
        if not self.wants_stats(step):
            return
        stats = {"batch/loss": self.loss_sum / self.batches, "batch/acc": self.correct / self.seen}
        for name, v in acts.items():
            unit0 = v.select(1, 0)  # channel 0: one fixed unit, as the BN paper plots
            linear = (v.abs() < LINEAR_BOUND).float().mean()
            values = torch.cat(
                [percentiles(v), v.mean()[None], v.std()[None], linear[None], percentiles(unit0)]
            )
            stats.update({f"act/{name}/{key}": value for key, value in zip(STATS, values)})
        for name, layer in self.model.layers().items():
            grads = [p.grad.norm() for p in layer.parameters() if p.grad is not None]
            if grads:
                stats[f"grad/{name}/norm"] = torch.linalg.vector_norm(torch.stack(grads))
            if layer.linear.bias is not None and layer.linear.bias.grad is not None:
                stats[f"grad/{name}/bias"] = layer.linear.bias.grad.norm()
        values = torch.stack([v.float() for v in stats.values()]).tolist()  # the single sync of this step
        self.scalars(step, {"lr": lr, **dict(zip(stats, values))})
        self.loss_sum = self.correct = self.seen = self.batches = 0

    def scalars(self, step: int, values: dict):
        """Record {tag: value} at this step, e.g. {"test/acc": 0.9}."""
        self._write(step, values)
        for tag, value in values.items():
            self.series.setdefault(tag, []).append([step, value])

    def _write(self, step: int, values: dict):
        # One event holding every tag: what add_scalar writes tag by tag (a simple_value each), at a
        # fifteenth of its cost, which on logging steps rivalled the statistics themselves.
        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
        )
        self.writer.file_writer.add_summary(summary, step)

    def close(self, hparam_dict: dict, final: dict, step: int):
        """The HParams tab: written into this run's own event file (add_hparams would make a sub-run)."""
        hparam_dict = {
            k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparam_dict.items()
        }
        metrics = {f"hparam/{k}": v for k, v in final.items()}
        for summary in hparams(hparam_dict, metrics):
            self.writer.file_writer.add_summary(summary)
        self._write(step, metrics)
        self.writer.close()
