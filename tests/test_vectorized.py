"""Vectorized sweeps (bnexp.vectorized, hydra/launcher=vectorized): K runs trained as one program record
what each would have recorded if trained alone."""

import json
import os
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp.engine import train, train_runs
from bnexp.models import build_model
from bnexp.vectorized import _stacked, fold, plan_groups, unsupported_reason

TINY = ["profile=tiny"]  # 40 steps: statistics every 10, evaluations and histograms every 20
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
    assert a.keys() == b.keys() and a["config"] == b["config"] and a["provenance"] == b["provenance"]
    for key in a.keys() - {"series", "config", "provenance", "wall_time_s"}:
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
    # the probe points observed on a fixed held-out batch, in eval mode (log.probe_batch)
    "probe batch": (["log.probe_batch=50"], [["seed=0"], ["seed=1", "optim.lr=0.5"]]),
    # one run diverges (recorded as diverged where it would stop alone); the others go on undisturbed
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
    # precise BN statistics at each evaluation, their pass's dropout masks drawn as the eager run draws them
    "precise bn": (["model.dropout=0.2", "eval.precise_bn_batches=5"], [["seed=0"], ["seed=1"]]),
    # sharpness measured for every run on its own model, its limit from the run's own learning rate
    "sharpness": (
        ["measure.sharpness_every=20", "measure.sharpness_batch=100", "measure.sharpness_tol=1e-2"],
        [["seed=0"], ["seed=1", "optim.lr=0.5"]],
    ),
    # dropout: each run's own masks, from its own generator, as its global RNG would draw them
    "dropout": (["model.dropout=0.3"], [["seed=0"], ["seed=1", "optim.lr=0.5"], ["seed=2"]]),
    # dropout only where no BN follows (the last hidden layer): one mask per step, as the eager run draws it
    "dropout not before bn": (
        ["model.dropout=0.3", "model.dropout_before_bn=false"],
        [["seed=0"], ["seed=1"]],
    ),
    # the per-example norms
    # (seeds only: at lr 0.5 round-off moves two neighbouring values of a percentile past each other by step
    # 40,
    # and the percentile then is the neighbour, ~1e-4 away)
    # batch renorm's schedule counted in each run's batches: plain BN, then the clips relaxing, then open
    "batch_renorm": (
        ["norm=batch_renorm", "norm.warmup=5", "norm.r_max=2", "norm.d_max=1", "norm.r_max_at=20"],
        [["seed=0"], ["seed=1"]],
    ),
    "ln": (["norm=ln"], [["seed=0"], ["seed=1"]]),
    "gn": (["norm=gn"], [["seed=0"], ["seed=1"]]),
}


NORM_CASES = {
    name: [f"norm={name}"] for name in ["bn", "torch_bn", "none", "ln", "gn"]
} | {  # r and d at work from the first batch, one of each clipped
    "batch_renorm": ["norm=batch_renorm", "norm.warmup=0", "norm.r_max=1.5", "norm.d_max=0.2"],
    "ghost_bn": ["norm=bn", "norm.ghost_batch_size=2"],  # the batch of 6 in three ghost batches
}


@pytest.mark.parametrize("norm", NORM_CASES)
@pytest.mark.parametrize(
    "model",
    [
        ["model=mlp"],
        ["model=cnn"],
        ["model=cnn", "model.norm_fc=false", "model.activation=linearized_sigmoid"],
        ["model=cnn", "model.norm_position=post"],
    ],
    ids=["mlp", "cnn", "cnn-conv-norm-only-linearized", "cnn-norm-after-g"],
)
def test_a_folded_network_computes_every_run_side_by_side(model, norm, make_cfg):
    # (Two-step comparisons of whole runs are above; this one checks every layer type in one forward and
    # backward, free of the chaos that 40 steps of a tiny GroupNorm CNN amplify round-off into.)
    cfg = make_cfg(
        *model,
        *NORM_CASES[norm],
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
    # A random upstream gradient: through a BN, the gradient of a plain sum over the batch is zero.
    dy = torch.randn(3, 6, 10)
    ys.backward(dy)
    for k, model in enumerate(models):
        y = model(x[k])
        y.backward(dy[k])
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
    vectorized = train_runs(cfgs, [str(tmp_path / f"vec{k}") for k in range(len(cfgs))])
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


def test_a_budget_per_model_is_folded_like_any_step_budget(make_cfg):
    assert unsupported_reason(make_cfg("device=cpu", "+train.steps_by_model.cnn=3")) is None


def test_a_sweep_config_with_a_working_folder_per_job_is_trained_run_by_run():
    """hydra.job.chdir=true: a program's runs share one process, hence one working folder."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra.job.chdir=true"], return_hydra_config=True)
    assert "hydra.job.chdir=true" in unsupported_reason(cfg)


def test_a_vectorized_sweep_trains_its_programs_in_parallel_and_each_run_records_what_it_would_alone(
    make_cfg, tmp_path
):
    """One sweep through the launcher, two worker processes: the SGD runs of each norm as one program of two,
    the Adam runs one by one (no program can train them); norm.groups=7 does not divide GroupNorm's 100 units,
    so those four runs fail, as each alone would, with the message and not a traceback, and the sweep goes
    on."""
    sweep = ["seed=0,1", "optim=sgd,adam", "norm=bn,gn", "norm.groups=7"]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            BNEXP,
            "-m",
            "hydra/launcher=vectorized",
            "hydra.launcher.n_jobs=2",
            "profile=tiny",
            *sweep,
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    log = out.stdout + out.stderr
    assert "as 6 programs (2 vectorized)" in log
    assert "bnexp: norm.groups=7 does not divide" in log and "Traceback" not in log
    assert "4 of 8 runs failed" in log  # the end-of-sweep report still ran
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert folders == [
        f"norm.groups=7,norm={n},optim={o},seed={s}"
        for n in ("bn", "gn")
        for o in ("adam", "sgd")
        for s in (0, 1)
    ]
    assert not list(tmp_path.glob("norm.groups=7,norm=gn,*/metrics.json"))
    # The same runs in this process, one thread each as there: the same computation, bit for bit.
    for optim in ("sgd", "adam"):
        cfgs = [
            make_cfg("profile=tiny", f"optim={optim}", "norm=bn", "norm.groups=7", f"seed={s}")
            for s in (0, 1)
        ]
        dirs = [str(tmp_path / "here" / f"{optim}{s}") for s in (0, 1)]
        alone = train_runs(cfgs, dirs) if optim == "sgd" else [train(c, d) for c, d in zip(cfgs, dirs)]
        for s, metrics in enumerate(alone):
            swept = json.loads(
                (tmp_path / f"norm.groups=7,norm=bn,optim={optim},seed={s}" / "metrics.json").read_text()
            )
            assert (
                swept["series"]
                == json.loads((tmp_path / "here" / f"{optim}{s}" / "metrics.json").read_text())["series"]
            )
            assert swept["final_test_acc"] == metrics["final_test_acc"] and swept["config"]["seed"] == s
            assert (
                tmp_path / f"norm.groups=7,norm=bn,optim={optim},seed={s}" / ".hydra" / "overrides.yaml"
            ).exists()


def test_parallel_programs_take_the_visible_gpus_in_turn():
    from hydra_plugins.bnexp_vectorized.vectorized_launcher import gpu_for

    assert [gpu_for(slot, 3) for slot in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert gpu_for(5, 1) is None and gpu_for(0, 0) is None  # one GPU or none: torch's default device
