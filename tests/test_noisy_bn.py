"""Noisy BN and its control (Santurkar et al. 2018, App. A.2.1, Algorithm 1): noise drawn afresh for every
value at every training step, after BN or in the plain network."""

from pathlib import Path

import bnexp.conf
import pytest
import torch
from torch import nn

from bnexp.models import build_model
from bnexp.norm import BatchNorm, Noise, NoisyBatchNorm, held_noise

MODELS = sorted(p.stem for p in Path(bnexp.conf.__path__[0]).glob("model/*.yaml"))
SHAPES = {"image": (1, 8, 8), "sequence": (2, 12)}


def held_draw(noise: Noise, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, m) read back through the forward, a ← s·a + m: m is the output for a = 0, s + m for a = 1."""
    noise(torch.zeros(shape))
    with held_noise(nn.Sequential(noise)):
        m = noise(torch.zeros(shape))
        s = noise(torch.ones(shape)) - m
    return s, m


def test_every_value_gets_its_own_noise_around_its_units_mean_and_scale():
    """Algorithm 1 of Santurkar et al.: per unit μ_j ~ U(−0.5, 0.5), σ_j ~ U(1, 1.25); per sample and unit
    m_ij ~ U(μ_j ± 0.1), s_ij ~ N(σ_j, 0.1²)."""
    torch.manual_seed(0)
    s, m = held_draw(Noise(500), (4000, 500))
    # Within a unit: m spans μ_j ± 0.1 uniformly, s has standard deviation 0.1.
    mu = (m.amax(0) + m.amin(0)) / 2
    assert ((m.amax(0) - m.amin(0)) <= 0.2 + 1e-6).all() and ((m.amax(0) - m.amin(0)) > 0.199).all()
    assert m.std(0).mean().item() == pytest.approx(0.2 / 12**0.5, rel=0.01)
    assert s.std(0).mean().item() == pytest.approx(0.1, rel=0.01)
    # Across units: μ_j uniform on (−0.5, 0.5), σ_j (the unit's mean scale) uniform on (1, 1.25).
    sigma = s.mean(0)
    assert -0.5 <= mu.min() < -0.45 and 0.45 < mu.max() <= 0.5
    assert mu.std().item() == pytest.approx(1 / 12**0.5, rel=0.1)
    assert 0.99 < sigma.min() < 1.02 and 1.23 < sigma.max() < 1.26
    assert sigma.std().item() == pytest.approx(0.25 / 12**0.5, rel=0.15)
    # Independent draws: a sample's shift says nothing about its scale.
    assert abs(torch.corrcoef(torch.stack([(m - mu).flatten(), (s - sigma).flatten()]))[0, 1]) < 0.01


def test_in_a_conv_layer_the_positions_count_as_part_of_the_batch():
    torch.manual_seed(0)
    s, m = held_draw(Noise(16), (8, 16, 24, 24))
    # One example, one unit: the noise still varies from position to position, as much as across examples.
    assert m[0].flatten(1).std(1).mean().item() == pytest.approx(0.2 / 12**0.5, rel=0.05)
    assert s[0].flatten(1).std(1).mean().item() == pytest.approx(0.1, rel=0.05)
    # ... around the same per-unit μ_j at every position.
    by_position = m.mean(0)  # (16, 24, 24): the unit's mean at each position
    assert (by_position - by_position.mean((1, 2), keepdim=True)).abs().max() < 0.1


def test_the_units_mean_and_scale_are_redrawn_at_every_step():
    torch.manual_seed(0)
    noise = Noise(300)
    (s1, m1), (s2, m2) = held_draw(noise, (200, 300)), held_draw(noise, (200, 300))
    mu1, mu2 = m1.mean(0), m2.mean(0)
    assert abs(torch.corrcoef(torch.stack([mu1, mu2]))[0, 1]) < 0.2
    assert abs(torch.corrcoef(torch.stack([s1.mean(0), s2.mean(0)]))[0, 1]) < 0.2
    assert (mu1 - mu2).abs().mean() > 0.2  # E|U − U′| = 1/3 for U, U′ ~ U(−0.5, 0.5)


def test_training_output_is_the_bn_output_with_the_noise():
    torch.manual_seed(0)
    noisy, plain = NoisyBatchNorm(8), BatchNorm(8)
    for x in (torch.randn(60, 8) * 3 + 1, torch.randn(6, 8, 5, 5)):
        z, y = noisy(x), plain(x)
        s, m = noisy.perturb.noise
        assert s.shape == m.shape == x.shape
        assert torch.allclose(z, s * y + m, atol=1e-6)
    # Noise after the normalization does not touch the running statistics.
    assert torch.equal(noisy.running_mean, plain.running_mean)
    assert torch.equal(noisy.running_var, plain.running_var)
    assert noisy.state_dict().keys() == plain.state_dict().keys()


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
    assert not layer.perturb.hold
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
    assert all(m.perturb.noise is not None for m in noisy)
    net.eval()
    state = torch.get_rng_state()
    out = net(x)
    assert out.shape == (6, 10) and torch.isfinite(out).all()
    assert torch.equal(torch.get_rng_state(), state)  # eval: plain BN, no noise drawn


def test_the_control_is_the_same_noise_in_the_plain_network(make_cfg):
    torch.manual_seed(0)
    cfg = make_cfg("norm=noisy_none", "model.width=16")
    net = build_model(cfg, (1, 8, 8), num_classes=10)
    layer = net.layers()["layer1"]
    assert isinstance(layer.norm, Noise) and layer.linear.bias is not None  # a plain network keeps its bias
    x = torch.randn(6, 1, 8, 8)
    net.eval()
    reference = build_model(make_cfg("norm=none", "model.width=16"), (1, 8, 8), num_classes=10)
    reference.load_state_dict(net.state_dict())  # the noise holds no state: the same keys as the plain net
    reference.eval()
    assert torch.equal(net(x), reference(x))  # eval: no noise
    net.train()
    with torch.no_grad():
        noisy = net(x)
        s, m = layer.norm.noise
        pre = layer.linear(x.flatten(1))
    assert not torch.equal(noisy, reference(x))
    with held_noise(net):
        assert torch.allclose(layer(x.flatten(1)), layer.g(s * pre + m), atol=1e-6)
