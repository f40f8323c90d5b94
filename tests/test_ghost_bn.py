"""Claims about ghost batch normalization (Hoffer et al. 2017, Algorithm 1): in training each ghost batch is
normalized by its own statistics, which move the running statistics one ghost batch at a time, and the
gradient is that of the ghost batches' losses summed; evaluation is unchanged; every BN variant and the
vectorized trainer take it; other norms refuse it."""

import copy

import pytest
import torch
from torch import nn

from bnexp.config import NormConfig, UserError
from bnexp.models import make_norm
from bnexp.norm import BatchNorm, BatchRenorm, ghost_batches

C = 4
KERNELS = {"textbook": False, "fast": True}


def randomized(layer):
    with torch.no_grad():
        layer.weight.normal_(1.0, 0.5)
        layer.bias.normal_()
    return layer


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", [(8, C), (6, C, 5), (4, C, 3, 2)])
def test_ghost_batches_are_torchs_batch_norm_applied_to_each_in_turn(shape, kernel):
    torch.manual_seed(0)
    ghost = randomized(BatchNorm(C, momentum=0.3, fast=KERNELS[kernel], ghost_batch_size=2))
    ref = nn.BatchNorm1d(C, momentum=0.3) if len(shape) <= 3 else nn.BatchNorm2d(C, momentum=0.3)
    ref.load_state_dict(ghost.state_dict())
    x = 1.0 + 2.0 * torch.randn(shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = ghost(xa)
    expected = torch.cat([ref(part) for part in xb.split(2)])  # one BN step per ghost batch, in order
    torch.testing.assert_close(y, expected)
    dy = torch.randn_like(y)
    y.backward(dy), expected.backward(dy)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(ghost.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ghost.bias.grad, ref.bias.grad)
    torch.testing.assert_close(ghost.state_dict(), ref.state_dict())  # running stats, batches counted
    ghost.eval(), ref.eval()
    torch.testing.assert_close(ghost(x), ref(x))  # evaluation as BN's


def test_a_last_ghost_batch_of_one_example_joins_the_one_before():
    assert [len(g) for g in ghost_batches(torch.zeros(7, C), 2)] == [2, 2, 3]
    assert [len(g) for g in ghost_batches(torch.zeros(8, C), 3)] == [3, 3, 2]
    assert [len(g) for g in ghost_batches(torch.zeros(5, C), 8)] == [5]


def test_a_batch_no_larger_than_a_ghost_batch_is_plain_batch_norm():
    torch.manual_seed(1)
    ghost = randomized(BatchNorm(C, ghost_batch_size=8))
    plain = copy.deepcopy(ghost)
    plain.ghost_batch_size = None
    x = torch.randn(8, C)
    torch.testing.assert_close(ghost(x), plain(x))


def test_batch_renorm_renormalizes_each_ghost_batch_toward_the_running_statistics_before_it():
    torch.manual_seed(2)
    # The clips at their limits from the start: the schedule counts steps, one here and three one by one.
    clips = dict(r_max=1.5, d_max=0.5, warmup=0, r_max_at=0, d_max_at=0)
    ghost = randomized(BatchRenorm(C, momentum=0.5, ghost_batch_size=3, **clips))
    with torch.no_grad():
        ghost.running_mean.normal_()
        ghost.running_var.uniform_(0.5, 2.0)
    one_by_one = copy.deepcopy(ghost)
    one_by_one.ghost_batch_size = None
    x = 2.0 * torch.randn(9, C)
    torch.testing.assert_close(ghost(x), torch.cat([one_by_one(part) for part in x.split(3)]))
    torch.testing.assert_close(ghost.state_dict(), one_by_one.state_dict())


def test_batch_renorms_schedule_counts_steps_not_ghost_batches():
    # The paper's schedule is in SGD steps: a batch of 12 in ghost batches of 3 is one step, four batches.
    ghost = BatchRenorm(C, warmup=2, r_max=3.0, d_max=5.0, r_max_at=6, d_max_at=4, ghost_batch_size=3)
    seen = []
    for _ in range(5):
        ghost(torch.randn(12, C))
        seen.append(ghost.step_clips)
    assert int(ghost.num_batches_tracked) == 20
    assert seen == [(1, 0), (1, 0), (1, 0), (1.5, 2.5), (2, 5)]


@pytest.mark.parametrize("name", ["bn", "noisy_bn", "batch_renorm"])
def test_the_batch_norms_take_ghost_batches_from_the_config(name):
    layer = make_norm(NormConfig(name=name, ghost_batch_size=4), C)
    assert layer.ghost_batch_size == 4 and "ghost_batch_size=4" in repr(layer)
    assert layer.train()(torch.randn(10, C)).shape == (10, C)


@pytest.mark.parametrize("name", ["torch_bn", "gn", "ln", "none"])
def test_norms_without_our_batch_statistics_refuse_ghost_batches(name):
    with pytest.raises(UserError, match=f"norm.ghost_batch_size=4 .* but norm={name} has none to split"):
        make_norm(NormConfig(name=name, ghost_batch_size=4), C)
