"""The recurrent model (every norm, probes, per-step statistics, any length), the evaluation at other
lengths, the rnn claim's verdict logic on hand-made runs."""

import json
import pathlib

import pytest
import torch

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
        h = torch.tanh(layer.norm(layer.linear(torch.cat([x[:, :, t], h], 1)), t))
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


def test_pooled_statistics_weigh_every_step_the_same(make_cfg):
    net = rnn(make_cfg, "bn", (1, 3), "model.per_step_stats=true", "norm.eps=1e-12")
    norm = net.layers()["layer1"].norm
    means, variances = (0.0, 2.0, 4.0), (1.0, 1.0, 4.0)
    for bn, m, v in zip(norm.steps, means, variances):
        bn.running_mean.fill_(m)
        bn.running_var.fill_(v)
    net.eval()
    a = torch.randn(5, 8)
    with net.pooled_statistics():
        # the mixture of the three steps: mean 2, variance (1 + 1 + 4)/3 + (4 + 0 + 4)/3 = 14/3, at every step
        for t in (0, 2, 5):
            torch.testing.assert_close(norm(a, t), (a - 2.0) / (14 / 3) ** 0.5)
    torch.testing.assert_close(norm(a, 1), a - 2.0)  # and per step again outside
    assert net.pools_statistics
    assert not rnn(make_cfg, "ln", (1, 3), "model.per_step_stats=true").pools_statistics  # nothing to pool


def test_shared_bn_normalizes_every_step_of_a_training_batch_by_its_statistics_pooled_over_steps(make_cfg):
    torch.manual_seed(0)
    net = rnn(make_cfg, "bn", (1, 4), "norm.momentum=null", "norm.gamma_init=1.0")
    layer = net.layers()["layer1"]
    w_in, w_rec = layer.linear.weight.split([1, 8], dim=1)
    x = torch.randn(32, 1, 4) * torch.tensor([1.0, 3.0, 5.0, 7.0])  # each step's scale its own
    bn = layer.norm.norm

    def unroll(mean, var):  # by hand: every step normalized by the same statistics (γ = 1, β = 0)
        h, summed = torch.zeros(32, 8), []
        for t in range(4):
            summed.append(x[:, :, t] @ w_in.t() + h @ w_rec.t())  # the summed input, before the norm
            h = torch.tanh((summed[-1] - mean) / torch.sqrt(var + bn.eps))
        return torch.stack(summed, 1).flatten(0, 1), h

    # the first batch's first pass normalized by the running averages (0 and 1), then the statistics of its
    # summed inputs over all steps
    first, _ = unroll(torch.zeros(8), torch.ones(8))
    mean, var = first.mean(0), first.var(0, unbiased=False)
    _, h = unroll(mean, var)
    net.train()
    torch.testing.assert_close(net(x), net.head(h))
    # momentum null: the running averages are the plain average of the batches' pooled statistics
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, first.var(0))  # unbiased, over the 32 × 4 values
    # the next batch's first pass is normalized by this batch's statistics; its raw summed inputs, whose
    # statistics differ from those of the normalized ones, set the statistics of its real pass
    second, _ = unroll(mean, var)
    normalized = (second - mean) / torch.sqrt(var + bn.eps)
    assert not torch.allclose(second.var(0), normalized.var(0), rtol=0.1)
    _, h = unroll(second.mean(0), second.var(0, unbiased=False))
    torch.testing.assert_close(net(x), net.head(h))
    torch.testing.assert_close(bn.running_mean, (mean + second.mean(0)) / 2)  # once per batch, not per step
    torch.testing.assert_close(bn.running_var, (first.var(0) + second.var(0)) / 2)
    net.eval()  # at test: the running averages at every step
    torch.testing.assert_close(net(x), net.head(unroll(bn.running_mean, bn.running_var)[1]))


