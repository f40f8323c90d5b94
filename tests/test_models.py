"""Every model runs with every norm on every kind of input, and names its probe points."""

import pytest
import torch
from torch import nn

from bnexp.config import UserError
from bnexp.init import SCHEMES, initialize
from bnexp.models import MLP, build_model
from bnexp.norm import BatchNorm

NORMS = ["none", "bn", "torch_bn", "ln", "gn"]
# (C, H, W) images: digits, MNIST, CIFAR-10; (C, L) sequences: MNIST-1D; (F,) features: synthetic.
SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "mnist1d": (1, 40),
    "synthetic": (3,),
}


def model(make_cfg, name, norm, shape, *overrides):
    cfg = make_cfg(
        f"model={name}",
        f"norm={norm}",
        "norm.groups=4",
        "model.width=16",
        "model.channels=[8,16]",
        *overrides,
    )
    return build_model(cfg, shape, num_classes=10)


# A CNN needs spatial inputs: flat features are covered by test_cnn_rejects_flat_features.
COMBOS = [(m, d) for m in ("mlp", "cnn") for d in SHAPES if (m, d) != ("cnn", "synthetic")]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name,data", COMBOS)
def test_every_model_trains_with_every_norm_on_every_input_kind(make_cfg, sgd_steps, name, norm, data):
    torch.manual_seed(0)
    net = model(make_cfg, name, norm, SHAPES[data])
    sgd_steps(net, SHAPES[data])
    # mlp: 3 hidden layers; cnn: 2 conv stages and the hidden fully connected layer.
    assert list(net.probes()) == ["layer1", "layer2", "layer3"]


def test_probes_see_the_input_of_each_nonlinearity(make_cfg):
    net = model(make_cfg, "mlp", "bn", (1, 8, 8), "model.dropout=0.0")
    seen = {}
    for name, probe in net.probes().items():
        probe.register_forward_hook(lambda m, i, out, name=name: seen.__setitem__(name, out))
    net.train()
    net(torch.randn(32, 1, 8, 8))
    # After BN (γ=1, β=0) in training mode each unit is standardized over the batch (its variance is
    # var / (var + eps), a little under 1 where the layer's input varies little).
    for out in seen.values():
        torch.testing.assert_close(out.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(16), atol=1e-2, rtol=0)


def test_mlp_puts_the_norm_between_the_linear_map_and_the_nonlinearity(make_cfg):
    layer = model(make_cfg, "mlp", "bn", (1, 8, 8)).layers()["layer1"]
    assert [n for n, _ in layer.named_children()][:4] == ["linear", "norm", "probe", "g"]
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), torch.sigmoid(layer.norm(layer.linear(x))))


@pytest.mark.parametrize(
    "norm,keep,has_bias", [("bn", False, False), ("bn", True, True), ("none", False, True)]
)
def test_the_bias_before_a_norm_is_dropped_unless_asked_for(make_cfg, norm, keep, has_bias):
    net = model(make_cfg, "mlp", norm, (1, 8, 8), f"model.bias_before_norm={keep}")
    assert all((layer.linear.bias is not None) == has_bias for layer in net.layers().values())


def test_cnn_uses_1d_convolutions_for_sequences_and_2d_for_images(make_cfg):
    assert isinstance(model(make_cfg, "cnn", "bn", (1, 40)).layers()["layer1"].linear, nn.Conv1d)
    assert isinstance(model(make_cfg, "cnn", "bn", (3, 32, 32)).layers()["layer1"].linear, nn.Conv2d)


def test_cnn_rejects_flat_features(make_cfg):
    with pytest.raises(UserError, match="model=mlp"):
        model(make_cfg, "cnn", "bn", (3,))


