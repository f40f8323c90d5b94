"""The `bnexp` command: one training run per Hydra job (`bnexp -m ...` for sweeps).

bnexp                                  # the default run: BN-MLP on digits
bnexp norm=none optim.lr=0.5           # overrides
bnexp -m norm=none,bn optim.lr=0.1,1   # a sweep, one run folder per combination
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from bnexp import records
from bnexp.config import UserError, register
from bnexp.engine import train
from hydra_plugins.bnexp_vectorized import register as register_vectorized_launcher

log = logging.getLogger("bnexp")
register()
register_vectorized_launcher()  # hydra/launcher=vectorized, also where Hydra's plugin scan cannot list it


@hydra.main(version_base="1.3", config_path="pkg://bnexp.conf", config_name="config")
def main(cfg) -> float | None:
    hc = HydraConfig.get()
    run_dir, sweeping = hc.runtime.output_dir, hc.mode == RunMode.MULTIRUN
    try:
        metrics = train(cfg, run_dir)
    except UserError as e:
        # A user's mistake: one clear paragraph, no traceback.
        print(f"bnexp: {e}", file=sys.stderr)
        if not sweeping:
            sys.exit(2)
        return None  # in a sweep this run failed (no metrics.json); the rest go on and the report counts it
    except Exception:
        if not sweeping:
            raise
        # Hydra would skip the end-of-sweep report if a job raised: record the failure, go on.
        log.exception(
            f"this run failed; the sweep goes on and its report counts the run as failed ({run_dir})"
        )
        return None
    if not sweeping:
        log.info(f"outputs in {run_dir}\n  view them with: tensorboard --logdir {run_dir}")
    # Sweepers (e.g. Optuna) maximize what the job returns.
    return metrics[records.FINAL_TEST_ACC]


if __name__ == "__main__":
    main()
