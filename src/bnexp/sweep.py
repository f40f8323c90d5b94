"""Hydra callbacks for sweeps (`bnexp -m ...`)."""
import logging

from hydra.experimental.callback import Callback

log = logging.getLogger("bnexp")


class SweepEnd(Callback):
    """At the end of a sweep, say where its runs are and how to look at them."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        log.info(f"sweep outputs in {sweep_dir} (one folder per run)\n"
                 f"  compare the runs with: tensorboard --logdir {sweep_dir}")
