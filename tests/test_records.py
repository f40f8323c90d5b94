"""The run format (bnexp.records): what a run folder holds, read back as written, and its provenance."""

import importlib.metadata
import json
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from bnexp import records
from bnexp.engine import train


def test_metrics_json_holds_the_config_the_provenance_the_metrics_and_every_curve(make_cfg, tmp_path):
    metrics = train(make_cfg("profile=tiny", "norm=gn"), str(tmp_path))
    saved = json.loads((tmp_path / records.METRICS_FILE).read_text())
    assert saved["config"] == records.flat_config(make_cfg("profile=tiny", "norm=gn"))
    assert {k: saved[k] for k in metrics} == metrics
    assert saved["provenance"]["bnexp"] == importlib.metadata.version("bnexp")
    assert saved["provenance"]["torch"] == torch.__version__ and saved["provenance"]["device"] == "cpu"
    run = records.Run(tmp_path, saved["config"], saved)
    assert run.test_acc == metrics["final_test_acc"] and run.steps == run.steps_planned == 40
    assert run.batch_stats_acc is None  # GroupNorm has no running statistics
    steps, values = records.curve(run, records.TEST_ACC)
    assert steps.tolist() == [20, 40] and values[-1] == metrics["final_test_acc"]


def test_a_sweep_is_read_back_run_by_run_and_a_run_without_metrics_counts_as_failed(make_cfg, tmp_path):
    for name, overrides in (("ok", ["profile=tiny"]), ("cut", ["profile=tiny", "seed=1"])):
        cfg = make_cfg(*overrides)
        train(cfg, str(tmp_path / name))
        (tmp_path / name / ".hydra").mkdir()
        OmegaConf.save(cfg, tmp_path / name / ".hydra" / "config.yaml")  # as Hydra saves a job's config
    (tmp_path / "cut" / records.METRICS_FILE).write_text('{"config": ')  # cut short by a kill
    cut, ok = records.load_runs(tmp_path)  # in folder order
    assert ok.metrics is not None and not ok.diverged and ok["seed"] == 0
    assert (
        cut.metrics is None and cut.diverged and cut.test_acc == 0.0 and cut["seed"] == 1
    )  # config from .hydra


def test_non_finite_values_are_written_as_null_and_read_back_as_nan(tmp_path):
    records.write_metrics(
        tmp_path,
        {"seed": 0},
        {},
        {"final_test_loss": None},
        {"train/loss": [[1, 0.5], [2, float("inf")], [3, float("nan")]]},
    )
    run = records.Run(tmp_path, {}, json.loads((tmp_path / records.METRICS_FILE).read_text()))
    assert run.series["train/loss"] == [[1, 0.5], [2, None], [3, None]]
    steps, values = records.curve(run, "train/loss")
    assert steps.tolist() == [1, 2, 3] and values[0] == 0.5 and all(v != v for v in values[1:])


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def test_provenance_names_the_commit_and_whether_the_code_differs_from_it(tmp_path):
    package = tmp_path / "src" / "bnexp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (tmp_path / "README.md").write_text("a\n")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    head = git(tmp_path, "rev-parse", "HEAD")

    def fresh():
        records.checkout.cache_clear()
        return records.checkout(package)

    assert fresh() == {"git_commit": head, "git_dirty": False}
    (tmp_path / "README.md").write_text("b\n")  # not code: still the commit's code
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    (package / "cached.pyc").write_text("")  # ignored: not code either
    assert fresh() == {"git_commit": head, "git_dirty": False}
    (package / "new.py").write_text("")  # a module the commit lacks
    assert fresh() == {"git_commit": head, "git_dirty": True}
    (package / "new.py").unlink()
    (package / "__init__.py").write_text("x = 1\n")  # a module that differs from the commit's
    assert fresh() == {"git_commit": head, "git_dirty": True}
    copy = tmp_path / "venv" / "bnexp"  # an installed copy inside the checkout, untracked
    copy.mkdir(parents=True)
    (copy / "__init__.py").write_text("")
    records.checkout.cache_clear()
    assert records.checkout(copy) == {"git_commit": None, "git_dirty": None}


def test_provenance_in_words():
    assert (
        records.describe(
            {
                "bnexp": "0.1.0",
                "git_commit": "1a2b3c4d5e6f",
                "git_dirty": True,
                "torch": "2.5",
                "device": "cpu",
            }
        )
        == "bnexp 0.1.0 (git 1a2b3c4d, uncommitted changes), torch 2.5, on cpu"
    )
    assert (
        records.describe({"bnexp": "0.1.0", "git_commit": None, "torch": "2.5"}) == "bnexp 0.1.0, torch 2.5"
    )


def test_layers_are_listed_in_depth_order_with_the_head_last():
    series = {records.ics(n, "cos"): [] for n in ("head", "layer10", "layer2", "layer1")}
    assert records.layers_logged(series, "ics") == ["layer1", "layer2", "layer10", "head"]


@pytest.mark.parametrize(
    "tag,spelled",
    [
        (records.act("layer2", "unit0/p15"), "act/layer2/unit0/p15"),
        (records.act("layer2"), "act/layer2"),
        (records.grad_bias("layer1"), "grad/layer1/bias"),
        (records.landscape("loss_range"), "landscape/loss_range"),
        (records.acc_at_length(12), "final_test_acc_length_12"),
    ],
)
def test_tags_and_keys_keep_the_names_earlier_sweeps_were_written_with(tag, spelled):
    assert tag == spelled
