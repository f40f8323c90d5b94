"""Claims about bnexp.norm: our BatchNorm is torch's BatchNorm, also under torch.func, and the
registry builds every norm for every input rank."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from bnexp import norm as norm_module
from bnexp.config import NormConfig, UserError
from bnexp.norm import NORMS, BatchNorm, make_norm

TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
C = 5
# (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W); each also with N = 2 and spatial size 1.
SHAPES = [(8, C), (2, C), (4, C, 7), (2, C, 1), (4, C, 3, 6), (2, C, 1, 1), (2, C, 2, 3, 4), (2, C, 1, 1, 1)]


def randomized_pair(shape, **kwargs):
    """torch's BatchNorm with random γ, β and running statistics, and ours loaded from its state."""
    ref = TORCH_BN[len(shape)](C, **kwargs)
    with torch.no_grad():
        for name, t in ref.named_parameters():
            t.normal_(mean=1.0 if name == "weight" else 0.0)
        if ref.track_running_stats:
            ref.running_mean.normal_()
            ref.running_var.uniform_(0.5, 2.0)
            ref.num_batches_tracked.fill_(3)
    ours = BatchNorm(C, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def assert_same_step(ours, ref, x, dy=None):
    """One forward + backward of each (upstream gradient dy, random if not given): same outputs,
    gradients and state afterwards."""
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(y_ours, y_ref)
    dy = torch.randn_like(y_ref) if dy is None else dy
    y_ours.backward(dy)
    y_ref.backward(dy)
    torch.testing.assert_close(x_ours.grad, x_ref.grad)
    for (name, p_ours), p_ref in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, msg=name)
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    assert not any(b.requires_grad for b in ours.buffers())  # running statistics stay out of autograd


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_in_eval_then_training_steps_then_eval(shape, affine, track_running_stats, momentum):
    torch.manual_seed(0)
    ours, ref = randomized_pair(
        shape, momentum=momentum, affine=affine, track_running_stats=track_running_stats
    )
    ours.eval(), ref.eval()
    assert_same_step(ours, ref, torch.randn(shape))
    ours.train(), ref.train()
    for _ in range(3):
        # A nonzero mean and a non-unit spread, so that every statistic matters.
        assert_same_step(ours, ref, 2.0 + 3.0 * torch.randn(shape))
    ours.eval(), ref.eval()
    assert_same_step(ours, ref, 2.0 + 3.0 * torch.randn(shape))


@pytest.mark.parametrize("shape", [(64, C), (8, C, 4, 4)])
def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread(shape):
    """Two-pass variance: E[x²] − μ² would lose every digit of σ² = 0.01 next to μ² = 10⁶."""
    torch.manual_seed(0)
    x = 1000.0 + 0.1 * torch.randn(shape)
    # momentum None: after one batch the running mean is that batch's, ~1000, as extreme in eval as in
    # training
    ours, exact = BatchNorm(C, momentum=None), TORCH_BN[len(shape)](C, momentum=None, dtype=torch.float64)
    y, y_exact = ours(x), exact(x.double())
    torch.testing.assert_close(ours.running_mean, exact.running_mean.float())
    torch.testing.assert_close(ours.running_var, exact.running_var.float())
    # y inherits the float32 rounding of μ ≈ 1000 (3e-5), divided by σ = 0.1.
    torch.testing.assert_close(y, y_exact.float(), rtol=0, atol=1e-3)
    # eval with the same (float32) running statistics: x·s + (β − μ·s) would lose ~1e-3 here
    exact.load_state_dict(ours.state_dict())
    ours.eval(), exact.eval()
    torch.testing.assert_close(ours(x), exact(x.double()).float())


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 1), (3, 2, 4), (2, 3, 2, 2)])
def test_gradients_and_second_derivatives_match_finite_differences(shape, affine, training):
    torch.manual_seed(0)
    bn = BatchNorm(shape[1], affine=affine, dtype=torch.float64).train(training)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    params = {name: torch.randn_like(p, requires_grad=True) for name, p in bn.named_parameters()}
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return functional_call(bn, dict(zip(params, values)), (x,))

    inputs = (x, *params.values())
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_state_dicts_load_both_ways(affine, track_running_stats):
    torch.manual_seed(0)
    kwargs = dict(affine=affine, track_running_stats=track_running_stats)
    ours, ref = randomized_pair((4, C, 3), **kwargs)  # ours loaded torch's state
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert (getattr(ours, name) is None) == (getattr(ref, name) is None), name

    ours.train()
    ours(torch.randn(4, C, 3))  # moves the running statistics when they are tracked
    fresh = nn.BatchNorm1d(C, **kwargs)
    fresh.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fresh.state_dict(), ours.state_dict())


def test_resets_and_repr_match_torch():
    ours, ref = randomized_pair((4, C))
    ours.reset_running_stats(), ref.reset_running_stats()
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    ours.reset_parameters(), ref.reset_parameters()
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    assert repr(BatchNorm(3, momentum=None)) == (
        "BatchNorm(3, eps=1e-05, momentum=None, affine=True, track_running_stats=True)"
    )