def test_shared_statistics_carry_bns_gradient_through_each_steps_batch_moments(make_cfg):
    # One step's batch a (N = 6, one unit), the shared statistics μ = 1, σ² = 4 (ε = 0), γ = 2: the value
    # is γ(a − 1)/2; the gradient is BN's at this step times r = σ_t/2, (g − mean g − x̂·mean(g x̂))/2 with
    # g = γ·dy. Constant statistics would give γ·dy/2 instead, and a uniform upstream gradient would move a.
    shared = build_model(make_cfg("model=rnn", "norm=bn", "model.width=1", "norm.eps=0"), (1, 3), 10)
    norm = shared.layers()["layer1"].norm
    with torch.no_grad():
        norm.norm.weight.fill_(2.0)
    norm.train().pooled_mean.fill_(1.0), norm.pooled_var.fill_(4.0)
    a = torch.tensor([[0.0], [1.0], [2.0], [4.0], [-1.0], [3.0]], requires_grad=True)
    y = norm(a, 0)
    torch.testing.assert_close(y, 2 * (a.detach() - 1) / 2)
    dy = torch.tensor([[1.0], [0.5], [-2.0], [0.0], [3.0], [1.0]])
    y.backward(dy)
    x_hat = (a.detach() - a.detach().mean()) / a.detach().std(unbiased=False)
    g = 2 * dy
    torch.testing.assert_close(a.grad, (g - g.mean() - x_hat * (g * x_hat).mean()) / 2)
    a.grad = None
    norm(a, 0).backward(torch.ones(6, 1))  # a shift of every value: BN's gradient ignores it
    torch.testing.assert_close(a.grad, torch.zeros(6, 1))


def test_crops_are_windows_of_consecutive_steps_each_example_its_own():
    torch.manual_seed(0)
    steps = Steps(crop=3).train()
    x = torch.arange(10.0).expand(64, 2, 10) + 100 * torch.arange(2.0)[:, None]  # step t holds t (+100)
    windows = steps(x)
    assert windows.shape == (64, 2, 3)
    starts = windows[:, 0, 0]
    torch.testing.assert_close(windows[:, 0], starts[:, None] + torch.arange(3.0))
    torch.testing.assert_close(windows[:, 1], windows[:, 0] + 100)  # the same window in every channel
    assert set(starts.tolist()) == set(range(8))  # every start 0..7 drawn among 64 examples
    assert torch.equal(steps.eval()(x), x)  # tested whole


def test_crops_set_the_training_length_and_the_per_step_statistics(make_cfg):
    net = rnn(make_cfg, "bn", (1, 12), "model.per_step_stats=true", "model.crop=5")
    assert net.train_length == 5 and len(net.layers()["layer1"].norm.steps) == 5
    with pytest.raises(UserError, match="model.crop=13"):
        rnn(make_cfg, "bn", (1, 12), "model.crop=13")


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
    assert {k for k in saved if k.startswith("pooled_stats_")} == {
        f"pooled_stats_final_test_acc_length_{n}" for n in (4, 8, 12)
    }
    assert list(saved["series"]["act/layer1/p50"])  # the probe feeds the usual TensorBoard statistics


def test_a_run_trained_on_crops_records_t_max_and_tests_whole_sequences(make_cfg, tmp_path):
    cfg = make_cfg(
        "model=rnn",
        "model.width=8",
        "data=digits",
        "train.steps=4",
        "device=cpu",
        "train.eval_lengths=[4,8]",
        "model.crop=4",
    )
    metrics = train(cfg, str(tmp_path))
    assert metrics["train_length"] == 4
    assert metrics["final_test_acc_length_8"] == metrics["final_test_acc"]  # the digits' 8 rows: whole


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
def fake(norm, per_step, seed, crop, accs, pooled=None):
    """A finished run trained on whole 8-row sequences (crop None) or crops of 4 rows, with test accuracy
    accs[n] at length n, and pooled[n] with per-step statistics pooled."""
    metrics = dict(
        final_test_acc=accs[8],
        diverged=False,
        train_length=crop or 8,
        final_test_acc_batch_stats=0.9,
        series={"batch/loss": [[50, 1.0], [100, 0.5]]},
        **{f"final_test_acc_length_{n}": a for n, a in accs.items()},
        **{f"pooled_stats_final_test_acc_length_{n}": a for n, a in (pooled or {}).items()},
    )
    config = {
        "claim": "rnn",
        "seed": seed,
        "norm.name": norm,
        "model.per_step_stats": per_step,
        "model.crop": crop,
        "model.name": "rnn",
    }
    return Run(pathlib.Path("."), config, metrics)


PLAIN = {4: 0.7, 8: 0.9}  # the plain RNN on crops: 20 points better on whole images (the control holds)


def rnn_sweep(step=0.95, pooled=0.9, shared=0.9, beyond_step=0.9, beyond_shared=0.9, plain=PLAIN, seeds=3):
    """BN's accuracies (the crop runs' on whole images: beyond_*), seed s adding s/1000 to each."""
    runs = []
    for s in range(seeds):
        e = s / 1000
        for crop, bn_step, bn_shared in ((None, step, shared), (4, beyond_step, beyond_shared)):
            runs += [
                fake("bn", True, s, crop, {4: 0.5, 8: bn_step + e}, pooled={4: 0.5, 8: pooled + e}),
                fake("bn", False, s, crop, {4: 0.5, 8: bn_shared + e}),
            ]
            others = plain if crop else {4: 0.7, 8: 0.95}
            runs += [fake(norm, per, s, crop, others) for norm in ("none", "ln") for per in (False, True)]
    return runs


