"""The recurrent model (every norm, probes, per-step statistics, any length), the evaluation at other
lengths, the rnn claim's verdict logic on hand-made runs."""

import json
import pathlib

import pytest
import torch
from torch import nn

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.claims import rnn as claim
from bnexp.config import UserError
from bnexp.engine import change_length, train
from bnexp.models import RNN, PerStepNorm, Steps, build_model
from bnexp.norm import BatchNorm
from bnexp.records import Run

NORMS = ["none", "bn", "torch_bn", "ln", "gn"]


def rnn(make_cfg, norm, shape=(1, 12), *overrides):
    cfg = make_cfg("model=rnn", f"norm={norm}", "model.width=8", "norm.groups=4", *overrides)
    return build_model(cfg, shape, num_classes=10)


@pytest.mark.parametrize("per_step", [False, True])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("shape", [(1, 12), (3, 5), (1, 6, 4)])  # (C, L) sequences, (C, H, W) images
def test_every_norm_variant_trains_on_sequences_and_images(make_cfg, sgd_steps, norm, per_step, shape):
    torch.manual_seed(0)
    net = rnn(make_cfg, norm, shape, f"model.per_step_stats={per_step}", "model.depth=2")
    assert isinstance(net, RNN) and list(net.probes()) == ["layer1", "layer2"]
    sgd_steps(net, shape)
    assert all(p.grad is not None for p in net.parameters())


def test_probes_see_the_input_of_the_nonlinearity_at_every_step(make_cfg):
    net = rnn(make_cfg, "bn", (3, 7), "model.per_step_stats=true")
    seen = {}
    net.probes()["layer1"].register_forward_hook(lambda m, i, out: seen.__setitem__("layer1", out))
    net.train()
    net(torch.randn(32, 3, 7))
    out = seen["layer1"]
    assert out.shape == (32, 8, 7)  # (N, width, steps): units in dim 1, like every other probe
    # training-mode BN (γ = 1, β = 0): every unit is standardized over the batch at every step
    torch.testing.assert_close(out.mean(0), torch.zeros(8, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(8, 7), atol=1e-2, rtol=0)


def test_the_recurrence_is_h_t_equals_g_of_the_normalized_affine_map(make_cfg):
    net = rnn(make_cfg, "ln", (2, 5))
    layer = net.layers()["layer1"]
    x = torch.randn(4, 2, 5)
    h = torch.zeros(4, 8)
    for t in range(5):
        h = torch.tanh(layer.norm(layer.linear(torch.cat([x[:, :, t], h], 1))))
    torch.testing.assert_close(net(x), net.head(h))


def test_images_are_read_row_by_row():
    x = torch.randn(2, 3, 6, 4)  # (N, C, H, W)
    steps = Steps()(x)
    assert steps.shape == (2, 12, 6)  # H = 6 steps of C·W = 12 features
    torch.testing.assert_close(steps[:, :, 2], x[:, :, 2, :].flatten(1))
    seq = torch.randn(2, 3, 5)
    assert Steps()(seq) is seq


def test_per_step_statistics_are_really_per_step_and_share_gamma_and_beta(make_cfg):
    torch.manual_seed(0)
    net = rnn(make_cfg, "bn", (1, 4), "model.per_step_stats=true", "norm.momentum=null")
    norm = net.layers()["layer1"].norm
    assert isinstance(norm, PerStepNorm) and len(norm.steps) == 4
    assert all(isinstance(m, BatchNorm) for m in norm.steps)
    assert all(m.weight is norm.steps[0].weight and m.bias is norm.steps[0].bias for m in norm.steps)
    shared = rnn(make_cfg, "bn", (1, 4))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in shared.parameters())
    # inputs whose scale grows with the step: each step's statistics differ, and each step's running
    # averages (momentum null: the plain average of the batches seen) are that step's batch statistics
    captured = []
    for bn in norm.steps:
        bn.register_forward_pre_hook(lambda m, i: captured.append(i[0].detach().clone()))
    net.train()
    net(torch.randn(64, 1, 4) * torch.tensor([1.0, 10.0, 100.0, 1000.0]))
    for t, bn in enumerate(norm.steps):
        torch.testing.assert_close(bn.running_mean, captured[t].mean(0))
        torch.testing.assert_close(bn.running_var, captured[t].var(0))
        assert bn.num_batches_tracked == 1
    variances = [bn.running_var.mean().item() for bn in norm.steps]
    assert variances == sorted(variances) and variances[-1] > 100 * variances[0]
    assert net.layers()["layer1"].linear.bias is None  # redundant before BN


