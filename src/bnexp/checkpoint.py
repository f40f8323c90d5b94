"""Checkpoints of long runs (train.checkpoint_every): a killed run, started again with the same command,
resumes from its last checkpoint and records what the uninterrupted run would have (bit for bit on the CPU).

A checkpoint is one file in the run folder (records.CHECKPOINT_FILE), replaced atomically: written beside
it, then renamed, so that a kill leaves the previous one whole. It holds all that bnexp.engine's loop
carries from one step to the next for the run, as of the end of step `step`:

    config      the run's flat config: a checkpoint of another config is not resumed
    step        the last step done
    kind        the stepper that wrote it (Eager, Folded): the run resumes with the same one, as the two
                round differently
    stepper     that stepper's state of the run: weights, BN buffers, optimizer state
    order       the batch order: its generator, this epoch's permutation, the position in it
    meter       the batch loss and accuracy summed since the last logging step
    first_bad   the step its loss became non-finite (0: none yet)
    series      every scalar logged so far
    elapsed     seconds of training so far (the final wall_time goes on from it)
    wall_time   when it was written
    rng         torch's CPU and CUDA generators, Python's and NumPy's

On resume the run's TensorBoard events are cut back to those logged up to the checkpoint (`trim_events`):
the steps after it are logged again, and not twice.
"""

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.summary.writer.record_writer import RecordWriter

from bnexp import records


def path(run_dir) -> Path:
    return Path(run_dir, records.CHECKPOINT_FILE)


def save(run_dir, state: dict) -> None:
    """Write the run's checkpoint (the keys above but wall_time and rng, which are added) atomically."""
    target = path(run_dir)
    tmp = target.with_name(f"{target.name}.tmp")
    torch.save({**state, "wall_time": time.time(), "rng": rng_states()}, tmp)
    os.replace(tmp, target)


def load(run_dir, config: dict, log: logging.Logger) -> dict | None:
    """The checkpoint of the run of `config` (flat) that run_dir holds, with the run's events trimmed to
    it; None where it holds none it can resume from (a checkpoint of another config, or one that cannot be
    read, is said so in the log and left for records.clear_remains)."""
    file = path(run_dir)
    if not file.exists():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a file torch cannot read back, whatever the reason: the run starts over
        log.warning(f"{file} cannot be read ({type(e).__name__}: {e}); training from the start")
        return None
    differ = records.config_differences(state["config"], config)
    if differ:
        log.warning(f"{file} is a checkpoint of another config ({differ}); training from the start")
        return None
    trim_events(run_dir, state["step"], state["wall_time"])
    log.info(f"resuming from the checkpoint at step {state['step']} ({file})")
    return state


def remove(run_dir) -> None:
    """The run's checkpoint, and one a kill left half-written."""
    target = path(run_dir)
    for file in (target, target.with_name(f"{target.name}.tmp")):
        file.unlink(missing_ok=True)


def trim_events(run_dir, step: int, wall_time: float) -> None:
    """Cut the run's event files back to the events logged up to `step` and no later than `wall_time` (the
    checkpoint's): what a killed run logged after its checkpoint goes, a torn last record too. Each file is
    replaced atomically, so a kill here leaves every file whole, and trimming again changes nothing."""
    for file in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        kept = [
            raw
            for raw in RawEventFileLoader(str(file)).Load()
            if (event := Event.FromString(raw)).step <= step and event.wall_time <= wall_time
        ]
        tmp = file.with_name(f"{file.name}.tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            for raw in kept:
                writer.write(raw)
        os.replace(tmp, file)


def rng_states() -> dict:
    """Every global random number generator's state. Training draws from torch's alone (dropout, noisy BN;
    the batch order and the vectorized dropout keep generators of their own, saved with them); Python's
    and NumPy's are kept too, for code that a run's model or data may call."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
    }


def restore_rng(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])
    random.setstate(states["python"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
