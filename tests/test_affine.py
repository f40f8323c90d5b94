"""affine: the accuracy learnable γ/β buy a sigmoid BN network, controlled by its linearization; the bias
before BN as a check of the implementation."""

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from test_claims import run

analyze = CLAIMS["affine"].analyze
FIXED = 0.90  # the test accuracy with γ = 1, β = 0 fixed, in both networks


def affine_sweep(sigmoid_gain, linear_gain, bias_grad=1e-9, bias_acc_shift=0.0, seeds=3):
    """Per seed, the eight runs (sigmoid or linearized × γ/β learnable or fixed × bias before BN or not):
    learnable γ/β gain `sigmoid_gain[seed]` or `linear_gain[seed]` over fixed ones."""

    def one(seed, act, affine, bias):
        gain = (sigmoid_gain if act == "sigmoid" else linear_gain)[seed]
        acc = FIXED + (gain if affine else 0) + (bias_acc_shift if bias else 0)
        series = {
            "act/layer1/linear_frac": [[10, 0.68], [20, 0.5 if affine else 0.68]],
            "grad/layer1/norm": [[10, 0.1], [20, 0.1]],
            "test/acc": [[10, acc - 0.05], [20, acc]],
        }
        if bias:
            series["grad/layer1/bias"] = [[10, bias_grad], [20, bias_grad]]
        config = {"model.activation": act, "norm.affine": affine, "model.bias_before_norm": bias}
        r = run(acc, seed=seed, **config, **{"model.depth": 1})
        r.metrics["series"] = series
        return r

    return [
        one(s, act, a, b)
        for s in range(seeds)
        for act in ("sigmoid", "linearized_sigmoid")
        for a in (True, False)
        for b in (False, True)
    ]


def test_supported_when_learnable_gamma_beta_help_the_sigmoid_network_and_not_its_linearization():
    finding = analyze(affine_sweep([0.02] * 3, [0.0] * 3))
    assert finding.verdict == SUPPORTED and finding.parts[-1].mean == pytest.approx(0.02)
    assert [p.name for p in finding.parts if not p.effect.control] == ["γ/β's accuracy gain"]


def test_not_supported_when_learnable_gamma_beta_buy_nothing():
    assert analyze(affine_sweep([0.0] * 3, [0.0] * 3)).verdict == NOT_SUPPORTED


def test_inconclusive_when_seeds_disagree():
    assert analyze(affine_sweep([0.02, 0.02, 0.0], [0.0] * 3)).verdict == INCONCLUSIVE


def test_inconclusive_when_gamma_beta_help_the_linearized_network_as_much():
    # A 2-point gain without the nonlinearity: the sigmoid network's 2 points are not the nonlinearity's.
    finding = analyze(affine_sweep([0.02] * 3, [0.02] * 3))
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by == "control failed: γ/β's gain without the nonlinearity"


def test_inconclusive_when_gamma_beta_hurt_the_linearized_network():
    # Vanishing is two-sided: a 2-point loss without the nonlinearity is an optimization effect too.
    finding = analyze(affine_sweep([0.02] * 3, [-0.02] * 3))
    assert finding.decided_by == "control failed: γ/β's loss without the nonlinearity"


@pytest.mark.parametrize(
    "bias,check",
    [
        (dict(bias_grad=1e-2), "implementation check: bias gradient"),  # 1e-2 / 0.1
        (dict(bias_acc_shift=0.03), "implementation check: accuracy change from the bias"),
    ],
    ids=["bias-gets-a-gradient", "bias-changes-accuracy"],
)
def test_a_failed_implementation_check_leaves_the_claim_inconclusive(bias, check):
    finding = analyze(affine_sweep([0.02] * 3, [0.0] * 3, **bias))
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == f"control failed: {check}"


def test_report_discloses_version_3_and_version_2s_verdict(reported):
    assert reported("affine", affine_sweep([0.02] * 3, [0.0] * 3))["verdict"] == SUPPORTED
    assert "Version 2's verdict: supported (standard profile, 2026-12-03)" in CLAIMS["affine"].revision
