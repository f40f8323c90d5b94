"""The `bnexp` command: one training run per Hydra job (`bnexp -m ...` for sweeps).

    bnexp                                  # the default run: BN-MLP on digits
    bnexp norm=none optim.lr=0.5           # overrides
    bnexp -m norm=none,bn optim.lr=0.1,1   # a sweep, one run folder per combination
"""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig

from bnexp.config import UserError, register
from bnexp.train import train

log = logging.getLogger("bnexp")
register()


@hydra.main(version_base="1.3", config_path="pkg://bnexp.conf", config_name="config")
def main(cfg) -> float:
    hc = HydraConfig.get()
    run_dir = hc.runtime.output_dir
    try:
        metrics = train(cfg, run_dir)
    except UserError as e:
        # A user's mistake: one clear paragraph, no traceback.
        print(f"bnexp: {e}", file=sys.stderr)
        sys.exit(2)
    if hc.mode.name == "RUN":
        log.info(f"outputs in {run_dir}\n  view them with: tensorboard --logdir {run_dir}")
    # Sweepers (e.g. Optuna) maximize what the job returns.
    return metrics["final_test_acc"] if metrics["final_test_acc"] is not None else 0.0


if __name__ == "__main__":
    main()
