"""Vectorized sweeps (bnexp.vectorized, hydra/launcher=vectorized): K runs trained as one program record
what each would have recorded if trained alone."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp.models import build_model
from bnexp.train import train
from bnexp.vectorized import _stacked, fold, plan_groups, train_vectorized, unsupported_reason

TINY = ["train.steps=40", "train.eval_every=20", "log.stats_every=10", "log.hist_every=20", "device=cpu"]
# Measured: at most ~2e-6 absolute and ~5e-5 relative apart after 40 steps at lr 0.5 (float32; the
# batched matmuls sum in another order than the eager ones).
CLOSE = dict(rel=1e-4, abs=1e-5)

# The `bnexp` command with the launcher registered explicitly: Hydra's plugin scan cannot list packages
# of a default editable install (see hydra_plugins.bnexp_vectorized.register).
BNEXP = (
    "from hydra_plugins.bnexp_vectorized import register; register(); from bnexp.__main__ import main; main()"
)


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def assert_same_records(sequential, vectorized):
    """metrics.json but its series (same_series checks those) and the TensorBoard tags and steps."""
    a = json.loads((sequential / "metrics.json").read_text())
    b = json.loads((vectorized / "metrics.json").read_text())
    assert a.keys() == b.keys() and a["config"] == b["config"]
    for key in a.keys() - {"series", "config", "wall_time_s"}:
        assert b[key] == (
            a[key] if a[key] is None or isinstance(a[key], (bool, str)) else pytest.approx(a[key], **CLOSE)
        ), key
    ea, eb = events(sequential), events(vectorized)
    assert ea.Tags()["scalars"] == eb.Tags()["scalars"] and ea.Tags()["histograms"] == eb.Tags()["histograms"]
    for tag in ea.Tags()["scalars"]:
        assert [e.step for e in eb.Scalars(tag)] == [e.step for e in ea.Scalars(tag)], tag
    for tag in ea.Tags()["histograms"]:
        assert [e.step for e in eb.Histograms(tag)] == [e.step for e in ea.Histograms(tag)], tag


CASES = {
    # seeds and learning rates: the common sweep
    "sgd": (
        ["optim=sgd"],
        [["seed=0", "optim.lr=0.1"], ["seed=1", "optim.lr=0.5"], ["seed=2", "optim.lr=0.5"]],
    ),
    # per-run momentum, weight decay and init scale, through the momentum optimizer
    "momentum": (
        ["optim=momentum", "init=normal", "optim.lr=0.05"],
        [
            ["optim.momentum=0.9", "init.std=0.1"],
            ["optim.momentum=0.5", "optim.weight_decay=0.01", "init.std=0.3", "seed=1"],
        ],
    ),
    # momentum and weight decay shared by the runs (a seeds-only sweep): taken as numbers, not per-run
    # factors;
    # BN with its own eps and momentum, which the folded BN must keep
    "shared": (
        ["optim=momentum", "optim.weight_decay=0.01", "norm.eps=1e-3", "norm.momentum=0.5"],
        [["seed=0"], ["seed=1"]],
    ),
    # one run diverges (recorded as diverged where train.py stops it); the others go on undisturbed
    "divergence": (
        ["norm=none", "model.activation=relu", "log.stats_every=5"],
        [["optim.lr=0.1"], ["optim.lr=1e3"], ["optim.lr=0.3", "seed=1"]],
    ),
    # the CNN: grouped convolutions, BN over (N, C, H, W), pooling, dropout masks over (N, C, H, W). (At lr
    # 0.5
    # a near-tie in a max-pooling window flips after ~30 steps and the runs part: round-off, amplified.)
    "cnn": (
        ["model=cnn", "model.channels=[4,8]", "model.width=16", "model.dropout=0.2"],
        [["seed=0"], ["seed=1", "optim.lr=0.05"]],
    ),
    # dropout: each run's own masks, from its own generator, as its global RNG would draw them
    "dropout": (["model.dropout=0.3"], [["seed=0"], ["seed=1", "optim.lr=0.5"], ["seed=2"]]),
    # the per-example norms
    # (seeds only: at lr 0.5 round-off moves two neighbouring values of a percentile past each other by step
    # 40, and the percentile then is the neighbour, ~1e-4 away)
    "ln": (["norm=ln"], [["seed=0"], ["seed=1"]]),
    "gn": (["norm=gn"], [["seed=0"], ["seed=1"]]),
}


@pytest.mark.parametrize("norm", ["bn", "torch_bn", "none", "ln", "gn"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_a_folded_network_computes_every_run_side_by_side(model, norm, make_cfg):
    # (Two-step comparisons of whole runs are above; this one checks every layer type in one forward and
    # backward, free of the chaos that 40 steps of a tiny GroupNorm CNN amplify round-off into.)
    cfg = make_cfg(
        f"model={model}",
        f"norm={norm}",
        "model.channels=[4,8]",
        "model.width=16",
        "norm.eps=1e-2",
        "norm.momentum=0.5",
    )  # not torch's defaults: the folded norms must take them over
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model(cfg, (1, 8, 8), 10))
        for p in models[-1].parameters():
            torch.nn.init.normal_(p, 0.5, 0.5)  # γ, β and biases away from 1 and 0: a mix-up would show
    folded = fold(models)
    x = torch.randn(3, 6, 1, 8, 8)  # (K, B, C, H, W)
    ys = folded(x.transpose(0, 1).reshape(6, 3, 8, 8)).view(6, 3, 10).transpose(0, 1)
    ys.sum().backward()
    for k, model in enumerate(models):
        y = model(x[k])
        y.sum().backward()
        assert near(ys[k], y)
        for name, p in model.named_parameters():
            assert near(_stacked(folded.get_parameter(name).grad, 3)[k], p.grad), name
        for name, b in model.named_buffers():  # BN's running statistics, updated by the same batch
            assert near(_stacked(folded.get_buffer(name), 3)[k], b), name


def test_a_folded_network_keeps_the_models_dtype(make_cfg):
    cfg = make_cfg("model=cnn", "model.channels=[4,8]", "model.width=16")
    models = [build_model(cfg, (1, 8, 8), 10).double() for _ in range(2)]
    folded = fold(models)
    assert all(t.dtype == torch.float64 for t in folded.parameters())
    x = torch.randn(2, 5, 1, 8, 8, dtype=torch.float64)
    ys = folded(x.transpose(0, 1).reshape(5, 2, 8, 8)).view(5, 2, 10).transpose(0, 1)
    assert all(torch.allclose(ys[k], model(x[k])) for k, model in enumerate(models))


def near(a, b):
    """Equal up to float32 round-off, relative to the tensor's scale (sums of many terms cancel to ~0 in
    places: BN's dβ behind a ReLU); a run mixed up with another would be off by the scale itself."""
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-4 * (1 + b.abs().max().item()))


