"""End to end: the real `bnexp` command in a subprocess, as a user runs it (the vectorized launcher's sweep:
tests/test_vectorized.py; a claim's sweep into its report: tests/test_claims.py)."""

import json
import os
import pathlib
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BNEXP = str(pathlib.Path(sys.executable).parent / "bnexp")  # the installed console script


def bnexp(*args, cwd):
    return subprocess.run(
        [BNEXP, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=os.environ
    )


def test_a_single_run_writes_its_folder_and_says_where(tmp_path):
    out = bnexp("profile=tiny", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["final_test_acc"] > 0.5  # 10 classes: chance is 0.1
    ev = EventAccumulator(str(tmp_path / "run"))
    ev.Reload()
    assert [e.step for e in ev.Scalars("test/acc")] == [20, 40]
    assert f"tensorboard --logdir {tmp_path / 'run'}" in out.stdout + out.stderr


def test_a_sweep_names_each_run_folder_from_its_overrides_and_a_failing_run_does_not_stop_it(tmp_path):
    out = bnexp(
        "-m", "profile=tiny", "norm=none,bn", "data.batch_size=30,5000", "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    runs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert runs == [f"data.batch_size={b},norm={n}" for b in (30, 5000) for n in ("bn", "none")]
    finished = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert finished == ["data.batch_size=30,norm=bn", "data.batch_size=30,norm=none"]
    assert {
        json.loads((tmp_path / "sweep" / r / "metrics.json").read_text())["config"]["norm.name"]
        for r in finished
    } == {"none", "bn"}
    log = out.stdout + out.stderr
    assert "must be between 1 and the number of training examples" in log and "Traceback" not in log
    assert "2 of 4 runs failed" in log and "tensorboard --logdir" in log
    # HParams: at the root the experiment, of the one key the finished runs vary; per run its session
    (experiment,) = hparams_data(tmp_path / "sweep").values()
    assert [h.name for h in experiment.experiment.hparam_infos] == ["norm.name"]
    assert "hparam/final_test_acc" in [m.name.tag for m in experiment.experiment.metric_infos]
    for run in finished:
        session = hparams_data(tmp_path / "sweep" / run)["_hparams_/session_start_info"].session_start_info
        assert dict(session.hparams).keys() == {"norm.name"}
        assert session.hparams["norm.name"].string_value == run.rpartition("=")[2]


def hparams_data(folder) -> dict:
    """The HParams plugin's records in a folder's event files, by tag."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {
        tag: plugin_data_pb2.HParamsPluginData.FromString(acc.SummaryMetadata(tag).plugin_data.content)
        for tag in acc.summary_metadata
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "hparams"
    }


def test_a_mistyped_key_fails_before_any_work_with_hydras_message(tmp_path):
    out = bnexp("model.dept=4", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not override 'model.dept'" in out.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_users_mistake_gets_one_paragraph_not_a_traceback(tmp_path):
    out = bnexp("model.width=-1", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "bnexp: Out of range: model.width=-1 (must be at least 1)" in out.stderr
