"""sharpness: how far past 2/λ_0 the plain network trains, BN's largest trained step size over the plain
network's, and (beside the verdict) whether the sharpness rises to 2/η."""

import math
import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.records import Run

analyze = CLAIMS["sharpness"].analyze
RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def run(norm, lr, seed, lambda_0, trains, peak=None):
    """A run of full-batch GD: sharpness λ_0 at step 1 rising to `peak` (default 2/η), its training-mode loss
    at the end 0.1 if it trains, else 2.3 (its eval-mode loss 0.1 either way: BN's lagging running
    statistics must not decide whether it trained)."""
    peak = 2 / lr if peak is None else peak
    series = {
        "sharpness/lambda_max": [[1, lambda_0], [50, peak], [100, peak * 0.9]],
        "batch/loss": [[50, 1.5], [100, 0.1 if trains else 2.3]],
    }
    metrics = dict(final_test_acc=0.9 if trains else 0.1, final_train_loss=0.1, diverged=False, series=series)
    return Run(pathlib.Path("."), {"seed": seed, "norm.name": norm, "optim.lr": lr}, metrics)


def sweep(plain_max, bn_max, lambda_0=4.0, seeds=4):
    """The plain network trains up to `plain_max`, BN up to `bn_max`; λ_0 varies by ±1 % over seeds."""
    return [
        run(norm, lr, s, lambda_0 * (1 + 0.01 * (s % 2)), lr <= top)
        for s in range(seeds)
        for norm, top in (("none", plain_max), ("bn", bn_max))
        for lr in RATES
    ]


def parts(finding):
    return {p.name: p for p in finding.parts}


def test_supported_when_the_plain_network_stops_below_its_limit_and_bn_goes_two_steps_further():
    # λ_0 = 4: the limit 2/λ_0 = 0.5; the plain network trains up to 0.25 (λ_0·η/2 = 0.5), BN up to 1.0.
    finding = analyze(sweep(0.25, 1.0))
    assert finding.verdict == SUPPORTED
    p = parts(finding)
    assert p["how far past 2/λ_0 the plain network trains"].mean == pytest.approx(0.5, rel=0.01)
    assert p["BN's largest trained step size over the plain network's"].mean == pytest.approx(math.log10(4))
    assert p["sharpness rises to 2/η (plain)"].mean == pytest.approx(1.0)  # peak = 2/η in every run


def test_not_supported_when_the_plain_network_trains_far_beyond_its_initial_limit():
    # trained up to η = 2 with λ_0 = 4: λ_0·η/2 = 4, a catapult past the classical limit
    finding = analyze(sweep(2.0, 4.0))
    assert finding.verdict == NOT_SUPPORTED
    assert parts(finding)["how far past 2/λ_0 the plain network trains"].verdict == NOT_SUPPORTED


def test_not_supported_when_bn_trains_no_further():
    assert analyze(sweep(0.25, 0.25)).verdict == NOT_SUPPORTED


def test_inconclusive_when_a_network_trains_at_no_step_size():
    finding = analyze(sweep(0.25, 0.1))  # BN trains at none of the rates (all above 0.1)
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by == "control failed: both networks train at the smallest step size"


def test_the_initial_sharpness_is_the_first_steps():
    finding = analyze(sweep(0.25, 1.0, lambda_0=8.0))  # limit 0.25: trained at it, λ_0·η/2 = 1
    assert parts(finding)["how far past 2/λ_0 the plain network trains"].mean == pytest.approx(1.0, rel=0.01)


def test_a_network_that_trains_at_the_grids_top_gives_a_bound_kept_only_where_it_decides():
    # BN trains at every rate up to the top (8): its largest is at least 8, a gain of at least 2 grid
    # doublings over the plain network's 0.5: kept (already beyond δ = one doubling).
    p = parts(analyze(sweep(0.5, 8.0)))
    assert p["BN's largest trained step size over the plain network's"].mean == pytest.approx(math.log10(16))
    # The plain network at the top too: the comparison is undefined, and λ_0·η/2 = 16 > 1 is kept.
    p = parts(analyze(sweep(8.0, 8.0)))
    assert p["BN's largest trained step size over the plain network's"].verdict == INCONCLUSIVE
    assert p["how far past 2/λ_0 the plain network trains"].verdict == NOT_SUPPORTED
    # ... whereas a lower bound below 1 says nothing: λ_0 = 0.1, trained at the top 8: λ_0·η/2 ≥ 0.4
    p = parts(analyze(sweep(8.0, 8.0, lambda_0=0.1)))
    assert p["how far past 2/λ_0 the plain network trains"].verdict == INCONCLUSIVE


def test_its_report_renders(reported):
    assert reported("sharpness", sweep(0.25, 1.0))["verdict"] == SUPPORTED
