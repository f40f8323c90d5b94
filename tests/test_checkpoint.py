"""Claims about checkpoints (issue 15): a run killed after a checkpoint resumes from it and records, bit for
bit on the CPU, what the uninterrupted run records (metrics.json, its series, its TensorBoard events), alone
or in a vectorized group; checkpoints go once a run has finished, unless kept; a checkpoint that cannot be
resumed from is said so and the run starts over."""

import json
import math
import struct

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from bnexp import checkpoint, engine, records
from bnexp.data import load_data
from bnexp.engine import evaluate, train, train_runs
from bnexp.step import initialized_model

# 40 steps, a checkpoint every 15: the kill at step 37 loses 7 steps' training and events. Dropout draws
# from torch's global generator (one run) or the runs' own (a vectorized group): the RNG states must resume.
CHECKPOINTED = ["profile=tiny", "train.checkpoint_every=15", "model.dropout=0.2", "log.hist_every=5"]


class Killed(BaseException):
    """What a kill is to the loop: it stops, mid-step, with no chance to clean up."""


@pytest.fixture
def kill_at(monkeypatch):
    def arm(step: int):
        checks = engine.Schedule.checks_divergence

        def check(self, s):
            if s == step:
                raise Killed
            return checks(self, s)

        monkeypatch.setattr(engine.Schedule, "checks_divergence", check)
        return lambda: monkeypatch.setattr(engine.Schedule, "checks_divergence", checks)

    return arm


