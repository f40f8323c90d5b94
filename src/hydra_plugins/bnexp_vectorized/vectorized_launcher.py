"""The `vectorized` Hydra launcher (see the package docstring and bnexp.vectorized).

Every job gets what Hydra's BasicLauncher gives it: its sweep config (hydra.job.id/num set), its run
folder from hydra.sweep.dir/subdir with the .hydra/ files, its job log file, the callbacks'
on_job_start/on_job_end, and a JobReturn whose return_value is what `bnexp`'s task returns (the final
test accuracy). Jobs whose configs are equal except bnexp.vectorized.SHAPE_FREE_KEYS, and that it
supports, are trained together in programs of at most `max_batch` runs; the rest (and groups of one)
call the task function exactly as the basic launcher would (bnexp.engine.train). With `n_jobs` > 1 the
programs run `n_jobs` at a time, each in its own worker process (joblib's loky backend, as Hydra's
joblib launcher: `pip install 'bnexp[joblib]'`), largest first, and with several GPUs visible the
programs take them in turn (`gpu_for`).
"""

import copy
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _flush_loggers,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    run_job,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from bnexp.config import UserError

log = logging.getLogger(__name__)


@dataclass
class VectorizedLauncherConf:
    _target_: str = "hydra_plugins.bnexp_vectorized.vectorized_launcher.VectorizedLauncher"
    # The most runs trained in one program (memory grows linearly with it).
    max_batch: int = 32
    # Programs trained at once, one worker process each (torch threads per program: the `threads` key).
    n_jobs: int = 1


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorized", node=VectorizedLauncherConf, provider="bnexp"
)


