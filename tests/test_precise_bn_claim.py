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
    gains = {p.name: p for p in finding.parts if not p.effect.control}
    assert gains["precise minus EMA (momentum 0.5, batch 32)"].mean == pytest.approx(0.051)
    assert gains["precise minus EMA (momentum 0.1, batch 4)"].mean == pytest.approx(0.031)
    check = gains["precise minus EMA where the EMA should do (momentum 0.1, batch 32)"]
    assert check.verdict == SUPPORTED and not check.effect.decides  # the EMA does at torch's defaults


def test_not_supported_when_the_ema_is_as_good():
    assert analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.0, (0.1, 4): 0.0})).verdict == NOT_SUPPORTED


def test_inconclusive_when_bn_did_not_train():
    finding = analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03}, acc=0.3))
    assert finding.verdict == INCONCLUSIVE


def test_a_setting_where_bn_did_not_train_gates_only_its_own_comparison():
    runs = sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03})
    for r in runs:  # batch 4 learned nothing: its precise-minus-EMA gap means nothing
        if r["data.batch_size"] == 4:
            r.metrics.update(final_test_acc=0.2, final_test_acc_precise_bn=0.23)
    finding = analyze(runs)
    assert finding.verdict == INCONCLUSIVE
    assert (
        finding.decided_by
        == "precise minus EMA (momentum 0.1, batch 4) (control failed: BN trains (momentum 0.1, batch 4))"
    )


def test_a_sweep_without_small_batches_is_refused():
    with pytest.raises(ValueError, match="data.batch_size=4"):
        analyze(sweep({(0.1, 32): 0.0, (0.5, 32): 0.05}))


def test_its_report_renders(reported):
    assert reported("precise_bn", sweep({(0.1, 32): 0.0, (0.5, 32): 0.05, (0.1, 4): 0.03}))["verdict"] == (
        SUPPORTED
    )