def test_steps_beyond_the_training_length_reuse_the_last_steps_statistics(make_cfg):
    torch.manual_seed(0)
    net = rnn(make_cfg, "bn", (1, 3), "model.per_step_stats=true")
    norm = net.layers()["layer1"].norm
    for t, bn in enumerate(norm.steps):
        bn.running_mean.fill_(t)
        bn.running_var.fill_(t + 1.0)
    net.eval()
    a = torch.randn(5, 8)
    for t in range(3, 7):
        torch.testing.assert_close(norm(a, t), norm.steps[2](a))
    torch.testing.assert_close(norm(a, 1), norm.steps[1](a))
    for length in (1, 2, 3, 7, 12):  # shorter and longer sequences run, in eval and in training mode
        assert net(torch.randn(5, 1, length)).shape == (5, 10)
    net.train()
    assert torch.isfinite(net(torch.randn(5, 1, 9))).all()


def test_per_step_and_shared_bn_train_identically(make_cfg):
    """Training normalizes each step by its own batch statistics either way; only the running averages
    differ."""
    nets = []
    for per_step in (False, True):
        torch.manual_seed(0)
        net = rnn(make_cfg, "bn", (1, 6), f"model.per_step_stats={per_step}")
        opt = torch.optim.SGD(net.parameters(), lr=0.5)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            x, y = torch.randn(16, 1, 6, generator=g), torch.randint(0, 10, (16,), generator=g)
            loss = nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        nets.append(net)
    shared, step = (dict(n.named_parameters()) for n in nets)
    for name, p in shared.items():
        other = step[name] if name in step else step[name.replace("norm.", "norm.steps.0.")]
        torch.testing.assert_close(p, other)


def test_rnn_rejects_flat_features_and_no_layers(make_cfg):
    with pytest.raises(UserError, match="model=mlp"):
        rnn(make_cfg, "bn", (3,))
    with pytest.raises(UserError, match="model.depth"):
        rnn(make_cfg, "bn", (1, 8), "model.depth=0")


# ---- other lengths in the run -----------------------------------------------------------------------------
def test_change_length_aligns_sequences_at_their_end(make_cfg):
    from bnexp.data import load_data

    data = load_data(make_cfg("data=digits").data)
    x = data.prepare(data.test_x[:5])  # (5, 1, 8, 8)
    torch.testing.assert_close(change_length(data, x, 5), x[:, :, 3:])
    longer = change_length(data, x, 11)
    torch.testing.assert_close(longer[:, :, 3:], x)
    blank = data.prepare(torch.zeros(1, 1, 1, 8, dtype=data.test_x.dtype))  # a raw 0: the background
    torch.testing.assert_close(longer[:, :, :3], blank.expand(5, 1, 3, 8))
    assert torch.equal(change_length(data, x, 8), x)


