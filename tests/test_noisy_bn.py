"""NoisyBatchNorm (Santurkar et al. 2018): BN plus per-unit noise redrawn every training step."""

from pathlib import Path

import bnexp.conf
import pytest
import torch
from torch import nn

from bnexp.models import build_model
from bnexp.norm import BatchNorm, NoisyBatchNorm, held_noise

MODELS = sorted(p.stem for p in Path(bnexp.conf.__path__[0]).glob("model/*.yaml"))
SHAPES = {"image": (1, 8, 8), "sequence": (2, 12)}


def test_the_noise_follows_santurkars_distributions():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(4000)
    like = torch.empty(0)
    mus, sigmas = [], []
    for _ in range(400):
        s, m = layer.draw_noise(like)
        # Per unit: m ~ U(μ − 0.1, μ + 0.1), s ~ N(σ, 0.1²), one μ and σ for the whole layer.
        mu = (m.max() + m.min()) / 2
        assert 0.19 < float(m.max() - m.min()) <= 0.2
        assert float(m.std()) == pytest.approx(0.2 / 12**0.5, rel=0.06)
        assert float(s.std()) == pytest.approx(0.1, rel=0.06)
        mus.append(float(mu)), sigmas.append(float(s.mean()))
    mus, sigmas = torch.tensor(mus), torch.tensor(sigmas)
    # Per step: μ ~ U(−0.5, 0.5), σ ~ U(1, 1.25).
    assert -0.5 <= mus.min() < -0.45 and 0.45 < mus.max() <= 0.5
    assert float(mus.mean()) == pytest.approx(0, abs=0.05)
    assert float(mus.std()) == pytest.approx(1 / 12**0.5, rel=0.1)
    assert 0.99 < sigmas.min() < 1.02 and 1.23 < sigmas.max() < 1.26
    assert float(sigmas.std()) == pytest.approx(0.25 / 12**0.5, rel=0.15)


def test_training_output_is_the_bn_output_scaled_and_shifted_per_unit():
    torch.manual_seed(0)
    noisy, plain = NoisyBatchNorm(8), BatchNorm(8)
    x = torch.randn(60, 8) * 3 + 1
    z, y = noisy(x), plain(x)
    s, m = noisy.noise
    assert torch.allclose(z, s * y + m, atol=1e-6)
    # Noise after the normalization does not touch the running statistics.
    assert torch.equal(noisy.running_mean, plain.running_mean) and torch.equal(
        noisy.running_var, plain.running_var
    )
    # Conv-shaped input: one (s, m) per channel, the same at every position.
    x4 = torch.randn(6, 8, 5, 5)
    z4, y4 = noisy(x4), plain(x4)
    s, m = noisy.noise
    assert torch.allclose(z4, s.view(1, -1, 1, 1) * y4 + m.view(1, -1, 1, 1), atol=1e-6)


def test_every_training_forward_draws_new_noise_and_held_noise_reuses_it():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(8)
    x = torch.randn(30, 8)
    first = layer(x)
    assert not torch.equal(layer(x), first)  # a new step, new noise
    second = layer(x)
    state = torch.get_rng_state()
    with held_noise(nn.Sequential(layer)):
        assert torch.equal(layer(x), second)  # the step's own noise again
        assert torch.equal(layer(x), second)
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn while held
    assert not layer.hold_noise
    assert not torch.equal(layer(x), second)


def test_a_seed_makes_the_noise_repeatable():
    def noise(seed):
        torch.manual_seed(seed)
        layer = NoisyBatchNorm(8)
        return [layer(torch.ones(4, 8) * torch.arange(4.0)[:, None]) for _ in range(3)]

    assert all(torch.equal(a, b) for a, b in zip(noise(1), noise(1)))
    assert not torch.equal(noise(1)[0], noise(2)[0])


def test_eval_mode_is_plain_batchnorm_and_draws_nothing():
    torch.manual_seed(0)
    noisy, plain = NoisyBatchNorm(8, momentum=0.3), BatchNorm(8, momentum=0.3)
    with torch.no_grad():
        for layer in (noisy, plain):
            layer.weight.copy_(torch.linspace(0.5, 2, 8))
            layer.bias.copy_(torch.linspace(-1, 1, 8))
    for _ in range(5):
        x = torch.randn(20, 8) * 2 + 0.5
        noisy(x), plain(x)
    noisy.eval(), plain.eval()
    x = torch.randn(20, 8)
    state = torch.get_rng_state()
    assert torch.equal(noisy(x), plain(x))
    assert torch.equal(torch.get_rng_state(), state)


def test_gradients_reach_gamma_beta_and_the_input():
    torch.manual_seed(0)
    layer = NoisyBatchNorm(8)
    x = torch.randn(16, 8, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    assert all(
        t is not None and torch.isfinite(t).all() for t in (x.grad, layer.weight.grad, layer.bias.grad)
    )


def test_the_registry_builds_it():
    from bnexp.config import NormConfig
    from bnexp.models import make_norm

    layer = make_norm(NormConfig(name="noisy_bn", momentum=0.2, eps=1e-3), 16)
    assert isinstance(layer, NoisyBatchNorm) and (layer.momentum, layer.eps, layer.fast) == (0.2, 1e-3, True)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", MODELS)
def test_it_works_in_every_model(make_cfg, name, shape):
    torch.manual_seed(0)
    cfg = make_cfg(f"model={name}", "norm=noisy_bn", "model.width=16", "model.channels=[8,16]")
    net = build_model(cfg, SHAPES[shape], num_classes=10)
    noisy = [m for m in net.modules() if isinstance(m, NoisyBatchNorm)]
    assert noisy
    x, y = torch.randn(6, *SHAPES[shape]), torch.randint(0, 10, (6,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert all(m.noise is not None for m in noisy)
    net.eval()
    state = torch.get_rng_state()
    out = net(x)
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    assert torch.equal(torch.get_rng_state(), state)  # eval: plain BN, no noise drawn
