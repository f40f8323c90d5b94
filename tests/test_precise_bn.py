"""Claims about precise batch-norm statistics (Wu & Johnson 2021, Sec. 3.1; eval.precise_bn_batches): the
population statistics are the plain average over training batches with the weights frozen, as torch's
update_bn computes them; they are computed on a copy, so the run trains exactly as it would without them;
each evaluation logs the test with them beside the EMA's."""

import json
from copy import deepcopy

import pytest
import torch
from torch.optim.swa_utils import update_bn

from bnexp import records
from bnexp.config import UserError
from bnexp.data import BatchOrder, load_data
from bnexp.engine import train, with_precise_statistics
from bnexp.step import initialized_model

TINY = ["profile=tiny", "optim.lr=0.5"]  # evaluations at steps 20 and 40


def test_precise_statistics_are_the_plain_average_over_training_batches_as_torchs_update_bn(make_cfg):
    cfg = make_cfg("model=cnn", "model.channels=[4,8]", "model.width=16", "norm=bn", "data.batch_size=16")
    data = load_data(cfg.data)
    model = initialized_model(cfg, data, torch.device("cpu"))
    before = deepcopy(model.state_dict())
    precise = with_precise_statistics(model, data, batches=7, batch_size=16, seed=3)
    # The reference: torch's own tool, fed the same batches (the first seven of a run seeded 3).
    order = BatchOrder(data, 16, [3])
    reference = deepcopy(model)
    update_bn([data.batch(order.next()[0])[0] for _ in range(7)], reference)
    for name, buffer in reference.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(precise.get_buffer(name), buffer, msg=name)
    torch.testing.assert_close(model.state_dict(), before)  # the run's own model is untouched
    assert not precise.training


def test_a_run_with_precise_statistics_trains_exactly_as_without_and_logs_them_at_each_evaluation(
    make_cfg, tmp_path
):
    # Dropout draws from torch's global generator: the precise pass must leave it where it was.
    common = [*TINY, "model.dropout=0.2", "data.batch_size=8", "norm.momentum=0.5"]
    plain = train(make_cfg(*common), str(tmp_path / "plain"))
    precise = train(make_cfg(*common, "eval.precise_bn_batches=10"), str(tmp_path / "precise"))
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text())["series"] for d in ("plain", "precise"))
    assert {tag: b[tag] for tag in a} == a
    assert [step for step, _ in b[records.TEST_ACC_PRECISE]] == [20, 40]
    assert precise[records.PRECISE_ACC] == b[records.TEST_ACC_PRECISE][-1][1]
    assert precise[records.FINAL_TEST_ACC] == plain[records.FINAL_TEST_ACC]


def test_norms_without_running_statistics_have_no_precise_test(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY, "norm=ln", "eval.precise_bn_batches=5"), str(tmp_path))
    assert records.PRECISE_ACC not in metrics


def test_batch_renorm_is_refused_with_a_reason(make_cfg, tmp_path):
    with pytest.raises(UserError, match="batch renorm normalizes by those same statistics"):
        train(make_cfg(*TINY, "norm=batch_renorm", "eval.precise_bn_batches=5"), str(tmp_path))
