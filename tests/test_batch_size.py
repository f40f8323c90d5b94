"""batch_size: BN's drop from batch 32 to batch 2 beyond GroupNorm's, once both have trained at batch 32."""

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from test_claims import run

analyze = CLAIMS["batch_size"].analyze


def bs_sweep(bn, gn, seeds=3):
    """Per seed, BN's and GroupNorm's final test accuracies at batch sizes 2, 8 and 32: `bn` and `gn` map a
    batch size to a list of accuracies, one per seed."""
    return [
        run(acc[bs][s], seed=s, batch_stats=0.9, **{"norm.name": norm, "data.batch_size": bs})
        for s in range(seeds)
        for norm, acc in (("bn", bn), ("gn", gn))
        for bs in (2, 8, 32)
    ]


def same(*accs, seeds=3):
    """Accuracies at 2, 8 and 32, the same in every seed."""
    return {bs: [acc] * seeds for bs, acc in zip((2, 8, 32), accs)}


def test_supported_when_bn_loses_far_more_than_groupnorm_from_batch_32_to_2():
    # BN: 0.95 -> 0.80, a drop of 15 points; GroupNorm: 0.95 -> 0.94, 1 point: an excess of 14 > 5.
    finding = analyze(bs_sweep(same(0.80, 0.95, 0.95), same(0.94, 0.95, 0.95)))
    assert finding.verdict == SUPPORTED
    assert finding.parts[1].mean == pytest.approx(0.14)


def test_the_drop_is_from_the_papers_32_not_from_the_best_batch_size():
    # BN is best at batch 8 (0.99), 4 points above its 0.95 at 32; from 32 to 2 it loses 3 points, GroupNorm
    # none: an excess of 3 < 5 (from BN's best it would have been 7).
    finding = analyze(bs_sweep(same(0.92, 0.99, 0.95), same(0.95, 0.95, 0.95)))
    assert finding.parts[1].mean == pytest.approx(0.03) and finding.verdict == NOT_SUPPORTED


def test_not_supported_when_both_degrade_alike():
    assert analyze(bs_sweep(same(0.7, 0.95, 0.95), same(0.72, 0.95, 0.95))).verdict == NOT_SUPPORTED


def test_inconclusive_when_seeds_disagree():
    bn = {2: [0.7, 0.7, 0.93], 8: [0.95] * 3, 32: [0.95] * 3}
    assert analyze(bs_sweep(bn, same(0.94, 0.95, 0.95))).verdict == INCONCLUSIVE


def test_inconclusive_when_a_norm_did_not_train_at_batch_32():
    # GroupNorm at 0.5 everywhere has not learned the task: BN's excess (25 points) means nothing.
    finding = analyze(bs_sweep(same(0.7, 0.95, 0.95), same(0.5, 0.5, 0.5)))
    part = finding.parts[1]
    assert finding.verdict == INCONCLUSIVE and part.mean == pytest.approx(0.25)
    assert finding.decided_by == "control failed: training at batch 32"
    assert finding.parts[0].estimate().startswith("50.0 %")


@pytest.mark.parametrize("key,value", [("norm.name", "gn"), ("data.batch_size", 2), ("data.batch_size", 32)])
def test_a_sweep_without_a_compared_arm_is_refused(key, value):
    runs = [r for r in bs_sweep(same(0.7, 0.95, 0.95), same(0.94, 0.95, 0.95)) if r[key] != value]
    with pytest.raises(ValueError, match=f"{key}={value}"):
        analyze(runs)


def test_report_discloses_version_3_and_version_2s_verdict(reported):
    result = reported("batch_size", bs_sweep(same(0.7, 0.95, 0.95), same(0.94, 0.95, 0.95)))
    assert result["verdict"] == SUPPORTED
    assert CLAIMS["batch_size"].version == 3
    assert "Version 2's verdict: supported (standard profile, 2026-12-03)" in CLAIMS["batch_size"].revision
