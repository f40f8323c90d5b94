"""The lr_tolerance claim: its verdict logic on hand-made runs, checked against spans counted by hand."""

import math
import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.records import Run

LRS = [0.01, 0.0316, 0.1, 0.316, 1, 3.16, 10, 31.6, 100]  # half-decades


def sweep(bn: dict, plain: dict, seeds=(0, 1, 2), model="mlp") -> list[Run]:
    """BN and the plain network, each with its final test accuracy at the learning rates given ({lr: acc});
    at every other rate of the grid the run diverged (accuracy 0.1)."""
    runs = []
    for seed in seeds:
        for norm, accs in (("bn", bn), ("none", plain)):
            for lr in LRS:
                config = {"claim": "lr_tolerance", "seed": seed, "model.name": model, "norm.name": norm}
                metrics = dict(
                    final_test_acc=accs.get(lr, 0.1),
                    diverged=lr not in accs,
                    series={"test/acc": [[100, 0.1], [200, accs.get(lr, 0.1)]]},
                )
                runs.append(Run(pathlib.Path("."), {**config, "optim.lr": lr}, metrics))
    return runs


def good(*lrs, acc=0.95) -> dict:
    return {lr: acc for lr in lrs}


def parts(finding) -> dict:
    return {p.effect.name: p for p in finding.parts}


def test_supported_when_bn_trains_over_a_wider_range_that_reaches_higher_rates():
    # BN good from 0.1 to 31.6 (2.5 decades), the plain MLP from 0.1 to 1 (1 decade): both gains 1.5 decades
    finding = CLAIMS["lr_tolerance"].analyze(sweep(good(0.1, 0.316, 1, 3.16, 10, 31.6), good(0.1, 0.316, 1)))
    assert finding.verdict == SUPPORTED
    assert parts(finding)["control: the plain network trains"].mean == pytest.approx(0.95)
    for name in ("span gain", "largest good rate gain"):
        assert parts(finding)[name].mean == pytest.approx(math.log10(31.6) - math.log10(1), abs=1e-3)


def test_not_supported_when_both_tolerate_the_same_range():
    finding = CLAIMS["lr_tolerance"].analyze(sweep(good(0.1, 0.316, 1), good(0.1, 0.316, 1)))
    assert finding.verdict == NOT_SUPPORTED and parts(finding)["span gain"].mean == 0


def test_a_span_widened_only_towards_low_rates_fails_on_the_largest_rate():
    finding = CLAIMS["lr_tolerance"].analyze(sweep(good(0.0316, 0.1, 0.316, 1), good(0.316, 1)))
    judged = parts(finding)
    assert judged["span gain"].verdict == SUPPORTED  # log10(1/0.0316) − log10(1/0.316) = 1 decade
    assert judged["largest good rate gain"].verdict == NOT_SUPPORTED and finding.verdict == NOT_SUPPORTED


def test_good_is_measured_against_each_arms_own_best():
    # The plain MLP's best is 0.92 at lr 1; 0.88 at 0.316 is within 95 % of it (0.874), though not of BN's
    # best, 0.98: its span is 0.316 to 1, half a decade, not a single rate.
    plain = {0.316: 0.88, 1: 0.92, 3.16: 0.8}
    finding = CLAIMS["lr_tolerance"].analyze(sweep(good(0.1, 0.316, 1, 3.16, 10, acc=0.98), plain))
    span = parts(finding)["span gain"]
    assert span.mean == pytest.approx(math.log10(10 / 0.1) - math.log10(1 / 0.316), abs=1e-3)


def test_inconclusive_with_the_reason_when_the_plain_network_does_not_train():
    # the plain network's best, 0.46, is below the control's 0.9: its narrow range says nothing about BN
    finding = CLAIMS["lr_tolerance"].analyze(sweep(good(0.1, 0.316, 1, 3.16, 10), good(1, acc=0.46)))
    assert finding.verdict == INCONCLUSIVE
    assert parts(finding)["control: the plain network trains"].mean == pytest.approx(0.46)
    assert finding.decided_by == (
        "span gain (MLP) (control failed: control: the plain network trains (MLP)); "
        "largest good rate gain (MLP) (control failed: control: the plain network trains (MLP))"
    )


def test_the_controls_interval_must_clear_its_threshold():
    seeds_near = {0: 0.95, 1: 0.89, 2: 0.91}  # mean 0.917, s 0.031, interval [0.841, 0.993]: contains 0.9
    runs = [
        r
        for s, best in seeds_near.items()
        for r in sweep(good(0.1, 0.316, 1, 3.16, 10), {1: best}, seeds=(s,))
    ]
    assert CLAIMS["lr_tolerance"].analyze(runs).verdict == INCONCLUSIVE


def test_a_range_cut_by_the_grids_edge_counts_only_where_its_bound_decides():
    claim = CLAIMS["lr_tolerance"]
    # BN good up to the grid's largest rate: its largest rate (≥ 100) beats the plain network's by at least 2
    # decades, and its span (≥ 3 decades) by at least 2: a lower bound beyond δ decides
    assert claim.analyze(sweep(good(0.1, 0.316, 1, 3.16, 10, 31.6, 100), good(0.1, 0.316, 1))).verdict == (
        SUPPORTED
    )
    # BN good down to the grid's smallest rate, spanning no more than the plain network: a lower bound of 0
    # decades could be anything above it
    edge = claim.analyze(sweep(good(0.01, 0.0316, 0.1), good(0.1, 0.316, 1)))
    span = parts(edge)["span gain"]
    assert span.verdict == INCONCLUSIVE and span.reason == "undefined in seed(s) 0, 1, 2"


def test_each_model_is_judged_on_its_own():
    runs = sweep(good(0.1, 0.316, 1, 3.16, 10), good(0.1, 0.316)) + sweep(
        good(0.1, 0.316), good(0.1, 0.316), model="cnn"
    )
    finding = CLAIMS["lr_tolerance"].analyze(runs)
    verdicts = {p.name: p.verdict for p in finding.parts}
    assert verdicts["span gain (MLP)"] == SUPPORTED and verdicts["span gain (CNN)"] == NOT_SUPPORTED


def test_a_failed_control_gates_only_its_own_model():
    # the plain CNN does not train (0.46): the CNN's parts are inconclusive, the MLP's not supported decides
    runs = sweep(good(0.1, 0.316), good(0.1, 0.316)) + sweep(
        good(0.1, 0.316, 1, 3.16, 10), good(1, acc=0.46), model="cnn"
    )
    finding = CLAIMS["lr_tolerance"].analyze(runs)
    assert (
        finding.verdict == NOT_SUPPORTED
        and finding.decided_by == "span gain (MLP); largest good rate gain (MLP)"
    )
