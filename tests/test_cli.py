"""End to end: the real `bnexp` command in a subprocess, as a user runs it."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BNEXP = str(pathlib.Path(sys.executable).parent / "bnexp")  # the installed console script
TINY = ["train.steps=10", "train.eval_every=5", "log.stats_every=5", "log.hist_every=10", "device=cpu"]


def bnexp(*args, cwd):
    return subprocess.run(
        [BNEXP, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ
    )


def test_a_single_run_writes_its_folder_and_says_where(tmp_path):
    out = bnexp(*TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 10 and 0 <= metrics["final_test_acc"] <= 1
    ev = EventAccumulator(str(tmp_path / "run"))
    ev.Reload()
    assert "test/acc" in ev.Tags()["scalars"]
    assert f"tensorboard --logdir {tmp_path / 'run'}" in out.stdout + out.stderr


def test_a_sweep_names_each_run_folder_from_its_overrides(tmp_path):
    out = bnexp("-m", *TINY, "norm=none,bn", "optim.lr=0.5", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == [
        "norm=bn,optim.lr=0.5,train.eval_every=5,train.steps=10",
        "norm=none,optim.lr=0.5,train.eval_every=5,train.steps=10",
    ]
    assert {
        json.loads((tmp_path / "sweep" / r / "metrics.json").read_text())["config"]["norm.name"] for r in runs
    } == {"none", "bn"}
    assert "tensorboard --logdir" in out.stdout + out.stderr


def test_a_mistyped_key_fails_before_any_work_with_hydras_message(tmp_path):
    out = bnexp("model.dept=4", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not override 'model.dept'" in out.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "mistake,explained",
    [
        ("data=mnist", "data.download=true"),  # files not there
        ("model.width=-1", "model.width=-1 (must be at least 1)"),
    ],
)
def test_a_users_mistake_gets_one_paragraph_not_a_traceback(tmp_path, mistake, explained):
    out = bnexp(mistake, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert explained in out.stderr


def test_a_failing_run_does_not_stop_the_sweep(tmp_path):
    out = bnexp("-m", *TINY, "data.batch_size=30,5000", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (
        tmp_path / "sweep" / "data.batch_size=30,train.eval_every=5,train.steps=10" / "metrics.json"
    ).exists()
    assert "data.batch_size" in out.stderr and "Traceback" not in out.stderr  # the mistake, in one paragraph
    assert "1 of 2 runs failed" in out.stdout + out.stderr


def test_a_claim_sweep_whose_runs_all_fail_says_why_there_is_no_report(tmp_path):
    out = bnexp("-m", "experiment=affine", "seed=0", "optim.lr=-1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    assert "4 of 4 runs failed" in log and "no report for this sweep: Every run" in log
    assert "Traceback" not in log and not (tmp_path / "sweep" / "report.md").exists()
