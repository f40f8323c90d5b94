"""The ICS and landscape measurements (bnexp.ics), and the `ics` and `ics_gradient` claims."""

import json
import math
import pathlib
from copy import deepcopy
from functools import partial

import bnexp.conf
import pytest
import torch
import torch.nn.functional as F

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Run
from bnexp.config import NormConfig
from bnexp.ics import LANDSCAPE_STEPS, gradient_ics, landscape
from bnexp.models import MLP, build_model, make_norm
from bnexp.norm import NoisyBatchNorm, held_noise
from bnexp.train import train

NORMS = ["none", "bn", "noisy_bn"]


def tiny(norm: str, dropout: float = 0.0, seed: int = 0):
    """A 3-layer sigmoid MLP on 12 features after one training forward and backward: (model, x, y)."""
    torch.manual_seed(seed)
    model = MLP((12,), 5, partial(make_norm, NormConfig(name=norm)), depth=3, width=16, dropout=dropout)
    x, y = torch.randn(24, 12), torch.randint(0, 5, (24,))
    model.train()
    F.cross_entropy(model(x), y).backward()
    return model, x, y


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [p.grad.clone() for p in model.parameters()],
        [m.noise for m in model.modules() if isinstance(m, NoisyBatchNorm)],
    )


# ---- the measurements ----------------------------------------------------------------------------
@pytest.mark.parametrize("norm", NORMS)
def test_layer1_has_no_gradient_shift_since_nothing_precedes_it(norm):
    values = gradient_ics(*tiny(norm), lr=0.5)
    assert values["ics/layer1/l2"] == 0 and values["ics/layer1/rel"] == 0
    assert values["ics/layer1/cos"] == pytest.approx(1, abs=1e-6)
    for layer in ("layer2", "layer3", "head"):
        assert values[f"ics/{layer}/l2"] > 0 and -1 <= values[f"ics/{layer}/cos"] <= 1 + 1e-6


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_g_prime_is_the_gradient_after_the_layers_below_took_their_sgd_step(norm):
    model, x, y = tiny(norm)
    lr = 0.7
    values = gradient_ics(model, x, y, lr)
    # By hand, on a copy: layer1 and layer2 step, then layer3's weight gradient on the same batch.
    moved = deepcopy(model)
    with torch.no_grad():
        for name in ("layer1", "layer2"):
            for p, q in zip(getattr(model.body, name).parameters(), getattr(moved.body, name).parameters()):
                q -= lr * p.grad
    moved.zero_grad()
    F.cross_entropy(moved(x), y).backward()
    G, G2 = model.body.layer3.linear.weight.grad, moved.body.layer3.linear.weight.grad
    assert values["ics/layer3/l2"] == pytest.approx(float((G - G2).norm()), rel=1e-4)
    assert values["ics/layer3/cos"] == pytest.approx(
        float(F.cosine_similarity(G.flatten(), G2.flatten(), 0)), abs=1e-6
    )
    assert values["ics/layer3/rel"] == pytest.approx(float((G - G2).norm() / G.norm()), rel=1e-4)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("measure", [gradient_ics, landscape])
def test_a_measurement_leaves_parameters_buffers_grads_noise_and_rng_untouched(measure, norm, dropout):
    model, x, y = tiny(norm, dropout)
    state, grads, noise = snapshot(model)
    rng = torch.get_rng_state()
    values = measure(model, x, y, 0.5)
    assert all(math.isfinite(v) for v in values.values())
    assert torch.equal(torch.get_rng_state(), rng)
    after_state, after_grads, after_noise = snapshot(model)
    assert all(torch.equal(state[k], after_state[k]) for k in state)  # BN running statistics included
    assert all(torch.equal(a, b) for a, b in zip(grads, after_grads))
    assert all(a is b for a, b in zip(noise, after_noise))
    assert model.training and not any(m.hold_noise for m in model.modules() if isinstance(m, NoisyBatchNorm))


