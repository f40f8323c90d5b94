"""Claims about bnexp.norm: our BatchNorm is torch's BatchNorm, with either kernel (the textbook one, also
under torch.func, and the fast one bnexp trains with), and the registry builds every norm for every input
rank."""

import dataclasses

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn import functional as F

from bnexp import fast_norm
from bnexp.config import NormConfig, UserError
from bnexp.models import NORMS, make_norm
from bnexp.norm import BatchNorm

TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
C = 5
# (N, C), (N, C, L), (N, C, H, W), (N, C, D, H, W); each also with N = 2 and spatial size 1.
SHAPES = [(8, C), (2, C), (4, C, 7), (2, C, 1), (4, C, 3, 6), (2, C, 1, 1), (2, C, 2, 3, 4), (2, C, 1, 1, 1)]


KERNELS = {"textbook": False, "fast": True}


def randomized_pair(shape, fast=False, **kwargs):
    """torch's BatchNorm with random γ, β and running statistics, and ours loaded from its state."""
    ref = TORCH_BN[len(shape)](C, **kwargs)
    with torch.no_grad():
        for name, t in ref.named_parameters():
            t.normal_(mean=1.0 if name == "weight" else 0.0)
        if ref.track_running_stats:
            ref.running_mean.normal_()
            ref.running_var.uniform_(0.5, 2.0)
            ref.num_batches_tracked.fill_(3)
    ours = BatchNorm(C, fast=fast, **kwargs)
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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch_in_eval_then_training_steps_then_eval(
    shape, affine, track_running_stats, momentum, kernel
):
    torch.manual_seed(0)
    ours, ref = randomized_pair(
        shape, KERNELS[kernel], momentum=momentum, affine=affine, track_running_stats=track_running_stats
    )
    ours.eval(), ref.eval()
    assert_same_step(ours, ref, torch.randn(shape))
    ours.train(), ref.train()
    for _ in range(3):
        # A nonzero mean and a non-unit spread, so that every statistic matters.
        assert_same_step(ours, ref, 2.0 + 3.0 * torch.randn(shape))
    ours.eval(), ref.eval()
    assert_same_step(ours, ref, 2.0 + 3.0 * torch.randn(shape))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(64, C), (8, C, 4, 4)])
def test_statistics_stay_exact_when_the_mean_dwarfs_the_spread(shape, kernel):
    """Two-pass variance: E[x²] − μ² would lose every digit of σ² = 0.01 next to μ² = 10⁶."""
    torch.manual_seed(0)
    x = 1000.0 + 0.1 * torch.randn(shape)
    # momentum None: after one batch the running mean is that batch's, ~1000, as extreme in eval as in
    # training
    ours = BatchNorm(C, momentum=None, fast=KERNELS[kernel])
    exact = TORCH_BN[len(shape)](C, momentum=None, dtype=torch.float64)
    y, y_exact = ours(x), exact(x.double())
    torch.testing.assert_close(ours.running_mean, exact.running_mean.float())
    torch.testing.assert_close(ours.running_var, exact.running_var.float())
    # y inherits the float32 rounding of μ ≈ 1000 (3e-5), divided by σ = 0.1.
    torch.testing.assert_close(y, y_exact.float(), rtol=0, atol=1e-3)
    # eval with the same (float32) running statistics: x·s + (β − μ·s) would lose ~1e-3 here
    exact.load_state_dict(ours.state_dict())
    ours.eval(), exact.eval()
    torch.testing.assert_close(ours(x), exact(x.double()).float())


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 1), (3, 2, 4), (2, 3, 2, 2)])
def test_gradients_and_second_derivatives_match_finite_differences(shape, affine, training, kernel):
    """The textbook backward is differentiable itself; the fast kernel's second derivative is the
    textbook's."""
    torch.manual_seed(0)
    bn = BatchNorm(shape[1], affine=affine, fast=KERNELS[kernel], dtype=torch.float64).train(training)
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    params = {name: torch.randn_like(p, requires_grad=True) for name, p in bn.named_parameters()}
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    def f(x, *values):
        return functional_call(bn, dict(zip(params, values)), (x,))

    inputs = (x, *params.values())
    # gradcheck runs backward twice through one graph: the fast kernel's second is the textbook one, equal to
    # its first up to round-off (its sums in another order), where gradcheck expects the very same bits
    nondet_tol = 1e-12 if bn.fast and training else 0.0
    assert torch.autograd.gradcheck(f, inputs, nondet_tol=nondet_tol)
    assert torch.autograd.gradgradcheck(f, inputs, nondet_tol=nondet_tol)


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