def test_mlp_depth_width_and_dropout_follow_the_config(make_cfg):
    net = model(make_cfg, "mlp", "none", (1, 8, 8), "model.depth=5", "model.width=7", "model.dropout=0.5")
    assert isinstance(net, MLP) and len(net.layers()) == 5
    assert all(layer.linear.out_features == 7 for layer in net.layers().values())
    assert all(
        isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.5 for layer in net.layers().values()
    )


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_without_dropout_before_bn_a_bn_network_keeps_it_only_where_it_feeds_the_head(make_cfg, name):
    keys = ("model.dropout=0.5", "model.dropout_before_bn=false")
    *before, last = model(make_cfg, name, "bn", (1, 8, 8), *keys).layers().values()
    assert before and all(isinstance(layer.dropout, nn.Identity) for layer in before)
    assert isinstance(last.dropout, nn.Dropout) and last.dropout.p == 0.5  # it feeds the head, no BN
    for norm in ("none", "gn"):  # no running statistics after any layer: dropout everywhere
        layers = model(make_cfg, name, norm, (1, 8, 8), *keys).layers().values()
        assert all(isinstance(layer.dropout, nn.Dropout) for layer in layers)


@pytest.mark.parametrize("scheme", ["normal", "uniform"])
def test_init_std_sets_the_weights_standard_deviation(make_cfg, scheme):
    cfg = make_cfg(f"init={scheme}", "init.std=0.05", "model.width=400")
    net = initialize(build_model(cfg, (1, 8, 8), 10), cfg.init)
    w = net.layers()["layer2"].linear.weight
    assert abs(w.std().item() - 0.05) < 0.002


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_explicit_schemes_start_biases_at_zero_and_leave_gamma_beta_alone(make_cfg, scheme):
    cfg = make_cfg(f"init={scheme}", "model=cnn", "model.bias_before_norm=true", "norm=bn")
    net = initialize(build_model(cfg, (1, 8, 8), 10), cfg.init)
    for layer in net.layers().values():
        assert torch.all(layer.linear.bias == 0)
        assert torch.all(layer.norm.weight == 1) and torch.all(layer.norm.bias == 0)
    assert torch.all(net.head.bias == 0)


def test_init_layers_hidden_scales_the_hidden_maps_and_leaves_the_head_one_default_draw(make_cfg):
    heads = []
    for norm in ("none", "bn"):
        for std in (0.001, 10.0):
            cfg = make_cfg(
                "init=normal", f"init.std={std}", "init.layers=hidden", "model.width=400", f"norm={norm}"
            )
            net = build_model(cfg, (1, 8, 8), 10)
            torch.manual_seed(0)  # as bnexp.step does right before initializing
            initialize(net, cfg.init)
            assert net.layers()["layer2"].linear.weight.std().item() == pytest.approx(std, rel=0.02)
            heads.append(net.head.weight)
    # PyTorch's default for a linear map: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 * 400).
    assert heads[0].std().item() == pytest.approx(1 / (3 * 400) ** 0.5, rel=0.03)
    assert all(torch.equal(head, heads[0]) for head in heads)


def test_init_layers_all_scales_the_head_too(make_cfg):
    cfg = make_cfg("init=normal", "init.std=10", "model.width=400")
    assert initialize(build_model(cfg, (1, 8, 8), 10), cfg.init).head.weight.std().item() == pytest.approx(
        10, rel=0.05
    )


def test_gain_scales_xavier_kaiming_and_orthogonal(make_cfg):
    for scheme in ("xavier", "kaiming", "orthogonal"):
        stds = []
        for gain in (1.0, 3.0):
            torch.manual_seed(0)
            cfg = make_cfg(f"init={scheme}", f"init.gain={gain}", "model.width=300")
            stds.append(
                initialize(build_model(cfg, (1, 8, 8), 10), cfg.init).layers()["layer2"].linear.weight.std()
            )
        assert abs(stds[1] / stds[0] - 3.0) < 0.05, scheme