@pytest.mark.parametrize("case", CASES)
def test_vectorized_runs_record_what_sequential_runs_record(case, make_cfg, same_series, tmp_path):
    common, runs = CASES[case]
    cfgs = [make_cfg(*TINY, *common, *run) for run in runs]
    assert all(unsupported_reason(c) is None for c in cfgs) and plan_groups(cfgs) == [list(range(len(cfgs)))]
    sequential = [train(cfg, str(tmp_path / f"seq{k}")) for k, cfg in enumerate(cfgs)]
    vectorized = train_vectorized(cfgs, [str(tmp_path / f"vec{k}") for k in range(len(cfgs))])
    for k, (s, v) in enumerate(zip(sequential, vectorized)):
        assert s.keys() == v.keys()
        assert (s["diverged"], s["diverged_step"], s["steps"]) == (
            v["diverged"],
            v["diverged_step"],
            v["steps"],
        )
        same_series(tmp_path / f"seq{k}", tmp_path / f"vec{k}", **CLOSE)
        assert_same_records(tmp_path / f"seq{k}", tmp_path / f"vec{k}")
    if case == "divergence":
        assert [m["diverged"] for m in vectorized] == [False, True, False]


def test_grouping_rule(make_cfg):
    cfgs = [
        make_cfg(*TINY, *o)
        for o in (
            ["seed=0"],
            ["seed=1", "optim.lr=0.5"],
            ["norm=none"],
            ["seed=2"],
            ["model.dropout=0.1"],
            ["model.dropout=0.1", "seed=1"],
            ["optim=adam"],
            ["init=normal", "init.std=0.1"],
            ["init=normal", "init.std=1"],
            ["seed=3", "optim.lr=-1"],
        )
    ]
    # shape-free differences share a program; anything else (norm), or unsupported runs, do not
    assert plan_groups(cfgs) == [[0, 1, 3], [2], [4, 5], [6], [7, 8], [9]]
    assert plan_groups(cfgs, max_batch=2) == [[0, 1], [2], [3], [4, 5], [6], [7, 8], [9]]
    assert "adam" in unsupported_reason(cfgs[6])
    assert "out of its range" in unsupported_reason(cfgs[9])  # alone, it fails without failing the others


