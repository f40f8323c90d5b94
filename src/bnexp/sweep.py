"""Hydra callbacks: the output folder checked before a run or a sweep, and the end of a sweep."""

import logging
import sys
import tempfile
import time
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger("bnexp")


class OutputFolder(Callback):
    """Before a run or a sweep: its output folder can be made and written to, or one clear paragraph (not
    Hydra's traceback from the job it could not start)."""

    def on_run_start(self, config, **kwargs) -> None:
        self.check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self.check(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def check(folder: str, key: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            print(
                f"bnexp: the output folder {folder} cannot be written to ({e.strerror}). Choose another with "
                f"{key}=<folder>, or make it writable.",
                file=sys.stderr,
            )
            sys.exit(2)


class SweepEnd(Callback):
    """At the end of a sweep: how many runs it trained and how many it found finished (a sweep run again into
    its folder), the claim's report if it tests one, and where to look."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self.start = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        from bnexp.records import METRICS_FILE, load_runs  # not at import: every `bnexp` start loads this

        sweep_dir = Path(config.hydra.sweep.dir)
        runs = load_runs(sweep_dir)
        # A run trained now wrote its metrics.json after the sweep started; a finished one was left alone.
        before = [r for r in runs if r.metrics and (r.path / METRICS_FILE).stat().st_mtime < self.start]
        if before:
            log.info(
                f"{len(before)} of {len(runs)} runs were finished before this sweep started and were not "
                f"trained again; {sum(r.metrics is not None for r in runs) - len(before)} trained now"
            )
        from bnexp.monitor import write_sweep_hparams

        write_sweep_hparams(sweep_dir, runs)
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