def test_a_run_records_its_accuracy_at_other_lengths(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=rnn",
        "model.width=8",
        "data=digits",
        "train.steps=6",
        "train.eval_every=3",
        "device=cpu",
        "train.eval_lengths=[4,8,12]",
        "model.per_step_stats=true",
        "log.stats_every=3",
    )
    metrics = train(cfg, str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["train_length"] == 8
    assert {k for k in saved if k.startswith("final_test_acc_length_")} == {
        f"final_test_acc_length_{n}" for n in (4, 8, 12)
    }
    assert saved["final_test_acc_length_8"] == metrics["final_test_acc"]  # the same test, by another path
    assert list(saved["series"]["act/layer1/p50"])  # the probe feeds the usual TensorBoard statistics


def test_testing_at_another_length_reads_the_test_sequences_made_that_long(make_cfg):
    from bnexp.data import load_data
    from bnexp.engine import evaluate
    from bnexp.step import initialized_model

    cfg = make_cfg("model=rnn", "model.width=8", "data=digits", "device=cpu")
    data = load_data(cfg.data)
    model = initialized_model(cfg, data, torch.device("cpu")).eval()
    for n in (4, 12):
        loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in data.eval_batches("test", 1000):
                logits = model(change_length(data, x, n))
                loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
                correct += int((logits.argmax(1) == y).sum())
        assert evaluate(model, data, "test", length=n) == (pytest.approx(loss / 450), correct / 450)


def test_other_lengths_need_a_model_that_reads_any_length(make_cfg, tmp_path):
    with pytest.raises(UserError, match="model=rnn"):
        train(make_cfg("train.steps=2", "train.eval_lengths=[4]", "device=cpu"), str(tmp_path))


# ---- verdict logic --------------------------------------------------------------------------------------
def fake(norm, per_step, seed, accs, train_length=8):
    """A finished run with test accuracy accs[n] at each length n (accs[train_length]: final_test_acc)."""
    metrics = dict(
        final_test_acc=accs[train_length],
        diverged=False,
        train_length=train_length,
        final_test_acc_batch_stats=0.9,
        series={"test/acc": [[50, accs[train_length] / 2], [100, accs[train_length]]]},
        **{f"final_test_acc_length_{n}": a for n, a in accs.items() if n != train_length},
    )
    config = {
        "claim": "rnn",
        "seed": seed,
        "norm.name": norm,
        "model.per_step_stats": per_step,
        "model.name": "rnn",
    }
    return Run(pathlib.Path("."), config, metrics)


def rnn_sweep(step_accs, shared_accs, seeds=3):
    """step_accs(seed), shared_accs(seed): {length: accuracy} of per-step and shared BN."""
    plain = {4: 0.7, 8: 0.97, 16: 0.9}
    return [
        fake(norm, per_step, s, accs)
        for s in range(seeds)
        for norm, per_step, accs in (
            ("bn", True, step_accs(s)),
            ("bn", False, shared_accs(s)),
            ("none", False, plain),
            ("none", True, plain),
            ("ln", False, plain),
            ("ln", True, plain),
        )
    ]


def test_rnn_is_supported_when_per_step_statistics_win_and_extend_to_longer_sequences():
    finding = CLAIMS["rnn"].analyze(
        rnn_sweep(lambda s: {4: 0.6, 8: 0.98, 16: 0.92}, lambda s: {4: 0.7, 8: 0.95, 16: 0.92})
    )
    assert finding.verdict == SUPPORTED
    assert [row["variant"] for row in finding.table] == list(claim.VARIANTS.values())
    assert not any("Warning" in n for n in finding.notes)


def test_rnn_refuses_a_sweep_that_tested_no_longer_sequence():
    # part (2) is about lengths beyond training: without one it cannot hold, nor fail
    runs = [
        fake(norm, per_step, seed, {4: 0.7, 8: 0.95})
        for seed in range(3)
        for norm, per_step in (("bn", True), ("bn", False), ("none", False), ("ln", False))
    ]
    with pytest.raises(ValueError, match="no sequence longer than the training length 8"):
        CLAIMS["rnn"].analyze(runs)


def test_rnn_is_not_supported_when_per_step_statistics_do_not_help():
    finding = CLAIMS["rnn"].analyze(
        rnn_sweep(lambda s: {4: 0.7, 8: 0.955, 16: 0.92}, lambda s: {4: 0.7, 8: 0.95, 16: 0.92})
    )
    assert finding.verdict == NOT_SUPPORTED


def test_rnn_is_not_supported_when_reusing_the_last_statistics_fails_on_longer_sequences():
    finding = CLAIMS["rnn"].analyze(
        rnn_sweep(lambda s: {4: 0.7, 8: 0.98, 16: 0.5}, lambda s: {4: 0.7, 8: 0.95, 16: 0.9})
    )
    assert finding.verdict == NOT_SUPPORTED


def test_rnn_is_inconclusive_when_seeds_disagree():
    finding = CLAIMS["rnn"].analyze(
        rnn_sweep(lambda s: {4: 0.7, 8: 0.98 if s else 0.95, 16: 0.92}, lambda s: {4: 0.7, 8: 0.95, 16: 0.92})
    )
    assert finding.verdict == INCONCLUSIVE


def test_rnn_warns_when_per_step_stats_changes_a_network_without_statistics():
    runs = rnn_sweep(lambda s: {4: 0.6, 8: 0.98, 16: 0.92}, lambda s: {4: 0.7, 8: 0.95, 16: 0.92})
    runs[3].metrics["final_test_acc"] = 0.5  # ("none", per_step=True) of seed 0
    assert any("Warning" in n for n in CLAIMS["rnn"].analyze(runs).notes)


def test_the_rnn_report(reported):
    runs = rnn_sweep(lambda s: {4: 0.6, 8: 0.98, 16: 0.92}, lambda s: {4: 0.7, 8: 0.95, 16: 0.92})
    assert reported("rnn", runs)["verdict"] == SUPPORTED