def test_the_linearized_sigmoid_is_the_sigmoids_tangent_at_zero(make_cfg):
    g = model(make_cfg, "mlp", "bn", (1, 8, 8), "model.activation=linearized_sigmoid").layers()["layer1"].g
    # σ(0) = 1/2 and σ'(0) = σ(0)(1 − σ(0)) = 1/4: 0.5 + x/4, by hand.
    x = torch.tensor([-4.0, -2.0, 0.0, 1.0, 6.0])
    torch.testing.assert_close(g(x), torch.tensor([-0.5, 0.0, 0.5, 0.75, 2.0]))
    small = torch.tensor([-0.01, 0.01])  # and the sigmoid's own values near 0, to second order
    torch.testing.assert_close(g(small), torch.sigmoid(small), atol=1e-6, rtol=0)


@pytest.mark.parametrize("norm_fc", [True, False])
def test_norm_fc_false_keeps_the_norm_off_the_cnns_fully_connected_layer(make_cfg, norm_fc):
    """At batch 2, BN on a fully connected layer sees two values a₀, a₁ per unit: their mean ± d, with
    d = (a₀ − a₁)/2, so x̂ = ±d / √(d² + ε), ±1 but for ε, whatever the input. Off it (norm_fc=false), the
    layer keeps its bias and its inputs are the linear map's. The convolutions keep their BN either way."""
    torch.manual_seed(0)
    net = model(make_cfg, "cnn", "bn", (1, 8, 8), f"model.norm_fc={norm_fc}").train()
    fc, seen = net.layers()["layer3"], {}
    fc.linear.register_forward_hook(lambda m, i, out: seen.__setitem__("a", out))
    fc.probe.register_forward_hook(lambda m, i, out: seen.__setitem__("x", out))
    net(torch.randn(2, 1, 8, 8))
    assert isinstance(net.layers()["layer1"].norm, BatchNorm) and net.layers()["layer1"].linear.bias is None
    assert (fc.linear.bias is None) == norm_fc
    a = seen["a"]
    if norm_fc:
        d = (a[0] - a[1]) / 2
        torch.testing.assert_close(seen["x"], torch.stack([d, -d]) / (d**2 + 1e-5).sqrt())
    else:
        assert isinstance(fc.norm, nn.Identity) and torch.equal(seen["x"], a)


def test_norm_fc_false_is_refused_where_there_are_no_convolutions(make_cfg):
    with pytest.raises(UserError, match="model.norm_fc=false .* model=mlp has no convolutions"):
        model(make_cfg, "mlp", "bn", (1, 8, 8), "model.norm_fc=false")


@pytest.mark.parametrize("position", ["pre", "post"])
def test_the_norm_sits_before_or_after_the_nonlinearity(make_cfg, position):
    """pre: g(BN(Wu)), the BN paper's layer, its bias dropped as redundant; post: BN(g(Wu + b)), the bias
    kept (g stands between it and the mean subtraction). The probe reads the input of g in both."""
    net = model(make_cfg, "mlp", "bn", (5,), "model.depth=1", f"model.norm_position={position}").train()
    layer = net.body.layer1
    u = torch.randn(16, 5)
    with torch.no_grad():
        wu = u @ layer.linear.weight.T
        if position == "pre":
            assert layer.linear.bias is None
            g_in = (wu - wu.mean(0)) / torch.sqrt(wu.var(0, unbiased=False) + 1e-5)
            expected = torch.sigmoid(g_in)
        else:
            g_in = wu + layer.linear.bias
            h = torch.sigmoid(g_in)
            expected = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
        seen = {}
        layer.probe.register_forward_hook(lambda m, i, out: seen.setdefault("g_in", out))
        assert torch.allclose(layer(u), expected, atol=1e-5)
        assert torch.allclose(seen["g_in"], g_in, atol=1e-5)


def test_the_norm_after_the_nonlinearity_is_refused_for_the_rnn(make_cfg):
    with pytest.raises(UserError, match="model.norm_position=post is for model=mlp and model=cnn"):
        model(make_cfg, "rnn", "bn", (1, 40), "model.norm_position=post")