def test_the_constructor_takes_torchs_arguments_in_torchs_order():
    args = (C, 1e-3, 0.2, False, True, "cpu", torch.float64)  # ..., track_running_stats, device, dtype
    ours, ref = BatchNorm(*args), nn.BatchNorm1d(*args)
    assert (ours.eps, ours.momentum, ours.affine, ours.running_mean.dtype, ours.fast) == (
        ref.eps,
        ref.momentum,
        ref.affine,
        ref.running_mean.dtype,
        False,
    )
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_resets_and_repr_match_torch():
    ours, ref = randomized_pair((4, C))
    ours.reset_running_stats(), ref.reset_running_stats()
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    ours.reset_parameters(), ref.reset_parameters()
    torch.testing.assert_close(ours.state_dict(), ref.state_dict())
    assert repr(BatchNorm(3, momentum=None)) == (
        "BatchNorm(3, eps=1e-05, momentum=None, affine=True, track_running_stats=True)"
    )
    assert repr(BatchNorm(3, fast=True)).endswith("track_running_stats=True, fast=True)")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("track_running_stats", [True, False])
@pytest.mark.parametrize("shape", [(1, C), (1, C, 1), (1, C, 1, 1)])
def test_one_value_per_channel_is_refused_when_batch_statistics_are_needed(
    shape, track_running_stats, kernel
):
    ours, ref = randomized_pair(shape, KERNELS[kernel], track_running_stats=track_running_stats)
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
def test_the_fast_kernel_computes_the_textbook_function(shape, affine, monkeypatch):
    """The same outputs, gradients and running statistics, in float64 (no torch reference in between), from
    the fast kernel's own backward (the textbook fallback is kept out)."""
    torch.manual_seed(0)
    x = 2.0 + 3.0 * torch.randn(shape, dtype=torch.float64)
    dy = torch.randn(shape, dtype=torch.float64)
    textbook, fast = (
        BatchNorm(shape[1], momentum=0.3, affine=affine, fast=f, dtype=torch.float64)
        for f in KERNELS.values()
    )
    if affine:
        with torch.no_grad():
            for layer in (textbook, fast):
                layer.weight.copy_(torch.linspace(0.5, 2, shape[1]))
                layer.bias.copy_(torch.linspace(-1, 1, shape[1]))
    monkeypatch.setattr(
        fast_norm, "_textbook_backward", lambda *args: pytest.fail("the fast backward fell back")
    )
    results = []
    for layer in (textbook, fast):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(dy)
        results.append((y, xi.grad, *(p.grad for p in layer.parameters()), *layer.buffers()))
    torch.testing.assert_close(results[1], results[0])
    assert type(results[1][0].grad_fn).__name__ == "FusedBatchNormBackward"


def test_torch_func_transforms_the_textbook_kernel():
    bn = BatchNorm(3, track_running_stats=False)  # no buffers for grad() to refuse to mutate
    ref = nn.BatchNorm1d(3, track_running_stats=False)
    x = torch.randn(4, 3)
    torch.testing.assert_close(grad(lambda x: (bn(x) ** 3).sum())(x), grad(lambda x: (ref(x) ** 3).sum())(x))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("affine", [True, False])
def test_backward_twice_through_a_retained_graph_and_in_place_ops_on_the_output(affine, kernel):
    """The fast kernel's first backward uses up the forward's x − μ; a second one, through the retained graph,
    differentiates the textbook function. y is never that tensor itself, so in-place ops on y are safe."""
    torch.manual_seed(0)
    ours, ref = randomized_pair((8, C, 3), KERNELS[kernel], affine=affine)
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


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dy_kind", ["channels_last", "expanded"])
def test_channels_last_input_and_unusual_gradient_layouts_match_torch(dy_kind, kernel):
    torch.manual_seed(0)
    ours, ref = randomized_pair((4, C, 3, 6), KERNELS[kernel])
    x = (2.0 + 3.0 * torch.randn(4, C, 3, 6)).to(memory_format=torch.channels_last)
    dy = torch.randn(4, C, 3, 6).to(memory_format=torch.channels_last)
    if dy_kind == "expanded":  # what y.sum().backward() sends: one value, stride 0 everywhere
        dy = torch.tensor(0.7).expand(4, C, 3, 6)
    assert_same_step(ours, ref, x, dy)


CONFIG_KINDS = {
    "dataclass": lambda **kw: NormConfig(**kw),
    "omegaconf": lambda **kw: OmegaConf.structured(NormConfig(**kw)),
}


def _batch_norm(x, norm):  # torch's functional batch norm in training mode, by the batch's statistics
    return F.batch_norm(x, None, None, training=True, eps=norm.eps)


def _noise(x, noise):  # Santurkar et al.'s noise, the layer's last draw: s·x + m, one s and m per value
    s, m = noise.noise
    return s * x + m


# What each registry entry computes in training mode at initialization (γ = 1, β = 0), by torch's functional
# ops; in eval mode the ones with running statistics use those. A layer built wrong, or swapped for another,
# gives other values.
REFERENCES = {
    "none": lambda x, norm: x,
    "bn": _batch_norm,
    "torch_bn": _batch_norm,
    "noisy_bn": lambda x, norm: _noise(_batch_norm(x, norm), norm.perturb),
    "noisy_none": _noise,
    "batch_renorm": _batch_norm,  # plain BN for its first 5,000 batches, as the paper's schedule has it
    "ln": lambda x, norm: F.layer_norm(x, x.shape[1:], eps=norm.eps),
    "gn": lambda x, norm: F.group_norm(x, 4, eps=norm.eps),
}