def test_with_dropout_g_and_g_prime_share_one_mask():
    # With different masks G′ would differ from G even for layer1.
    values = gradient_ics(*tiny("bn", dropout=0.5), lr=0.5)
    assert values["ics/layer1/l2"] == 0


@pytest.mark.parametrize("norm", NORMS)
def test_landscape_numbers_are_consistent(norm):
    model, x, y = tiny(norm)
    values = landscape(model, x, y, lr=0.5)
    assert all(math.isfinite(v) for v in values.values())
    assert values["landscape/loss_range"] >= 0
    assert values["landscape/loss_range"] == pytest.approx(
        values["landscape/loss_max"] - values["landscape/loss_min"]
    )
    assert values["landscape/grad_change"] > 0 and values["landscape/beta_smoothness"] > 0
    # β is the largest change per distance, so at least the largest change over the largest distance.
    largest_step = LANDSCAPE_STEPS[-1] * 0.5 * values["landscape/grad_norm"]
    assert values["landscape/beta_smoothness"] >= values["landscape/grad_change"] / largest_step * (1 - 1e-6)
    # The current point: the step's own loss and gradient (same batch, same noise).
    with held_noise(model), torch.no_grad():
        loss = F.cross_entropy(deepcopy(model)(x), y)
    grad_norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert values["landscape/loss"] == pytest.approx(float(loss), rel=1e-5)
    assert values["landscape/grad_norm"] == pytest.approx(float(grad_norm), rel=1e-5)


def test_landscape_walks_down_the_gradient_and_keeps_the_extremes():
    """Each point θ − η·g stepped to by hand on a copy: the loss's extremes over the points, the largest
    gradient change, and the largest change per distance moved (β)."""
    model, x, y = tiny("none")
    lr = 0.5
    values = landscape(model, x, y, lr=lr)
    g = [p.grad.clone() for p in model.parameters()]
    g_flat = torch.cat([t.flatten() for t in g])
    losses, changes, betas = [], [], []
    for k in LANDSCAPE_STEPS:
        eta, moved = k * lr, deepcopy(model)
        with torch.no_grad():
            for p, gp in zip(moved.parameters(), g):
                p.sub_(eta * gp)
        moved.zero_grad()
        loss = F.cross_entropy(moved(x), y)
        loss.backward()
        change = float((torch.cat([p.grad.flatten() for p in moved.parameters()]) - g_flat).norm())
        (
            losses.append(loss.item()),
            changes.append(change),
            betas.append(change / (eta * float(g_flat.norm()))),
        )
    assert len(set(losses)) == len(losses)  # the points differ, so the extremes below say something
    assert values["landscape/loss_min"] == pytest.approx(min(losses), rel=1e-5)
    assert values["landscape/loss_max"] == pytest.approx(max(losses), rel=1e-5)
    assert values["landscape/grad_change"] == pytest.approx(max(changes), rel=1e-4)
    assert values["landscape/beta_smoothness"] == pytest.approx(max(betas), rel=1e-4)


MODELS = sorted(p.stem for p in pathlib.Path(bnexp.conf.__path__[0]).glob("model/*.yaml"))


@pytest.mark.parametrize("norm", ["bn", "noisy_bn"])
@pytest.mark.parametrize("name", MODELS)
def test_the_measurements_work_on_every_model(make_cfg, name, norm):
    torch.manual_seed(0)
    cfg = make_cfg(f"model={name}", f"norm={norm}", "model.width=8", "model.channels=[4,8]")
    model = build_model(cfg, (1, 8, 8), num_classes=5)
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 5, (10,))
    F.cross_entropy(model(x), y).backward()
    state, _, _ = snapshot(model)
    values = {**gradient_ics(model, x, y, 0.1), **landscape(model, x, y, 0.1)}
    assert all(math.isfinite(v) for v in values.values())
    assert (
        values["ics/layer1/l2"] == 0
        and f"ics/{list(model.layers())[-1]}/cos" in values
        and "ics/head/cos" in values
    )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_a_tiny_step_barely_changes_the_loss():
    model, x, y = tiny("bn")
    small, large = landscape(model, x, y, lr=1e-4), landscape(model, x, y, lr=1.0)
    assert small["landscape/loss_range"] < 1e-3 < large["landscape/loss_range"]


