"""Hydra callbacks for sweeps (`bnexp -m ...`)."""

import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("bnexp")


class SweepEnd(Callback):
    """At the end of a sweep: the claim's report if it tests one, and where to look."""

    def on_multirun_end(self, config, **kwargs) -> None:
        from bnexp.records import load_runs  # here, not at import: every `bnexp` start loads this callback

        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_runs(sweep_dir)
        failed = [r.path.name for r in runs if r.metrics is None]
        if failed:
            log.warning(
                f"{len(failed)} of {len(runs)} runs failed (their folders hold the log): {', '.join(failed)}"
            )
        if config.get("claim"):
            from bnexp.config import UserError
            from bnexp.report import report

            try:
                result = report(sweep_dir, runs)
            except UserError as e:  # e.g. every run failed: say why there is no report, in one paragraph
                log.warning(f"no report for this sweep: {e}")
            else:
                log.info(
                    f"{result['claim']}: {result['verdict']}. {result['summary']}\n"
                    f"  report: {sweep_dir / 'report.md'}"
                )
        log.info(
            f"sweep outputs in {sweep_dir} (one folder per run)\n"
            f"  compare the runs with: tensorboard --logdir {sweep_dir}"
        )
