"""Claims about batch renormalization (Ioffe 2017, Algorithm 1): with r_max = 1 and d_max = 0 it is BN; with
its clips open it normalizes each example by the running statistics while the gradient stays BN's, scaled by
r; r and d are clipped as the paper writes; the clips follow the paper's schedule."""

import math

import pytest
import torch
from torch.nn import functional as F

from bnexp.config import NormConfig
from bnexp.models import make_norm
from bnexp.norm import BatchNorm, BatchRenorm, relaxed

C = 3
SHAPES = [(6, C), (4, C, 5), (2, C, 3, 4), (2, C, 2, 2, 3)]


def with_running_stats(layer, mean, var):
    with torch.no_grad():
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
    return layer


def per_channel(t, x):
    return t.view(1, -1, *[1] * (x.dim() - 2))


@pytest.mark.parametrize("shape", SHAPES)
def test_with_r_max_1_and_d_max_0_it_is_batch_norm(shape):
    torch.manual_seed(0)
    stats = torch.randn(C), torch.rand(C) + 0.5  # running statistics far from the batch's: r, d would matter
    renorm = with_running_stats(BatchRenorm(C, r_max=1.0, d_max=0.0, warmup=0), *stats)
    bn = with_running_stats(BatchNorm(C, fast=False), *stats)
    with torch.no_grad():
        for p in (*renorm.parameters(), *bn.parameters()):
            p.copy_(torch.arange(1.0, C + 1))
    for _ in range(2):
        x = 2.0 + 3.0 * torch.randn(shape)
        xs = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys = renorm(xs[0]), bn(xs[1])
        torch.testing.assert_close(*ys)
        dy = torch.randn(shape)
        ys[0].backward(dy), ys[1].backward(dy)
        torch.testing.assert_close(xs[0].grad, xs[1].grad)
        torch.testing.assert_close(renorm.weight.grad, bn.weight.grad)
        torch.testing.assert_close(renorm.state_dict(), bn.state_dict())


def test_unclipped_it_normalizes_by_the_running_statistics_with_bns_gradient_times_r():
    # A hand computation on 4 examples of one channel: batch mean 2.5, biased variance 1.25; running mean 1,
    # running variance 4 (eps 0). Value (x − 1)/2; r = √1.25/2, d = (2.5 − 1)/2.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]], requires_grad=True)
    layer = with_running_stats(
        BatchRenorm(1, eps=0.0, affine=False, r_max=math.inf, d_max=math.inf, warmup=0), torch.ones(1), 4
    )
    y = layer(x)
    torch.testing.assert_close(y, (x.detach() - 1) / 2)
    dy = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    y.backward(dy)
    # BN's gradient of x̂, (dy − mean(dy) − x̂·mean(dy·x̂))/σ_B, times the constant r = σ_B/2: (…)/2.
    x_hat = (x.detach() - 2.5) / math.sqrt(1.25)
    torch.testing.assert_close(x.grad, (dy - dy.mean() - x_hat * (dy * x_hat).mean()) / 2)
    # The running statistics moved by the batch's mean and unbiased variance (momentum 0.1).
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.9 * 1 + 0.1 * 2.5]))
    torch.testing.assert_close(layer.running_var, torch.tensor([0.9 * 4 + 0.1 * 5 / 3]))


def test_unclipped_an_examples_output_does_not_depend_on_its_batch_mates():
    torch.manual_seed(0)
    layer = BatchRenorm(C, r_max=math.inf, d_max=math.inf, warmup=0, momentum=0.0)  # statistics held
    with_running_stats(layer, torch.randn(C), torch.rand(C) + 0.5)
    x = torch.randn(8, C)
    others = torch.cat([x[:1], 10 * torch.randn(7, C) - 4])
    torch.testing.assert_close(layer(x)[0], layer(others)[0])


def test_r_and_d_are_clipped_to_their_bounds():
    # One channel: the batch's σ_B = √1.25 is 4·√1.25 times the running σ (running var 1/16), so r = r_max
    # = 2; d = (2.5 − 0)·4 = 10 is clipped to d_max = 0.5. Then y = x̂·2 + 0.5.
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    layer = BatchRenorm(1, eps=0.0, affine=False, r_max=2.0, d_max=0.5, warmup=0, r_max_at=0, d_max_at=0)
    with_running_stats(layer, torch.zeros(1), 1 / 16)
    x_hat = (x - 2.5) / math.sqrt(1.25)
    torch.testing.assert_close(layer(x), x_hat * 2 + 0.5)


def test_the_clips_follow_the_papers_schedule():
    # Plain BN (r_max 1, d_max 0) for the warm-up, then linear to the limits (Ioffe 2017, Sec. 4).
    assert [relaxed(1.0, 3.0, step, 2, 6) for step in range(8)] == [1, 1, 1, 1.5, 2, 2.5, 3, 3]
    assert [relaxed(0.0, 5.0, step, 2, 4) for step in range(6)] == [0, 0, 0, 2.5, 5, 5]
    assert relaxed(1.0, math.inf, 1, 1, 10) == math.inf  # an unclipped limit: open at the warm-up's end
    layer = BatchRenorm(C, warmup=2, r_max=3.0, d_max=5.0, r_max_at=6, d_max_at=4)
    seen = []
    for _ in range(5):
        seen.append(layer.clips())
        layer(torch.randn(4, C))
    assert seen == [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5)]


def test_eval_is_batch_norms_inference():
    torch.manual_seed(0)
    layer = BatchRenorm(C, r_max=math.inf, d_max=math.inf, warmup=0)
    for _ in range(3):
        layer(torch.randn(5, C, 4) * 2 + 1)
    layer.eval()
    x = torch.randn(5, C, 4)
    expected = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, eps=layer.eps)
    torch.testing.assert_close(layer(x), expected)


def test_the_registry_builds_it_from_the_norm_keys_null_meaning_unclipped():
    cfg = NormConfig(name="batch_renorm", r_max=None, d_max=2.0, warmup=7, r_max_at=9, d_max_at=8)
    layer = make_norm(cfg, 4, spatial_dims=2)
    assert type(layer) is BatchRenorm
    assert (layer.r_max, layer.d_max, layer.warmup, layer.r_max_at, layer.d_max_at) == (math.inf, 2, 7, 9, 8)
    default = make_norm(NormConfig(name="batch_renorm"), 4)
    assert (default.r_max, default.d_max, default.warmup, default.r_max_at, default.d_max_at) == (
        3,
        5,
        5000,
        40000,
        25000,
    )


def test_bad_clips_are_refused():
    with pytest.raises(ValueError, match="r_max >= 1"):
        BatchRenorm(C, r_max=0.5)