def run_bnexp(tmp_path, *args):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            BNEXP,
            "-m",
            "hydra/launcher=vectorized",
            *args,
            "train.steps=10",
            "train.eval_every=5",
            "log.stats_every=5",
            "log.hist_every=10",
            "device=cpu",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_a_sweep_through_the_vectorized_launcher_writes_one_folder_per_run(tmp_path):
    output = run_bnexp(tmp_path, "seed=0,1", "optim.lr=0.1,0.5")
    assert "as 1 programs (1 vectorized)" in output
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert runs == [
        f"optim.lr={lr},seed={s},train.eval_every=5,train.steps=10" for lr in (0.1, 0.5) for s in (0, 1)
    ]
    for r in runs:
        metrics = json.loads((tmp_path / r / "metrics.json").read_text())
        assert metrics["steps"] == 10 and [s for s, _ in metrics["series"]["test/acc"]] == [5, 10]
        assert f"optim.lr={metrics['config']['optim.lr']}" in r and f"seed={metrics['config']['seed']}" in r
        assert (tmp_path / r / ".hydra" / "overrides.yaml").exists()
        assert "test/acc" in events(tmp_path / r).Tags()["scalars"]


def test_programs_run_in_parallel_worker_processes_and_record_the_same(tmp_path):
    sweep = ["seed=0,1", "optim=sgd,adam"]  # one vectorized program (sgd) and two single runs (adam)
    output = run_bnexp(tmp_path / "parallel", "hydra.launcher.n_jobs=2", *sweep)
    assert "as 3 programs (1 vectorized)" in output
    run_bnexp(tmp_path / "serial", *sweep)
    runs = sorted(p.name for p in (tmp_path / "serial").iterdir() if p.is_dir())
    assert len(runs) == 4 and sorted(p.name for p in (tmp_path / "parallel").iterdir() if p.is_dir()) == runs
    for r in runs:
        serial = json.loads((tmp_path / "serial" / r / "metrics.json").read_text())
        parallel = json.loads((tmp_path / "parallel" / r / "metrics.json").read_text())
        assert parallel["series"] == serial["series"], r  # the same computation, one thread each: bit for bit


def test_a_users_mistake_in_a_program_fails_its_runs_and_the_sweep_goes_on(tmp_path):
    # norm.groups=7 does not divide the 100 units: both runs of the program fail, as each alone would
    output = run_bnexp(tmp_path, "seed=0,1", "norm=gn", "norm.groups=7")
    assert "bnexp: norm.groups=7 does not divide" in output and "Traceback" not in output
    assert "2 of 2 runs failed" in output  # the end-of-sweep report still ran
    assert not list(tmp_path.glob("*/metrics.json"))


@pytest.mark.parametrize("unsupported", ["optim=adam", "hydra.job.chdir=true"])
def test_runs_that_cannot_be_vectorized_fall_back_to_the_plain_runner(tmp_path, unsupported):
    output = run_bnexp(tmp_path, "seed=0,1", unsupported)
    assert "as 2 programs (0 vectorized)" in output
    runs = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2
    for r in runs:
        assert json.loads((tmp_path / r / "metrics.json").read_text())["steps"] == 10