class VectorizedLauncher(Launcher):
    def __init__(self, max_batch: int = 32, n_jobs: int = 1) -> None:
        if max_batch < 1 or n_jobs < 1:
            raise ValueError(
                f"hydra.launcher.max_batch and hydra.launcher.n_jobs must be at least 1, got "
                f"max_batch={max_batch} and n_jobs={n_jobs}"
            )
        self.max_batch, self.n_jobs = max_batch, n_jobs
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from bnexp.vectorized import plan_groups

        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        sweep_configs = []
        for idx, overrides in enumerate(job_overrides):
            idx = initial_job_idx + idx
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            sweep_configs.append(sweep_config)
        groups = plan_groups(sweep_configs, self.max_batch)
        log.info(
            f"Launching {len(job_overrides)} jobs locally, as {len(groups)} programs "
            f"({sum(len(g) > 1 for g in groups)} vectorized)"
        )
        for group in groups:
            for i in group:
                log.info(
                    f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}"
                    + (f"  (vectorized x{len(group)})" if len(group) > 1 else "")
                )
        programs = [[sweep_configs[i] for i in group] for group in groups]
        logging_cfg = (self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if self.n_jobs > 1 and len(groups) > 1:
            try:
                from joblib import Parallel, delayed
            except ImportError:  # a user's mistake: one paragraph, exit status 2, nothing trained
                print(
                    "bnexp: hydra.launcher.n_jobs > 1 trains programs in parallel processes through joblib, "
                    "which "
                    "is not installed: pip install 'bnexp[joblib]', or leave hydra.launcher.n_jobs at 1.",
                    file=sys.stderr,
                )
                sys.exit(2)
            # Largest first: the long programs start early, the short ones fill the gaps.
            order = sorted(range(len(groups)), key=lambda g: -len(groups[g]))
            state = Singleton.get_state()
            done = Parallel(n_jobs=self.n_jobs, backend="loky")(
                delayed(_worker)(
                    self.hydra_context, self.task_function, programs[g], state, logging_cfg, slot
                )
                for slot, g in enumerate(order)
            )
            results = dict(zip(order, done))
        else:
            results = {}
            for g, program in enumerate(programs):
                results[g] = _run_program(self.hydra_context, self.task_function, program)
                configure_log(*logging_cfg)
        runs: list[JobReturn | None] = [None] * len(sweep_configs)
        for g, group in enumerate(groups):
            for i, ret in zip(group, results[g]):
                runs[i] = ret
        return runs


def _worker(
    hydra_context: HydraContext,
    task_function: TaskFunction,
    configs: list[DictConfig],
    singleton_state,
    logging_cfg,
    slot: int,
) -> list[JobReturn]:
    """_run_program in a worker process, with the launching process's Hydra state (as Hydra's joblib
    launcher), on its share of the GPUs (`gpu_for`)."""
    import torch

    gpu = gpu_for(slot, torch.cuda.device_count())
    if gpu is not None:
        torch.cuda.set_device(gpu)  # device=cuda (or auto) then means this GPU
    setup_globals()
    Singleton.set_state(singleton_state)
    configure_log(*logging_cfg)
    return _run_program(hydra_context, task_function, configs)


def gpu_for(slot: int, gpus: int) -> int | None:
    """The GPU of the program started `slot`-th, with `gpus` visible: the programs in turn over the GPUs,
    so that the first n_jobs start on different ones and each GPU gets its share of the sweep (before,
    every worker used GPU 0); None with one GPU or none (torch's default device)."""
    return slot % gpus if gpus > 1 else None


def _run_program(
    hydra_context: HydraContext, task_function: TaskFunction, configs: list[DictConfig]
) -> list[JobReturn]:
    """One job as Hydra's basic launcher runs it, or several trained together (_run_group)."""
    if len(configs) == 1:
        return [
            run_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=configs[0],
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        ]
    return _run_group(hydra_context, task_function, configs)


def _run_group(
    hydra_context: HydraContext, task_function: TaskFunction, configs: list[DictConfig]
) -> list[JobReturn]:
    """Hydra's run_job for several jobs at once: set up every job, train them together, end every job."""
    from bnexp import records
    from bnexp.engine import train_runs

    callbacks = hydra_context.callbacks
    orig_hydra_cfg = HydraConfig.instance().cfg
    rets, task_cfgs, run_dirs, loggers = [], [], [], []
    try:
        for config in configs:
            HydraConfig.instance().set_config(config)
            output_dir = os.path.join(
                str(OmegaConf.select(config, "hydra.sweep.dir")),
                str(OmegaConf.select(config, "hydra.sweep.subdir")),
            )
            with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
                config.hydra.runtime.output_dir = os.path.abspath(output_dir)
            HydraConfig.instance().set_config(config)
            task_cfg = copy.deepcopy(config)
            with read_write(task_cfg), open_dict(task_cfg):
                del task_cfg["hydra"]
            ret = JobReturn()
            ret.cfg, ret.hydra_cfg = task_cfg, copy.deepcopy(HydraConfig.instance().cfg)
            ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
            ret.working_dir = os.getcwd()
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            if config.hydra.output_subdir is not None:
                hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
                _save_config(task_cfg, "config.yaml", hydra_output)
                _save_config(ret.hydra_cfg, "hydra.yaml", hydra_output)
                _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
            with env_override(ret.hydra_cfg.hydra.job.env_set):
                callbacks.on_job_start(config=config, task_function=task_function)
            rets.append(ret)
            task_cfgs.append(task_cfg)
            run_dirs.append(config.hydra.runtime.output_dir)
            loggers.append(_job_logger(config))
        try:
            metrics = train_runs(task_cfgs, run_dirs, loggers)
            for ret, m in zip(rets, metrics):
                ret.return_value = m[records.FINAL_TEST_ACC]
                ret.status = JobStatus.COMPLETED
        # As bnexp's task in a sweep: these runs fail (no metrics.json), the sweep and its report go on (a
        # FAILED job would stop Hydra's sweep before the end-of-sweep report).
        except UserError as e:  # a user's mistake: one paragraph
            print(f"bnexp: {e}", file=sys.stderr)
            for ret in rets:
                ret.return_value, ret.status = None, JobStatus.COMPLETED
        except Exception:
            for logger in loggers:  # into every run's own log file, which the sweep's warning points to
                logger.exception(
                    f"these {len(rets)} runs, trained together, failed; the sweep goes on and its report "
                    f"counts them as failed"
                )
            for ret in rets:
                ret.return_value, ret.status = None, JobStatus.COMPLETED
        finally:
            for logger in loggers:
                for h in logger.handlers:
                    h.close()
                logger.handlers.clear()
        _flush_loggers()
        for config, ret in zip(configs, rets):
            HydraConfig.instance().set_config(config)
            ret.task_name = config.hydra.job.name
            callbacks.on_job_end(config=config, job_return=ret)
        return rets
    finally:
        HydraConfig.instance().cfg = orig_hydra_cfg


def _job_logger(config: DictConfig) -> logging.Logger:
    """The job's run logger: its lines go to its own job log file (<run folder>/<job name>.log) and, prefixed
    with the run's number, to the console."""
    logger = logging.getLogger(f"bnexp.vectorized.run{config.hydra.job.num}")
    logger.handlers.clear()
    logger.setLevel(logging.INFO)
    path = os.path.join(config.hydra.runtime.output_dir, f"{config.hydra.job.name}.log")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("[%(asctime)s][bnexp][%(levelname)s] - %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    console = logging.getLogger("bnexp")

    class ToConsole(logging.Handler):
        def emit(self, record):
            console.info(f"#{config.hydra.job.num}: {record.getMessage()}")

    logger.addHandler(ToConsole())
    return logger
