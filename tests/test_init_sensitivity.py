"""The `init_sensitivity` claim on hand-made runs: decades of init std near each arm's best."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.claims.init_sensitivity import SPAN_GAIN
from bnexp.records import Run

STDS = (0.001, 0.01, 0.1, 1.0, 10.0)  # the sweep spans 4 decades


def made_run(norm: str, seed: int, std: float, acc: float, act: str) -> Run:
    config = {"claim": None, "seed": seed, "model.name": "mlp", "norm.name": norm, "model.activation": act}
    config.update({"init.name": "normal", "init.std": std})
    diverged = acc is None  # None: the run diverged
    metrics = dict(
        final_test_acc=acc, diverged=diverged, series={"test/acc": [[100, 0.1], [200, acc or 0.1]]}
    )
    return Run(pathlib.Path("."), config, metrics)


def gain(finding, act="relu"):
    return next(p for p in finding.parts if p.effect is SPAN_GAIN and p.where == act)


def init_sweep(bn_accs, plain_accs, act="relu"):
    """Per seed, BN's and the plain network's final test accuracies at STDS."""
    return [
        made_run(norm, seed, std, acc, act)
        for seed in range(len(bn_accs))
        for norm, accs in (("bn", bn_accs[seed]), ("none", plain_accs[seed]))
        for std, acc in zip(STDS, accs)
    ]


# Good (within 3 points of the arm's best): BN from 0.001 to 1 (3 decades), plain only at 0.01 and 0.1 (1).
BN_WIDE = [0.94, 0.95, 0.96, 0.94, 0.80]
PLAIN_NARROW = [0.10, 0.94, 0.95, 0.60, None]


def test_the_gain_is_bns_decades_near_its_best_minus_the_plain_networks():
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep([BN_WIDE] * 3, [PLAIN_NARROW] * 3))
    assert gain(finding).per_seed == {s: pytest.approx(3 - 1) for s in ("0", "1", "2")}
    assert finding.verdict == SUPPORTED


def test_a_span_is_the_contiguous_run_of_good_stds_around_the_best():
    """A lucky run at the grid's far edge does not join the span across the bad stds between."""
    bn = [0.94, 0.95, 0.96, 0.70, 0.95]  # good at 0.001 to 0.1 (2 decades), and again at 10 alone
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep([bn] * 3, [PLAIN_NARROW] * 3))
    assert gain(finding).per_seed["0"] == pytest.approx(2 - 1)
    assert finding.table[0]["seeds whose span reaches the grid's edge (a lower bound)"] == 3


def test_not_supported_when_bn_keeps_no_wider_a_range_than_the_plain_network():
    bn = [0.40, 0.95, 0.96, 0.70, 0.50]  # good at 0.01 and 0.1 only, as the plain network is
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep([bn] * 3, [PLAIN_NARROW] * 3))
    assert gain(finding).per_seed["0"] == pytest.approx(0) and finding.verdict == NOT_SUPPORTED


def test_inconclusive_when_the_seeds_disagree_across_the_smallest_effect():
    # Gains 2, 3, 0 decades: mean 1.67, s = 1.53, t(0.975, 2) = 4.303: [-2.1, +5.5] contains 1.
    bn = [BN_WIDE, [0.94, 0.95, 0.96, 0.94, 0.95], [0.40, 0.95, 0.96, 0.70, 0.50]]
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep(bn, [PLAIN_NARROW] * 3))
    assert gain(finding).mean == pytest.approx(5 / 3) and finding.verdict == INCONCLUSIVE


def test_a_diverged_run_is_neither_good_nor_the_best():
    # The diverged run's recorded accuracy (0.99) would otherwise be the best and leave no other init good.
    plain = [0.10, 0.94, 0.95, 0.60, 0.99]
    runs = init_sweep([BN_WIDE] * 3, [plain] * 3)
    for r in runs:
        r.metrics["diverged"] = r.metrics["diverged"] or (r["norm.name"], r["init.std"]) == ("none", 10.0)
    assert gain(CLAIMS["init_sensitivity"].analyze(runs)).per_seed["0"] == pytest.approx(2)


@pytest.mark.parametrize(
    "plain, failed",
    [
        ([0.94, 0.95, 0.96, 0.94, 0.95], "plain network's sensitivity"),  # good everywhere: nothing to remove
        ([0.60, 0.95, 0.96, 0.94, 0.95], "plain network's sensitivity"),  # 3 of 4 decades good: < 1 outside
        ([0.10, 0.50, 0.55, 0.30, None], "the plain network's best accuracy"),  # never trains: below 0.85
    ],
)
def test_a_failed_control_makes_the_gain_inconclusive(plain, failed):
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep([BN_WIDE] * 3, [plain] * 3))
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by.startswith(f"span gain (relu) (control failed: {failed} (relu)")


def test_bn_must_train_at_its_best_init_too():
    bn = [0.80, 0.81, 0.82, 0.80, 0.79]  # flat, but never above 0.85
    finding = CLAIMS["init_sensitivity"].analyze(init_sweep([bn] * 3, [PLAIN_NARROW] * 3))
    assert finding.verdict == INCONCLUSIVE and "BN's best accuracy (relu)" in finding.decided_by


def test_each_activation_is_judged_on_its_own():
    runs = init_sweep([BN_WIDE] * 3, [PLAIN_NARROW] * 3, "relu") + init_sweep(
        [[0.40, 0.95, 0.96, 0.70, 0.50]] * 3, [PLAIN_NARROW] * 3, "sigmoid"
    )
    finding = CLAIMS["init_sensitivity"].analyze(runs)
    assert {act: gain(finding, act).verdict for act in ("relu", "sigmoid")} == {
        "relu": SUPPORTED,
        "sigmoid": NOT_SUPPORTED,
    }
    assert finding.verdict == NOT_SUPPORTED


@pytest.mark.parametrize(
    "keep, missing",
    [
        (lambda r: r["norm.name"] != "none", "norm.name=none"),
        (lambda r: r["init.std"] == 1, "one initialization"),
    ],
)
def test_the_analysis_refuses_a_sweep_without_the_comparison(keep, missing):
    with pytest.raises(ValueError, match=missing):
        CLAIMS["init_sensitivity"].analyze(
            [r for r in init_sweep([BN_WIDE] * 3, [PLAIN_NARROW] * 3) if keep(r)]
        )


def test_the_report_shows_the_gain_and_the_controls(reported):
    result = reported("init_sensitivity", init_sweep([BN_WIDE] * 3, [PLAIN_NARROW] * 3))
    assert result["verdict"] == SUPPORTED
    controls = {p["name"]: p["estimate"] for p in result["parts"] if p["control"]}
    assert controls["plain network's sensitivity (relu)"].startswith("+3.00 decades")
