"""Claims about resuming (issue 15): a sweep run again into its folder trains only the runs that have not
finished, a killed run is trained again from the start without its TensorBoard events twice, and a folder
that holds a finished run of another config is never overwritten."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bnexp import records
from bnexp.config import UserError
from bnexp.engine import train, train_runs
from bnexp.records import Run
from bnexp.report import code_versions_note

TINY = ["profile=tiny", "optim.lr=0.5"]  # 40 steps
BNEXP = (
    "from hydra_plugins.bnexp_vectorized import register; register(); from bnexp.__main__ import main; main()"
)


def event_files(folder):
    """The run's own event files (not the HParams session a sweep's end writes beside them)."""
    return sorted(p for p in folder.glob("events.out.tfevents.*") if not p.name.endswith(".hparams"))


def test_a_finished_run_is_not_trained_again(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY), str(tmp_path))
    written = (tmp_path / "metrics.json").read_bytes(), event_files(tmp_path)
    assert train(make_cfg(*TINY), str(tmp_path)) == metrics
    assert ((tmp_path / "metrics.json").read_bytes(), event_files(tmp_path)) == written


def test_a_killed_runs_remains_are_cleared_and_it_trains_again(make_cfg, tmp_path):
    whole = train(make_cfg(*TINY), str(tmp_path / "whole"))
    # What a run killed while writing metrics.json leaves: its events, a half-written metrics.json.tmp, and
    # no metrics.json (written last, by an atomic rename).
    killed = tmp_path / "killed"
    train(make_cfg(*TINY), str(killed))
    (killed / "metrics.json").unlink()
    (killed / "metrics.json.tmp").write_text('{"config": {')
    again = train(make_cfg(*TINY), str(killed))
    again.pop(records.WALL_TIME), whole.pop(records.WALL_TIME)
    assert again == whole
    assert len(event_files(killed)) == 1 and not (killed / "metrics.json.tmp").exists()


def test_a_folder_holding_a_finished_run_of_another_config_is_not_overwritten(make_cfg, tmp_path):
    train(make_cfg(*TINY), str(tmp_path))
    before = (tmp_path / "metrics.json").read_bytes()
    with pytest.raises(UserError, match=r"another config \(optim.lr=0.5 recorded, 0.2 now\)"):
        train(make_cfg("profile=tiny", "optim.lr=0.2"), str(tmp_path))
    assert (tmp_path / "metrics.json").read_bytes() == before


def test_a_setting_added_after_a_run_was_recorded_counts_as_its_default(make_cfg, tmp_path):
    cfg = make_cfg(*TINY)
    train(cfg, str(tmp_path))
    record = json.loads((tmp_path / "metrics.json").read_text())
    del record["config"]["norm.r_max"]  # as a bnexp without batch renorm recorded it
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    assert records.finished(tmp_path, records.flat_config(cfg))["steps"] == 40
    record["config"]["norm.r_max"] = 2.0  # recorded at another value: another config
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="norm.r_max=2.0 recorded, 3.0 now"):
        records.finished(tmp_path, records.flat_config(cfg))


def test_an_unreadable_record_is_reported_not_overwritten(make_cfg, tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot be read"):
        train(make_cfg(*TINY), str(tmp_path))
    assert (tmp_path / "metrics.json").read_text() == "{not json"


def test_a_vectorized_group_trains_only_its_unfinished_runs(make_cfg, tmp_path):
    cfgs = [make_cfg(*TINY, f"seed={s}") for s in range(3)]
    dirs = [str(tmp_path / str(s)) for s in range(3)]
    first = train_runs(cfgs, dirs)
    os.remove(os.path.join(dirs[1], "metrics.json"))
    kept = [(tmp_path / d / "metrics.json").read_bytes() for d in ("0", "2")]
    again = train_runs(cfgs, dirs)
    assert [(tmp_path / d / "metrics.json").read_bytes() for d in ("0", "2")] == kept
    assert again[0] == first[0] and again[1]["final_test_acc"] == pytest.approx(first[1]["final_test_acc"])


def sweep(tmp_path, *extra, launcher="basic"):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            BNEXP,
            "-m",
            f"hydra/launcher={launcher}",
            "profile=tiny",
            "norm=none,bn",
            "seed=0,1",
            f"hydra.sweep.dir={tmp_path}",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )


@pytest.mark.parametrize("launcher", ["basic", "vectorized"])
def test_a_sweep_run_again_into_its_folder_trains_only_the_unfinished_runs(launcher, tmp_path):
    assert sweep(tmp_path, launcher=launcher).returncode == 0
    folders = sorted(p for p in tmp_path.iterdir() if (p / "metrics.json").exists())
    assert len(folders) == 4
    (folders[0] / "metrics.json").unlink()
    # resumed with checkpoints, which change neither the runs' folders nor which of them count as finished
    out = sweep(tmp_path, "train.checkpoint_every=10", launcher=launcher)
    assert out.returncode == 0, out.stderr
    assert sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name != ".hydra") == folders
    assert (
        "3 of 4 runs were finished before this sweep started and were not trained again; 1 trained now"
        in (out.stdout + out.stderr)
    )
    assert all((f / "metrics.json").exists() and len(event_files(f)) == 1 for f in folders)
    # the sweep's HParams rewritten, not added to: one experiment at the root, one session per run
    assert all(len(list(f.glob("events.out.tfevents.*.hparams"))) == 1 for f in [tmp_path, *folders])


# From the start or from a checkpoint (the in-process kills of tests/test_checkpoint.py cover both quickly)
@pytest.mark.parametrize("checkpoint_every", [pytest.param(0, marks=pytest.mark.slow), 100])
def test_a_run_killed_mid_training_resumes_to_what_an_uninterrupted_run_records(checkpoint_every, tmp_path):
    command = [sys.executable, "-c", BNEXP, "profile=tiny", "train.steps=1000", "log.progress_every=1"]
    command += [f"train.checkpoint_every={checkpoint_every}"]
    whole = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path / 'whole'}"], capture_output=True, timeout=300
    )
    assert whole.returncode == 0
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*command, f"hydra.run.dir={run_dir}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    began = (
        (lambda: (run_dir / "checkpoint.pt").exists())
        if checkpoint_every
        else (lambda: "step" in _log(run_dir))
    )
    deadline = time.time() + 120
    while not began() and time.time() < deadline:  # training has begun, or made its first checkpoint
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists()
    resumed = subprocess.run(
        [*command, f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0
    assert ("resuming from the checkpoint at step" in resumed.stderr + resumed.stdout) == bool(
        checkpoint_every
    )
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "whole", run_dir))
    assert a["series"] == b["series"] and a["final_test_acc"] == b["final_test_acc"]
    assert len(event_files(run_dir)) == (2 if checkpoint_every else 1)  # cut back at the checkpoint, or anew
    assert not (run_dir / "checkpoint.pt").exists()


def _log(run_dir) -> str:
    logs = list(run_dir.glob("*.log"))
    return logs[0].read_text() if logs else ""


def test_the_report_notes_runs_recorded_by_different_code_versions(tmp_path):
    def run(commit):
        provenance = {"bnexp": "0.1.0", "git_commit": commit, "git_dirty": False, "torch": "2.14.1"}
        return Run(tmp_path, {}, {"provenance": {**provenance, "device": "cpu"}})

    assert code_versions_note([run("a" * 40), run("a" * 40)]) == []
    (note,) = code_versions_note([run("a" * 40), run("a" * 40), run("b" * 40)])
    assert "2 versions of the code" in note
    assert "2 by bnexp 0.1.0 (git aaaaaaaa), torch 2.14.1; 1 by bnexp 0.1.0 (git bbbbbbbb)" in note


# ---- faults: each ends with a clear message and nothing finished lost -----------------------------------
def limited(max_bytes):
    """A child process whose files cannot grow beyond max_bytes: a full disk, as the writes see it (EFBIG;
    Python ignores SIGXFSZ, so the write raises instead of killing the process)."""
    resource = pytest.importorskip("resource")
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_a_full_disk_stops_the_run_with_a_message_and_the_same_command_finishes_it(tmp_path):
    command = [sys.executable, "-c", BNEXP, "profile=tiny", f"hydra.run.dir={tmp_path}"]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300, preexec_fn=limited(60_000))
    assert full.returncode == 2
    assert "bnexp: a file could not be written: File too large" in full.stderr
    assert "Traceback" not in full.stderr and not (tmp_path / "metrics.json").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and (tmp_path / "metrics.json").exists()
    assert len(event_files(tmp_path)) == 1  # the cut-off events were removed, not appended to


def test_a_full_disk_mid_sweep_loses_no_finished_run(tmp_path):
    assert sweep(tmp_path).returncode == 0
    finished = {p: p.read_bytes() for p in tmp_path.glob("*/metrics.json")}
    out = subprocess.run(
        [sys.executable, "-c", BNEXP, "-m", "profile=tiny", "norm=none,bn", "seed=0,1,2"]
        + [f"hydra.sweep.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limited(60_000),
    )
    assert out.returncode == 0  # the sweep went on, and its end counted the failed runs
    assert (
        "bnexp: a file could not be written" in out.stderr and "2 of 6 runs failed" in out.stdout + out.stderr
    )
    assert {p: p.read_bytes() for p in tmp_path.glob("*/metrics.json")} == finished


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_that_cannot_be_made_is_refused_with_a_message(key, tmp_path):
    (tmp_path / "a_file").write_text("")
    mode = ["-m", "seed=0,1"] if key == "hydra.sweep.dir" else []
    out = subprocess.run(
        [sys.executable, "-c", BNEXP, *mode, "profile=tiny", f"{key}={tmp_path / 'a_file' / 'runs'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"cannot be written to (Not a directory). Choose another with {key}=" in out.stderr


@pytest.mark.slow  # two sweeps of 1,000 steps; the single run's kill above is in the default run
@pytest.mark.parametrize("checkpoint_every", [0, 100])
def test_a_vectorized_sweep_killed_mid_training_resumes_to_the_uninterrupted_sweeps_results(
    checkpoint_every, tmp_path
):
    args = ["hydra/launcher=vectorized", "train.steps=1000", "log.progress_every=1"]
    args += [f"train.checkpoint_every={checkpoint_every}"]
    assert sweep(tmp_path / "whole", *args).returncode == 0
    killed = tmp_path / "killed"
    command = [sys.executable, "-c", BNEXP, "-m", "hydra/launcher=vectorized", "profile=tiny"]
    proc = subprocess.Popen(
        [*command, "norm=none,bn", "seed=0,1", f"hydra.sweep.dir={killed}", *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def began():
        if checkpoint_every:
            return any(killed.glob("*/checkpoint.pt"))
        return any("step" in _log(d) for d in killed.glob("*/"))

    deadline = time.time() + 120
    while not began() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list(killed.glob("*/metrics.json"))) < 4  # killed mid-sweep
    assert sweep(killed, *args).returncode == 0
    for run in (p for p in (tmp_path / "whole").iterdir() if p.is_dir()):
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (run, killed / run.name))
        assert a["series"] == b["series"], run.name
        assert not (killed / run.name / "checkpoint.pt").exists()
