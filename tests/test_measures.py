"""The measurements (bnexp.measures): gradient-based ICS and the loss landscape along the gradient, checked
against steps taken by hand; sharpness, against the exact Hessian; measuring leaves training as it was."""

import json
import math
import pathlib
from copy import deepcopy
from functools import partial

import bnexp.conf
import pytest
import torch
import torch.nn.functional as F

from bnexp.config import NormConfig
from bnexp.engine import stability_limit, train
from bnexp.measures import dominant_eigenvalue, gradient_ics, landscape, sharpness
from bnexp.models import MLP, build_model, make_norm
from bnexp.norm import Noise, held_noise
from bnexp.records import LANDSCAPE_STEPS

NORMS = ["none", "bn", "noisy_bn", "noisy_none"]


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
        [m.noise for m in model.modules() if isinstance(m, Noise)],
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
    assert model.training and not any(m.hold for m in model.modules() if isinstance(m, Noise))


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


# ---- sharpness ------------------------------------------------------------------------------------------
def exact_hessian(model, x, y) -> torch.Tensor:
    """The Hessian of the training loss w.r.t. all parameters, flattened, by torch.autograd.functional."""
    names, shapes = zip(*[(n, p.shape) for n, p in model.named_parameters()])
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def loss(theta):
        params = dict(zip(names, theta.split([s.numel() for s in shapes])))
        params = {n: t.view(s) for (n, t), s in zip(params.items(), shapes)}
        return F.cross_entropy(torch.func.functional_call(model, (params, buffers), (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


@pytest.mark.parametrize("norm", ["none", "bn"])
def test_sharpness_is_the_top_eigenvalue_of_the_exact_hessian(norm):
    torch.manual_seed(0)
    model = MLP((3,), 3, partial(make_norm, NormConfig(name=norm, fast=False)), depth=2, width=4).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert (
        eigenvalues[-1] > -eigenvalues[0]
    )  # the top one is also the largest in magnitude: power iteration's
    state = deepcopy(model.state_dict())
    lam, iterations = sharpness(model, x, y, iters=1000, tol=1e-12)
    assert float(lam) == pytest.approx(float(eigenvalues[-1]), rel=1e-6)
    assert 1 < iterations <= 1000
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # BN's buffers too
    assert all(p.grad is None for p in model.parameters())


def test_sharpness_is_the_top_eigenvalue_where_a_negative_one_is_larger_in_magnitude():
    # At this initialization the BN network's most negative curvature (-1.32) outweighs its top one (0.99):
    # power iteration alone would return -1.32, the eigenvalue of largest magnitude.
    torch.manual_seed(1)
    model = MLP((3,), 3, partial(make_norm, NormConfig(name="bn", fast=False)), depth=2, width=4).double()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    eigenvalues = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert eigenvalues[0] < -eigenvalues[-1] and eigenvalues[-1] > 0
    lam, iterations = sharpness(model, x, y, iters=5000, tol=1e-14)
    assert float(lam) == pytest.approx(float(eigenvalues[-1]), rel=1e-6)


def test_power_iteration_finds_the_eigenvalue_of_largest_magnitude():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)) @ q.T
    lam, done = dominant_eigenvalue(lambda v: a @ v, torch.ones(6, dtype=torch.float64), 1000, 1e-14)
    assert float(lam) == pytest.approx(-3.0, rel=1e-9) and done < 1000
    lam, done = dominant_eigenvalue(lambda v: a @ v, torch.ones(6, dtype=torch.float64), 3, 1e-14)
    assert done == 3


def test_sharpness_stops_at_its_tolerance_or_its_iterations():
    model, x, y = tiny("bn")
    loose, few = sharpness(model, x, y, iters=50, tol=0.5), sharpness(model, x, y, iters=2, tol=1e-12)
    assert loose[1] < 50 and few[1] == 2


def test_sharpness_of_noisy_bn_on_another_batch_leaves_the_steps_noise_and_rng(make_cfg):
    model, x, y = tiny("noisy_bn", dropout=0.5)
    other_x, other_y = torch.randn(40, 12), torch.randint(0, 5, (40,))
    _, _, noise = snapshot(model)
    rng = torch.get_rng_state()
    lam, _ = sharpness(model, other_x, other_y, iters=5, tol=1e-3)
    assert math.isfinite(float(lam)) and torch.equal(torch.get_rng_state(), rng)
    assert all(a is b for a, b in zip(noise, snapshot(model)[2]))


@pytest.mark.parametrize(
    "optim,limit", [("optim=sgd", 2 / 0.5), ("optim=momentum", (2 + 2 * 0.9) / 0.5), ("optim=adam", None)]
)
def test_the_stability_limit_is_the_optimizers(make_cfg, optim, limit):
    assert stability_limit(make_cfg(optim, "optim.momentum=0.9").optim, 0.5) == limit


def test_a_run_logs_sharpness_beside_its_limit_and_trains_as_without(make_cfg, tmp_path):
    train(make_cfg(*MEASURED), str(tmp_path / "plain"))
    train(
        make_cfg(*MEASURED, "measure.sharpness_every=10", "measure.sharpness_batch=64"), str(tmp_path / "m")
    )
    plain, measured = (
        json.loads((tmp_path / d / "metrics.json").read_text())["series"] for d in ("plain", "m")
    )
    assert {t: v for t, v in measured.items() if not t.startswith("sharpness/")} == plain
    assert [s for s, _ in measured["sharpness/lambda_max"]] == [1, 10, 20]  # at initialization too
    assert measured["sharpness/limit"] == [[1, 4.0], [10, 4.0], [20, 4.0]]  # 2/η, η = 0.5