@pytest.mark.parametrize("kind", CONFIG_KINDS)
@pytest.mark.parametrize("spatial_dims", [0, 1, 2, 3])
@pytest.mark.parametrize("name", NORMS)
def test_every_norm_computes_its_function_on_input_of_its_rank(name, spatial_dims, kind):
    assert set(REFERENCES) == set(NORMS)
    norm = make_norm(CONFIG_KINDS[kind](name=name), num_features=16, spatial_dims=spatial_dims)
    x = 1.0 + 2.0 * torch.randn(4, 16, *[3] * spatial_dims)
    torch.testing.assert_close(norm(x), REFERENCES[name](x, norm))
    norm.eval()
    if hasattr(norm, "running_mean"):  # moved by the training batch: normalized by them now
        expected = F.batch_norm(x, norm.running_mean, norm.running_var, eps=norm.eps)
        assert not torch.equal(norm.running_mean, torch.zeros(16))
    else:  # the noise is for training only
        expected = x if name == "noisy_none" else REFERENCES[name](x, norm)
    torch.testing.assert_close(norm(x), expected)


def test_bn_entries_follow_the_config():
    cfg = NormConfig(name="bn", eps=1e-3, momentum=None, affine=False)
    ours = make_norm(cfg, 7, spatial_dims=2)
    assert type(ours) is BatchNorm
    assert (ours.num_features, ours.eps, ours.momentum, ours.affine, ours.fast) == (
        7,
        1e-3,
        None,
        False,
        True,
    )
    assert make_norm(dataclasses.replace(cfg, fast=False), 7).fast is False
    for spatial_dims, cls in [
        (0, nn.BatchNorm1d),
        (1, nn.BatchNorm1d),
        (2, nn.BatchNorm2d),
        (3, nn.BatchNorm3d),
    ]:
        ref = make_norm(dataclasses.replace(cfg, name="torch_bn"), 7, spatial_dims)
        assert type(ref) is cls
        assert (ref.num_features, ref.eps, ref.momentum, ref.affine) == (7, 1e-3, None, False)


@pytest.mark.parametrize("name", ["bn", "torch_bn", "ln", "gn"])
def test_gamma_starts_at_norm_gamma_init_and_scales_the_normalized_values(name):
    cfg = NormConfig(name=name, gamma_init=0.1)
    norm = make_norm(cfg, 8)
    assert torch.equal(norm.weight, torch.full((8,), 0.1))
    x = torch.randn(6, 8)
    torch.testing.assert_close(norm(x), 0.1 * REFERENCES[name](x, norm))  # β = 0: y = 0.1·x̂
    assert make_norm(dataclasses.replace(cfg, affine=False), 8).weight is None  # no γ to start


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


# ---- every input and argument torch's BatchNorm takes -------------------------------------------------
# (N, C) and (N, C, L) for BatchNorm1d, (N, C, H, W) for 2d, (N, C, D, H, W) for 3d.
EVERY_DIM = [(8, C), (4, C, 7), (4, C, 3, 6), (2, C, 2, 3, 4)]
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(0, *s[1:]) for s in EVERY_DIM])
def test_an_empty_batch_is_answered_as_torch_answers_it(shape, dtype, training, kernel):
    # An empty output, empty input gradients, zero γ/β gradients; in training the batch is counted in
    # num_batches_tracked and the running statistics stay as they were (not NaN).
    ours, ref = randomized_pair(shape, KERNELS[kernel], dtype=dtype)
    ours.train(training), ref.train(training)
    assert_same_step(ours, ref, torch.randn(shape, dtype=dtype))
    assert torch.isfinite(ours.running_mean).all() and torch.isfinite(ours.running_var).all()


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", EVERY_DIM)
def test_gamma_without_beta_is_torchs_bias_false(shape, dtype, kernel):
    torch.manual_seed(0)
    ours, ref = randomized_pair(shape, KERNELS[kernel], bias=False, dtype=dtype)
    assert ours.bias is None and ours.weight.dtype == dtype
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"weight", *BUFFERS}
    assert ours.extra_repr().removesuffix(", fast=True") == ref.extra_repr()
    for training in (False, True, True, False):  # eval, two training steps, eval again
        ours.train(training), ref.train(training)
        assert_same_step(ours, ref, (2.0 + 3.0 * torch.randn(shape)).to(dtype))


def test_tools_that_look_for_torchs_batch_norm_layers_find_ours():
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, C), BatchNorm(C, momentum=0.3), nn.ReLU(), nn.Linear(C, 2))
    assert isinstance(model[1], _BatchNorm)
    loader = [3.0 * torch.randn(16, 6) + 1.0 for _ in range(4)]
    model.eval()
    update_bn(loader, model)  # the population statistics anew: the plain average over the loader's batches
    with torch.no_grad():
        h = [model[0](x) for x in loader]
    torch.testing.assert_close(model[1].running_mean, torch.stack([b.mean(0) for b in h]).mean(0))
    torch.testing.assert_close(model[1].running_var, torch.stack([b.var(0) for b in h]).mean(0))
    assert model[1].momentum == 0.3 and not model.training  # update_bn puts both back
