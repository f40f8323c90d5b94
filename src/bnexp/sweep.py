"""Hydra callbacks for sweeps (`bnexp -m ...`)."""
import logging

from hydra.experimental.callback import Callback

log = logging.getLogger("bnexp")


class SweepEnd(Callback):
    """At the end of a sweep: the claim's report if it tests one, and where to look."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        if config.get("claim"):
            from bnexp.report import report

            result = report(sweep_dir)
            log.info(f"{result['claim']}: {result['verdict']}. {result['summary']}\n"
                     f"  report: {sweep_dir}/report.md")
        log.info(f"sweep outputs in {sweep_dir} (one folder per run)\n"
                 f"  compare the runs with: tensorboard --logdir {sweep_dir}")
