"""placement: BN before the nonlinearity against after it, final and early accuracy, once every arm trains."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.claims.placement import early_acc
from bnexp.records import Run

analyze = CLAIMS["placement"].analyze


def arm(final, early, seed, activation, position, lr=0.5, loss=0.1):
    """A run whose test accuracy is `early` at step 100 of 1,000 (10 %) and `final` at the end."""
    config = {
        "seed": seed,
        "norm.name": "bn",
        "model.activation": activation,
        "model.norm_position": position,
        "optim.lr": lr,
    }
    series = {"test/acc": [[50, early / 2], [100, early], [1000, final]]}
    metrics = dict(
        final_test_acc=final, final_train_loss=loss, diverged=False, series=series, steps_planned=1000
    )
    return Run(pathlib.Path("."), config, metrics)


def sweep(pre, post, seeds=4):
    """`pre`/`post`: (final, early) accuracies per nonlinearity at the rate of lowest training loss (0.5);
    seeds vary them by ±0.001. The other rates (0.1, 2) fit worse and would tie."""
    runs = []
    for s in range(seeds):
        for position, acc in (("pre", pre), ("post", post)):
            for a in ("sigmoid", "relu"):
                final, early = acc[a][0] + 0.001 * (s % 2), acc[a][1] + 0.001 * (s % 2)
                runs.append(arm(final, early, s, a, position))
                runs += [arm(0.5, 0.3, s, a, position, lr, loss=1.0) for lr in (0.1, 2)]
    return runs


BOTH = {"sigmoid": (0.96, 0.90), "relu": (0.97, 0.92)}


def test_early_accuracy_is_read_at_a_tenth_of_the_budget():
    assert early_acc(arm(0.95, 0.7, 0, "relu", "pre")) == 0.7


def test_each_placement_is_compared_at_its_rate_of_lowest_training_loss_not_best_test_accuracy():
    runs = sweep(BOTH, BOTH)
    # a rate with a higher test accuracy but a worse training loss is not chosen
    runs.append(arm(0.99, 0.99, 0, "sigmoid", "post", lr=3, loss=0.5))
    parts = {p.name: p for p in analyze(runs).parts}
    assert parts["final accuracy, before minus after (sigmoid)"].per_seed["0"] == pytest.approx(0.0)


def test_supported_when_before_g_ends_and_starts_ahead_with_both_nonlinearities():
    post = {"sigmoid": (0.94, 0.85), "relu": (0.95, 0.88)}
    finding = analyze(sweep(BOTH, post))
    assert finding.verdict == SUPPORTED
    means = {p.name: p.mean for p in finding.parts}
    assert means["final accuracy, before minus after (sigmoid)"] == pytest.approx(0.02)
    assert means["early accuracy, before minus after (relu)"] == pytest.approx(0.04)


def test_not_supported_when_the_places_tie():
    assert analyze(sweep(BOTH, BOTH)).verdict == NOT_SUPPORTED


def test_a_nonlinearity_whose_placement_does_not_train_gates_only_its_own_parts():
    post = {"sigmoid": (0.5, 0.3), "relu": (0.95, 0.88)}  # relu: before g ahead, supported
    finding = analyze(sweep(BOTH, post))
    assert finding.verdict == INCONCLUSIVE
    assert "control failed: both placements train (sigmoid)" in finding.decided_by
    assert "relu" not in finding.decided_by


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