def verdicts(finding) -> list[str]:
    return [p.verdict for p in finding.parts]


def test_rnn_is_supported_when_per_step_statistics_win_and_reusing_t_maxs_costs_nothing():
    finding = CLAIMS["rnn"].analyze(rnn_sweep(step=0.95, pooled=0.9, shared=0.92))
    assert verdicts(finding) == [SUPPORTED] * 4 and finding.verdict == SUPPORTED
    pooled, shared, control, beyond = finding.parts
    assert pooled.mean == pytest.approx(0.05) and shared.mean == pytest.approx(0.03)
    assert control.mean == pytest.approx(0.2) and beyond.mean == pytest.approx(0.0)
    assert pooled.where == "length 8" and beyond.where == "T_max 4, length 8"
    assert [row["variant"] for row in finding.table] == [*claim.VARIANTS.values(), claim.POOLED]
    assert finding.table[-1]["whole, acc @ 8"] == "0.901 ± 0.001"  # the pooled test of the per-step runs
    assert not any("Warning" in n for n in finding.notes)


def test_rnn_is_not_supported_when_pooled_test_statistics_do_as_well():
    finding = CLAIMS["rnn"].analyze(rnn_sweep(step=0.95, pooled=0.95, shared=0.9))
    assert verdicts(finding) == [NOT_SUPPORTED, SUPPORTED, SUPPORTED, SUPPORTED]


def test_rnn_is_not_supported_when_bn_trained_with_shared_statistics_does_as_well():
    finding = CLAIMS["rnn"].analyze(rnn_sweep(step=0.95, pooled=0.9, shared=0.95))
    assert verdicts(finding) == [SUPPORTED, NOT_SUPPORTED, SUPPORTED, SUPPORTED]
    assert finding.verdict == NOT_SUPPORTED


def test_rnn_is_not_supported_when_reusing_t_maxs_statistics_loses_beyond_it():
    finding = CLAIMS["rnn"].analyze(rnn_sweep(beyond_step=0.85, beyond_shared=0.9))
    assert verdicts(finding)[2:] == [SUPPORTED, NOT_SUPPORTED]


def test_beyond_t_max_is_inconclusive_when_the_plain_rnn_gains_nothing_from_the_longer_sequences():
    finding = CLAIMS["rnn"].analyze(rnn_sweep(beyond_step=0.5, plain={4: 0.7, 8: 0.7}))
    control, beyond = finding.parts[2:]
    assert control.mean == pytest.approx(0.0) and beyond.mean == pytest.approx(-0.4)  # still reported
    assert control.verdict == NOT_SUPPORTED and control.effect.control  # a failed control
    assert finding.decided_by == (
        "per-step with T_max's reused vs shared, beyond T_max (T_max 4, length 8) (control failed: the plain "
        "RNN reads beyond T_max (T_max 4, length 8))"
    )
    assert finding.verdict == INCONCLUSIVE  # the parts at the training length hold


def test_rnn_is_inconclusive_when_seeds_disagree():
    runs = rnn_sweep(step=0.95, pooled=0.9, shared=0.92)
    runs[0].metrics["final_test_acc_length_8"] = 0.85  # seed 0, per-step BN on whole sequences
    assert verdicts(CLAIMS["rnn"].analyze(runs))[:2] == [INCONCLUSIVE, INCONCLUSIVE]


def test_rnn_refuses_a_sweep_without_crops_or_without_the_lengths():
    runs = [r for r in rnn_sweep() if r["model.crop"] is None]
    with pytest.raises(ValueError, match="model.crop=T_max"):
        CLAIMS["rnn"].analyze(runs)
    runs = rnn_sweep()
    for r in runs:
        del r.metrics["final_test_acc_length_4"]
    with pytest.raises(ValueError, match=r"length\(s\) \[4\]"):
        CLAIMS["rnn"].analyze(runs)


def test_rnn_warns_when_per_step_stats_changes_a_network_without_statistics():
    runs = rnn_sweep()
    twin = next(r for r in runs if r["norm.name"] == "ln" and r["model.per_step_stats"])
    twin.metrics["final_test_acc_length_8"] = 0.5
    assert any("Warning" in n for n in CLAIMS["rnn"].analyze(runs).notes)


def test_the_rnn_report(reported):
    assert reported("rnn", rnn_sweep(step=0.95, pooled=0.9, shared=0.92))["verdict"] == SUPPORTED