MEASURED = [
    "norm=noisy_bn",
    "model.dropout=0.2",
    "optim.lr=0.5",
    "train.steps=20",
    "train.eval_every=10",
    "log.stats_every=5",
    "log.hist_every=20",
    "device=cpu",
]


def test_training_with_measurements_is_the_same_training(make_cfg, tmp_path):
    """Measuring changes nothing the run does: same curves, step for step, with the measurements added."""
    train(make_cfg(*MEASURED), str(tmp_path / "plain"))
    train(
        make_cfg(*MEASURED, "measure.ics_every=3", "measure.landscape_every=10"), str(tmp_path / "measured")
    )
    plain, measured = (
        json.loads((tmp_path / d / "metrics.json").read_text())["series"] for d in ("plain", "measured")
    )
    assert {t: v for t, v in measured.items() if not t.startswith(("ics/", "landscape/"))} == plain
    assert [s for s, _ in measured["ics/layer2/cos"]] == [3, 6, 9, 12, 15, 18]
    assert [s for s, _ in measured["landscape/beta_smoothness"]] == [10, 20]
    assert {"ics/head/l2", "ics/layer3/rel", "landscape/loss_range", "landscape/grad_change"} <= set(measured)


def test_negative_measurement_intervals_are_refused(make_cfg, tmp_path):
    from bnexp.config import UserError

    with pytest.raises(UserError, match="measure.ics_every"):
        train(make_cfg("train.steps=2", "device=cpu", "measure.ics_every=-1"), str(tmp_path))


# ---- the claims' verdict logic on hand-made runs -------------------------------------------------
STEPS = (20, 40, 60, 80, 100)


def percentiles(prefix: str, move: float) -> dict:
    """p15/p50/p85 that shift together by `move` over training, 2 apart: drift = move / 2."""
    return {
        f"{prefix}/p{k}": [[s, off + move * i / (len(STEPS) - 1)] for i, s in enumerate(STEPS)]
        for k, off in (("15", -1.0), ("50", 0.0), ("85", 1.0))
    }


def made_run(norm: str, seed: int, acc: float = 0.95, series=None, **config) -> Run:
    config = {"claim": None, "seed": seed, "model.name": "mlp", "norm.name": norm, **config}
    series = {"test/acc": [[50, acc / 2], [100, acc]], **(series or {})}
    return Run(pathlib.Path("."), config, dict(final_test_acc=acc, diverged=False, series=series))


def ics_sweep(bn_moves, plain_moves):
    """Per seed, (unit-0 move, whole-layer move) of the last hidden layer's percentiles for BN and plain."""
    return [
        made_run(
            norm,
            seed,
            series={
                **percentiles("act/layer3/unit0", moves[seed][0]),
                **percentiles("act/layer3", moves[seed][1]),
            },
        )
        for seed in range(len(bn_moves))
        for norm, moves in (("bn", bn_moves), ("none", plain_moves))
    ]


def test_ics_is_supported_when_bn_drifts_at_most_half_as_much():
    finding = CLAIMS["ics"].analyze(ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3))
    assert finding.verdict == SUPPORTED and finding.figure is not None


def test_ics_is_not_supported_when_bn_drifts_as_much():
    assert CLAIMS["ics"].analyze(ics_sweep([(1.5, 0.9)] * 3, [(2.0, 1.0)] * 3)).verdict == NOT_SUPPORTED


def test_ics_needs_both_the_unit_and_the_layer():
    # Seed 1: the layer is stable, the unit is not.
    finding = CLAIMS["ics"].analyze(ics_sweep([(0.4, 0.2), (1.5, 0.2), (0.4, 0.2)], [(2.0, 1.0)] * 3))
    assert finding.verdict == INCONCLUSIVE and finding.passed == {
        "seed 0": True,
        "seed 1": False,
        "seed 2": True,
    }