@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("shape", [(1, C), (1, C, 1), (1, C, 1, 1)])
def test_one_value_per_channel_is_refused_when_batch_statistics_are_needed(shape, track_running_stats):
    ours, ref = randomized_pair(shape, track_running_stats=track_running_stats)
    x = torch.randn(shape)
    with pytest.raises(ValueError) as torch_error:
        ref(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as our_error:
        ours(x)
    assert str(our_error.value) == str(torch_error.value)
    # With tracked running statistics, eval mode needs no batch statistics, so a single example works.
    ours.eval(), ref.eval()
    if track_running_stats:
        torch.testing.assert_close(ours(x), ref(x))
    else:
        with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
            ours(x)


@pytest.mark.parametrize("shape", [(4, C + 1), (4, C - 1, 3), (C,), ()])
def test_input_of_the_wrong_shape_is_refused_with_the_expected_shape(shape):
    with pytest.raises(
        ValueError, match=rf"expected input of shape \(N, {C}\) or \(N, {C}, \*\).*got input of shape"
    ):
        BatchNorm(C)(torch.randn(shape))


@pytest.mark.filterwarnings("error")  # e.g. vmap's "no batching rule, slow fallback" warning
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2, 5)])
def test_vmap_over_stacked_copies_equals_running_them_one_by_one(shape, momentum):
    """K runs at once: parameters and buffers stacked to (K, C), inputs (K, N, C, ...)."""
    K = 3
    torch.manual_seed(0)
    copies = [BatchNorm(shape[1], momentum=momentum) for _ in range(K)]
    for k, bn in enumerate(copies):
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(k)  # a different cumulative-average factor per copy
    params, buffers = stack_module_state(copies)  # detached copies of the modules' state
    skeleton = BatchNorm(shape[1], momentum=momentum).to("meta")

    def loss(params, x, buffers, dy):
        y = functional_call(skeleton, (params, buffers), (x,))
        return (y * dy).sum(), y

    def vmapped_step(x, dy):
        (dparams, dx), y = vmap(grad(loss, argnums=(0, 1), has_aux=True))(params, x, buffers, dy)
        return y, dx, dparams

    def one_by_one_step(x, dy):
        ys, dxs, dparams = [], [], {name: [] for name in params}
        for bn, x_k, dy_k in zip(copies, x, dy):
            bn.zero_grad()
            x_k = x_k.clone().requires_grad_()
            y_k = bn(x_k)
            y_k.backward(dy_k)
            ys.append(y_k.detach())
            dxs.append(x_k.grad)
            for name, p in bn.named_parameters():
                dparams[name].append(p.grad)
        return torch.stack(ys), torch.stack(dxs), {name: torch.stack(g) for name, g in dparams.items()}

    for training in (True, True, False):  # two training steps, then eval with what they tracked
        skeleton.train(training)
        for bn in copies:
            bn.train(training)
        x, dy = torch.randn(K, *shape), torch.randn(K, *shape)
        got, expected = vmapped_step(x, dy), one_by_one_step(x, dy)
        torch.testing.assert_close(got, expected)
        for name, stacked in buffers.items():  # updated in place, per copy
            torch.testing.assert_close(stacked, torch.stack([bn.get_buffer(name) for bn in copies]), msg=name)
    assert buffers["num_batches_tracked"].tolist() == [2, 3, 4]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(6, 4), (5, 4, 3), (3, 4, 2, 5)])
def test_in_place_backward_equals_the_differentiable_one(shape, affine):
    """The two written-out backward passes are one formula: the buffer-reusing one that training
    runs and the differentiable one that double backward and torch.func run."""
    torch.manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(shape, dtype=torch.float64)
    weight = torch.randn(shape[1], dtype=torch.float64) if affine else None
    bias = torch.randn(shape[1], dtype=torch.float64) if affine else None
    dy = torch.randn(shape, dtype=torch.float64)
    _, mean, var, centered, invstd, scale = norm_module._forward(x, weight, bias, 1e-5)
    reference = norm_module._backward(dy, x, weight, mean, var, 1e-5, None, None)
    fast = norm_module._backward_in_place(dy, centered, x, mean, invstd, scale)
    torch.testing.assert_close(fast, reference)
    assert fast[0] is centered  # dx took over the memory of x − μ: no new full-size tensor


def test_plain_training_takes_the_fast_path_and_torch_func_the_transformable_one(monkeypatch):
    bn = BatchNorm(3, track_running_stats=False)  # no buffers for grad() to refuse to mutate
    y = bn(torch.randn(4, 3, requires_grad=True))
    assert type(y.grad_fn).__name__ == "_BatchNormFunctionBackward"
    with monkeypatch.context() as m:  # ... and its backward is the in-place one, not the differentiable one
        m.setattr(norm_module, "_backward", lambda *args: pytest.fail("the slow backward ran"))
        y.sum().backward()
    seen = []

    def f(x):
        y = bn(x)
        seen.append(type(y.grad_fn).__name__ if y.grad_fn is not None else None)
        return y.sum()

    grad(f)(torch.randn(4, 3))
    assert seen[0].startswith("_TransformableBatchNorm")