def logged(run_dir) -> tuple[dict, dict]:
    """Every scalar and histogram in the run's event files, {tag: [(step, value)]} by step, NaN as None.
    (By step: TensorBoard reads a folder's files in the order of their names, which begin with the second
    each was made in; a run resumed in the same second and process, as here, can sort before its first.)"""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    scalars = {
        tag: sorted((e.step, None if math.isnan(e.value) else e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["scalars"]
    }
    histograms = {
        tag: sorted((e.step, e.histogram_value.sum, e.histogram_value.num) for e in acc.Histograms(tag))
        for tag in acc.Tags()["histograms"]
    }
    return scalars, histograms


def same_records(a, b) -> None:
    """Two run folders hold the same metrics.json (but the wall time) and the same events."""
    ra, rb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for r in (ra, rb):
        r.pop(records.WALL_TIME), r.pop("provenance")
    assert ra == rb
    (sa, ha), (sb, hb) = logged(a), logged(b)
    sa.pop(records.hparam(records.WALL_TIME)), sb.pop(records.hparam(records.WALL_TIME))
    assert (sa, ha) == (sb, hb)


def test_a_run_killed_after_a_checkpoint_resumes_from_it_to_the_uninterrupted_runs_records(
    make_cfg, tmp_path, kill_at, caplog
):
    cfg = make_cfg(*CHECKPOINTED, "optim.lr=0.5")
    train(cfg, str(tmp_path / "whole"))
    killed = tmp_path / "killed"
    disarm = kill_at(37)
    with pytest.raises(Killed):
        train(cfg, str(killed))
    disarm()
    assert torch.load(killed / "checkpoint.pt", weights_only=True)["step"] == 30
    with caplog.at_level("INFO", logger="bnexp"):
        train(cfg, str(killed))
    assert "resuming from the checkpoint at step 30" in caplog.text
    same_records(tmp_path / "whole", killed)
    # Trained from step 31 on: the first event file was cut back to the steps before the checkpoint.
    first, _ = sorted(killed.glob("events.out.tfevents.*"))
    assert max(Event.FromString(raw).step for raw in _raw(first)) == 30
    assert not (killed / "checkpoint.pt").exists()  # the run finished: its checkpoint went


def test_a_vectorized_group_resumes_from_its_checkpoints_runs_that_diverged_before_included(
    make_cfg, tmp_path, kill_at
):
    # ReLU at a learning rate of 50 diverges by step 10: the group goes on with two runs, before and after.
    common = [*CHECKPOINTED, "optim=momentum", "norm=none", "model.activation=relu"]
    cfgs = [make_cfg(*common, f"optim.lr={lr}", f"seed={s}") for s, lr in enumerate((0.5, 50, 0.1))]
    whole = [str(tmp_path / f"whole{k}") for k in range(3)]
    killed = [str(tmp_path / f"killed{k}") for k in range(3)]
    assert [m[records.DIVERGED] for m in train_runs(cfgs, whole)] == [False, True, False]
    disarm = kill_at(37)
    with pytest.raises(Killed):
        train_runs(cfgs, killed)
    disarm()
    train_runs(cfgs, killed)
    for a, b in zip(whole, killed):
        same_records(tmp_path / a, tmp_path / b)
    assert not list(tmp_path.glob("*/checkpoint.pt*"))


def test_a_kept_checkpoint_holds_the_trained_network(make_cfg, tmp_path):
    cfg = make_cfg("profile=tiny", "optim.lr=0.5", "train.keep_checkpoint=true")
    metrics = train(cfg, str(tmp_path))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 40
    data = load_data(cfg.data)
    model = initialized_model(cfg, data, torch.device("cpu"))
    model.load_state_dict(state["stepper"]["model"])
    assert evaluate(model, data, "test")[1] == metrics[records.FINAL_TEST_ACC]


def test_adding_checkpoints_to_a_finished_sweep_does_not_train_it_again(make_cfg, tmp_path):
    metrics = train(make_cfg("profile=tiny"), str(tmp_path))
    again = train(
        make_cfg("profile=tiny", "train.checkpoint_every=10", "log.progress_every=5"), str(tmp_path)
    )
    assert again == metrics


def test_a_checkpoint_of_another_config_is_not_resumed_from(make_cfg, tmp_path, kill_at, caplog):
    disarm = kill_at(37)
    with pytest.raises(Killed):
        train(make_cfg(*CHECKPOINTED, "optim.lr=0.5"), str(tmp_path / "run"))
    disarm()
    with caplog.at_level("INFO", logger="bnexp"):
        train(make_cfg(*CHECKPOINTED, "optim.lr=0.2"), str(tmp_path / "run"))
    assert "is a checkpoint of another config (optim.lr=0.5 recorded, 0.2 now); training from the start" in (
        caplog.text
    )
    train(make_cfg(*CHECKPOINTED, "optim.lr=0.2"), str(tmp_path / "fresh"))
    same_records(tmp_path / "fresh", tmp_path / "run")


def test_an_unreadable_checkpoint_is_said_so_and_the_run_starts_over(make_cfg, tmp_path, caplog):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with caplog.at_level("INFO", logger="bnexp"):
        metrics = train(make_cfg("profile=tiny", "train.checkpoint_every=15"), str(tmp_path))
    assert "checkpoint.pt cannot be read" in caplog.text and metrics[records.STEPS] == 40


def _raw(file):
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader

    return list(RawEventFileLoader(str(file)).Load())


def test_trimming_keeps_the_events_up_to_the_checkpoint_drops_a_torn_record_and_is_idempotent(tmp_path):
    file = tmp_path / "events.out.tfevents.1.host"

    def event(step, wall_time):
        value = Summary(value=[Summary.Value(tag="loss", simple_value=float(step))])
        return Event(step=step, wall_time=wall_time, summary=value).SerializeToString()

    with open(file, "wb") as f:
        writer = RecordWriter(f)
        for step, wall_time in [
            (0, 1.0),
            (10, 2.0),
            (20, 3.0),
            (30, 4.0),
            (20, 9.0),
        ]:  # (20, 9.0): logged late
            writer.write(event(step, wall_time))
        f.write(struct.pack("<Q", 100)[:5])  # a record the kill cut short
    checkpoint.trim_events(tmp_path, step=20, wall_time=5.0)
    kept = [(e.step, e.wall_time) for e in map(Event.FromString, _raw(file))]
    assert kept == [(0, 1.0), (10, 2.0), (20, 3.0)]
    trimmed = file.read_bytes()
    checkpoint.trim_events(tmp_path, step=20, wall_time=5.0)
    assert file.read_bytes() == trimmed