def gradient_run(norm, seed, acc=0.95, drift=0.5, one_minus_cos=0.1, land=1.0, steps=STEPS):
    """A run of the ics_gradient sweep: layer drift, gradient ICS (layers ≥ 2) and landscape values."""
    series = {**percentiles("act/layer1", 2 * drift), **percentiles("act/layer2", 2 * drift)}
    for layer in ("layer1", "layer2", "head"):
        cos = 1.0 if layer == "layer1" else 1 - one_minus_cos
        series.update(
            {
                f"ics/{layer}/cos": [[s, cos] for s in steps],
                f"ics/{layer}/l2": [[s, 0.1] for s in steps],
                f"ics/{layer}/rel": [[s, 0.2] for s in steps],
            }
        )
    for key in ("loss_range", "grad_change", "beta_smoothness", "grad_norm"):
        series[f"landscape/{key}"] = [[s, land] for s in steps]
    return made_run(norm, seed, acc, series)


def gradient_sweep(per_seed):
    """per_seed: for each seed, {norm: kwargs of gradient_run}."""
    return [gradient_run(norm, seed, **kw) for seed, cell in enumerate(per_seed) for norm, kw in cell.items()]


SANTURKAR = {
    "none": dict(drift=0.3, one_minus_cos=0.1, land=2.0),
    "bn": dict(drift=0.05, one_minus_cos=0.2, land=1.0),
    "noisy_bn": dict(drift=0.6, one_minus_cos=0.2, land=1.0, acc=0.94),
}
ICS_STORY = {
    "none": dict(drift=0.3, one_minus_cos=0.2, land=1.0),
    "bn": dict(drift=0.05, one_minus_cos=0.1, land=2.0),
    "noisy_bn": dict(drift=0.2, one_minus_cos=0.2, land=1.0, acc=0.80),
}


@pytest.mark.parametrize("norm", ["none", "bn", "noisy_bn"])
def test_ics_gradient_refuses_a_sweep_without_one_of_its_three_networks(norm):
    cells = [{k: v for k, v in SANTURKAR.items() if k != norm}] * 3
    with pytest.raises(ValueError, match=f"norm.name={norm}"):
        CLAIMS["ics_gradient"].analyze(gradient_sweep(cells))


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_ics_refuses_a_sweep_without_bn_or_without_the_plain_network(norm):
    with pytest.raises(ValueError, match=f"norm.name={norm}"):
        CLAIMS["ics"].analyze(
            [r for r in ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3) if r["norm.name"] != norm]
        )


def test_ics_gradient_is_supported_when_all_three_of_santurkars_claims_hold():
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([SANTURKAR] * 3))
    assert finding.verdict == SUPPORTED and len(finding.passed) == 9
    assert any("Reading 2, smoothness" in note for note in finding.notes)


def test_ics_gradient_is_not_supported_when_the_data_tell_the_ics_story():
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([ICS_STORY] * 3))
    assert finding.verdict == NOT_SUPPORTED
    assert any(note.startswith("**Reading 1") and "For the original story" in note for note in finding.notes)


def test_ics_gradient_is_inconclusive_when_parts_or_seeds_disagree():
    noisy_trains_worse = {**SANTURKAR, "noisy_bn": dict(drift=0.6, one_minus_cos=0.2, land=1.0, acc=0.85)}
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([SANTURKAR, noisy_trains_worse, SANTURKAR]))
    assert finding.verdict == INCONCLUSIVE
    assert [k for k, ok in finding.passed.items() if not ok] == [
        "noisy BN less stable, trains like BN, seed 1"
    ]
    # One part failing everywhere, the others holding: also inconclusive (the parts are itemized).
    assert CLAIMS["ics_gradient"].analyze(gradient_sweep([noisy_trains_worse] * 3)).verdict == INCONCLUSIVE