@pytest.mark.parametrize("affine", [True, False])
def test_backward_twice_through_a_retained_graph_and_in_place_ops_on_the_output(affine):
    """The first backward uses up the forward's x − μ; a second one, through the retained graph,
    recomputes it. y is never that tensor itself, so in-place ops on y are safe."""
    torch.manual_seed(0)
    ours, ref = randomized_pair((8, C, 3), affine=affine)
    x = torch.randn(8, C, 3)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours).relu_(), ref(x_ref).relu_()  # in place on the output
    dy = torch.randn_like(y_ref)
    for _ in range(3):
        g_ours = torch.autograd.grad(y_ours, [x_ours, *ours.parameters()], dy, retain_graph=True)
        g_ref = torch.autograd.grad(y_ref, [x_ref, *ref.parameters()], dy, retain_graph=True)
        torch.testing.assert_close(g_ours, g_ref)
    # The ordinary case, without retain_graph: the graph and what it saved are freed.
    loss = ours(x_ours).sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


@pytest.mark.parametrize("dy_kind", ["channels_last", "expanded"])
def test_channels_last_input_and_unusual_gradient_layouts_match_torch(dy_kind):
    torch.manual_seed(0)
    ours, ref = randomized_pair((4, C, 3, 6))
    x = (2.0 + 3.0 * torch.randn(4, C, 3, 6)).to(memory_format=torch.channels_last)
    dy = torch.randn(4, C, 3, 6).to(memory_format=torch.channels_last)
    if dy_kind == "expanded":  # what y.sum().backward() sends: one value, stride 0 everywhere
        dy = torch.tensor(0.7).expand(4, C, 3, 6)
    assert_same_step(ours, ref, x, dy)


CONFIG_KINDS = {
    "dataclass": lambda **kw: NormConfig(**kw),
    "omegaconf": lambda **kw: OmegaConf.structured(NormConfig(**kw)),
}


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize("spatial_dims", [0, 1, 2, 3])
@pytest.mark.parametrize("name", NORMS)
def test_every_norm_runs_on_input_of_its_rank(name, spatial_dims, kind):
    norm = make_norm(CONFIG_KINDS[kind](name=name), num_features=16, spatial_dims=spatial_dims)
    x = torch.randn(4, 16, *[3] * spatial_dims)
    assert norm(x).shape == x.shape
    norm.eval()
    assert norm(x).shape == x.shape


def test_bn_entries_follow_the_config():
    cfg = NormConfig(name="bn", eps=1e-3, momentum=None, affine=False)
    ours = make_norm(cfg, 7, spatial_dims=2)
    assert type(ours) is BatchNorm
    assert (ours.num_features, ours.eps, ours.momentum, ours.affine) == (7, 1e-3, None, False)
    for spatial_dims, cls in [
        (0, nn.BatchNorm1d),
        (1, nn.BatchNorm1d),
        (2, nn.BatchNorm2d),
        (3, nn.BatchNorm3d),
    ]:
        ref = make_norm(dataclasses.replace(cfg, name="torch_bn"), 7, spatial_dims)
        assert type(ref) is cls
        assert (ref.num_features, ref.eps, ref.momentum, ref.affine) == (7, 1e-3, None, False)


@pytest.mark.parametrize("spatial_dims", [0, 2])
def test_ln_normalizes_each_example_over_channels_and_positions(spatial_dims):
    norm = make_norm(NormConfig(name="ln"), 6, spatial_dims)
    x = 5.0 + 3.0 * torch.randn(4, 6, *[5] * spatial_dims)
    expected = nn.functional.layer_norm(x, x.shape[1:], eps=norm.eps)
    torch.testing.assert_close(norm(x), expected)  # γ = 1, β = 0 at initialization
    assert norm.weight.shape == (6,)  # per-channel γ, not one per position


def test_gn_normalizes_each_example_over_its_groups_of_channels():
    norm = make_norm(NormConfig(name="gn", groups=4), 8, spatial_dims=2)
    x = torch.randn(3, 8, 5, 5) * torch.arange(1.0, 9.0).view(1, 8, 1, 1)  # channels of different scales
    y = norm(x)
    for g in range(4):  # two channels a group, each group standardized on its own (γ = 1, β = 0)
        part = x[:, 2 * g : 2 * g + 2]
        mean, var = part.mean((1, 2, 3), keepdim=True), part.var((1, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(y[:, 2 * g : 2 * g + 2], (part - mean) / (var + norm.eps).sqrt())


def test_unknown_norm_name_lists_the_known_ones():
    with pytest.raises(UserError, match="norm.name='batchnorm'") as error:
        make_norm(NormConfig(name="batchnorm"), 16)
    for name in NORMS:
        assert name in str(error.value)


@pytest.mark.parametrize("groups", [8, 0, -2])
def test_gn_groups_that_do_not_divide_the_channels_are_explained(groups):
    with pytest.raises(UserError) as error:
        make_norm(NormConfig(name="gn", groups=groups), 100, spatial_dims=2)
    message = str(error.value)
    assert f"norm.groups={groups} does not divide the 100 channels" in message
    assert "(1, 2, 4, 5, 10, 20, 25, 50, 100)" in message
