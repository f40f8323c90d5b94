"""placement: BN before the nonlinearity against after it, final and early accuracy, once every arm trains."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.claims.placement import early_acc
from bnexp.records import Run

analyze = CLAIMS["placement"].analyze


def arm(final, early, seed, activation, position):
    """A run whose test accuracy is `early` at step 100 of 1,000 (10 %) and `final` at the end."""
    config = {
        "seed": seed,
        "norm.name": "bn",
        "model.activation": activation,
        "model.norm_position": position,
    }
    series = {"test/acc": [[50, early / 2], [100, early], [1000, final]]}
    metrics = dict(final_test_acc=final, diverged=False, series=series, steps_planned=1000)
    return Run(pathlib.Path("."), config, metrics)


def sweep(pre, post, seeds=4):
    """`pre`/`post`: (final, early) accuracies per nonlinearity; seeds vary them by ±0.001."""
    return [
        arm(acc[a][0] + 0.001 * (s % 2), acc[a][1] + 0.001 * (s % 2), s, a, position)
        for s in range(seeds)
        for position, acc in (("pre", pre), ("post", post))
        for a in ("sigmoid", "relu")
    ]


BOTH = {"sigmoid": (0.96, 0.90), "relu": (0.97, 0.92)}


def test_early_accuracy_is_read_at_a_tenth_of_the_budget():
    assert early_acc(arm(0.95, 0.7, 0, "relu", "pre")) == 0.7


def test_supported_when_before_g_ends_and_starts_ahead_with_both_nonlinearities():
    post = {"sigmoid": (0.94, 0.85), "relu": (0.95, 0.88)}
    finding = analyze(sweep(BOTH, post))
    assert finding.verdict == SUPPORTED
    # final accuracy (sigmoid, relu), then early accuracy (sigmoid, relu)
    assert [p.mean for p in finding.parts[1:]] == pytest.approx([0.02, 0.02, 0.05, 0.04])


def test_not_supported_when_the_places_tie():
    assert analyze(sweep(BOTH, BOTH)).verdict == NOT_SUPPORTED


def test_inconclusive_when_an_arm_does_not_train():
    post = {"sigmoid": (0.5, 0.3), "relu": (0.5, 0.3)}
    finding = analyze(sweep(BOTH, post))
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == "control failed: every arm trains"


def test_a_sweep_without_both_places_is_refused():
    with pytest.raises(ValueError, match="model.norm_position=post"):
        analyze([r for r in sweep(BOTH, BOTH) if r["model.norm_position"] == "pre"])


def test_the_criterion_is_version_1_fixed_before_its_runs():
    claim = CLAIMS["placement"]
    assert claim.version == 1 and claim.preregistered
    assert claim.revision.startswith("Criterion version 1 (2026-12-05), the claim's first")


def test_its_report_renders(reported):
    result = reported("placement", sweep(BOTH, {"sigmoid": (0.95, 0.86), "relu": (0.96, 0.9)}))
    assert result["verdict"] == SUPPORTED
