"""precise_bn: precise statistics against the EMA's, within each run, at a large momentum and at small
batches, once BN has trained."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.records import Run

analyze = CLAIMS["precise_bn"].analyze


def run(ema, precise, seed, momentum, batch):
    config = {"seed": seed, "norm.name": "bn", "norm.momentum": momentum, "data.batch_size": batch}
    metrics = dict(
        final_test_acc=ema,
        final_test_acc_precise_bn=precise,
        final_test_acc_batch_stats=precise - 0.01,
        diverged=False,
        series={"test/acc": [[100, ema]]},
    )
    return Run(pathlib.Path("."), config, metrics)


def sweep(gains, seeds=4, acc=0.9):
    """gains: (momentum, batch) -> precise minus EMA accuracy; seeds vary it by ±0.002."""
    return [run(acc, acc + g + 0.002 * (s % 2), s, m, b) for s in range(seeds) for (m, b), g in gains.items()]


def test_supported_when_precise_statistics_recover_accuracy_at_a_large_momentum_and_small_batches():
    finding = analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03, (0.5, 4): 0.08}))
    assert finding.verdict == SUPPORTED
    assert [p.mean for p in finding.parts] == pytest.approx([0.901, 0.051, 0.031, 0.001])
    assert finding.parts[3].verdict == NOT_SUPPORTED  # the check at torch's defaults: reported only


def test_not_supported_when_the_ema_is_as_good():
    assert analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.0, (0.1, 4): 0.0})).verdict == NOT_SUPPORTED


def test_inconclusive_when_bn_did_not_train():
    finding = analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03}, acc=0.3))
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == "control failed: BN trains"


def test_a_sweep_without_small_batches_is_refused():
    with pytest.raises(ValueError, match="data.batch_size=4"):
        analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.05}))


def test_its_report_renders(reported):
    assert reported("precise_bn", sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03}))["verdict"] == (
        SUPPORTED
    )
