"""The regularization claim's analysis on hand-made runs: dropout's gain is the positive control, checked
first; then BN against dropout and dropout on top of BN decide; what BN owes to its batch noise (BN minus
noise-free BN, once that one is shown to fit its training set) is reported beside the verdict."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, pool
from bnexp.records import Run

ARMS = {  # setting -> (norm.name, model.dropout)
    "plain": ("none", 0.0),
    "dropout": ("none", 0.5),
    "bn": ("bn", 0.0),
    "bn + dropout": ("bn", 0.5),
    "noise-free bn": ("batch_renorm", 0.0),
    "noise-free bn + dropout": ("batch_renorm", 0.5),
}
# Dropout helps the plain network by 2 points; BN gains as much without it, dropout adds nothing to BN, and
# without its batch noise BN gains only 0.5 of its 2.5 points.
HELPS = dict(plain=0.90, dropout=0.92, bn=0.925, bn_dropout=0.925, renorm=0.905, renorm_dropout=0.92)
FIT_LOSS = 0.002  # every run's final training loss: they all fit their training set


def run(acc, train_loss, **config):
    config = {"claim": "regularization", "model.name": "mlp", **config}
    metrics = dict(
        final_test_acc=acc, final_train_acc=1.0, final_train_loss=train_loss, diverged=False, series={}
    )
    return Run(pathlib.Path("."), config, metrics)


def reg_sweep(per_seed, renorm_train_loss=FIT_LOSS):
    """per_seed: for each seed a dict of test accuracies, keys as in HELPS (every run fits its training set,
    the noise-free arm to renorm_train_loss)."""
    keys = dict(zip(ARMS, HELPS))
    return [
        run(
            accs[keys[name]],
            renorm_train_loss if norm == "batch_renorm" else FIT_LOSS,
            seed=s,
            **{"norm.name": norm, "model.dropout": p},
        )
        for s, accs in enumerate(per_seed)
        for name, (norm, p) in ARMS.items()
    ]


def jitter(**changes):
    """Three seeds of HELPS with `changes`, each seed's accuracies shifted together (the effects stay)."""
    return [{k: v + shift for k, v in {**HELPS, **changes}.items()} for shift in (-0.01, 0.0, 0.01)]


def analyze(per_seed, **kw):
    finding = CLAIMS["regularization"].analyze(reg_sweep(per_seed, **kw))
    return finding, {p.name: p for p in finding.parts}


def test_supported_when_dropout_helps_bn_matches_it_and_dropout_adds_nothing():
    finding, parts = analyze(jitter())
    assert finding.verdict == SUPPORTED
    # The effects, by hand: control 0.92 − 0.90, BN − dropout 0.925 − 0.92, BN − noise-free 0.925 − 0.905.
    assert parts["dropout's gain"].mean == pytest.approx(0.02)
    assert parts["BN against dropout"].mean == pytest.approx(0.005)
    assert parts["BN's noise"].mean == pytest.approx(0.02)
    assert parts["noise-free BN fits"].mean == pytest.approx(0.0)
    assert "BN recovers 125% of dropout's mean gain" in finding.summary  # (0.925 − 0.90) / (0.92 − 0.90)


def test_without_dropouts_gain_the_claim_is_inconclusive_even_where_bn_falls_short():
    # Dropout gains half a point; BN loses two points to it: without the control this would read
    # "not supported".
    finding, parts = analyze(jitter(dropout=0.905, bn=0.885))
    assert parts["BN against dropout"].verdict == NOT_SUPPORTED  # as judged alone
    assert (finding.verdict, finding.decided_by) == (INCONCLUSIVE, "control failed: dropout's gain")


def test_the_control_is_judged_by_its_interval_not_by_its_mean():
    # Gains of 2, 1 and 3 points: mean 2, s = 1, t(0.975, 2) = 4.303, so the interval is 2 ± 2.48 points and
    # reaches below the one-point threshold.
    per_seed = [{**HELPS, "dropout": HELPS["plain"] + gain} for gain in (0.02, 0.01, 0.03)]
    finding, parts = analyze(per_seed)
    control = parts["dropout's gain"]
    assert control.low == pytest.approx(0.02 - 4.303 * 0.01 / 3**0.5, abs=1e-4)
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == "control failed: dropout's gain"


def test_not_supported_when_dropout_still_helps_bn():
    finding, parts = analyze(jitter(bn_dropout=0.945))
    assert finding.verdict == NOT_SUPPORTED and finding.decided_by == "dropout's gain on top of BN"


def test_the_noise_mechanism_is_reported_but_does_not_decide():
    # BN matches dropout, but so does BN without its batch noise: the gain is not the noise's. The claim
    # (BN regularizes) still holds; the paper's explanation of it does not.
    finding, parts = analyze(jitter(renorm=0.925))
    assert parts["BN's noise"].verdict == NOT_SUPPORTED
    assert finding.verdict == SUPPORTED
    assert pool([p for p in finding.parts if p.name != "BN's noise"]) == (SUPPORTED, "every part")


def test_a_noise_free_arm_that_does_not_fit_gates_only_the_noise_part():
    # The noise-free arm ends at a training loss 0.3 nats above BN's: its lower test accuracy would say
    # nothing about noise; the control fails, and it gates the noise part alone.
    finding, parts = analyze(jitter(), renorm_train_loss=FIT_LOSS + 0.3)
    assert parts["noise-free BN fits"].mean == pytest.approx(0.3)
    assert parts["noise-free BN fits"].verdict == NOT_SUPPORTED
    assert finding.verdict == SUPPORTED  # the noise part never decided it


def test_a_sweep_without_the_noise_free_arm_is_refused():
    runs = [r for r in reg_sweep(jitter()) if r["norm.name"] != "batch_renorm"]
    with pytest.raises(ValueError, match="norm.name=batch_renorm"):
        CLAIMS["regularization"].analyze(runs)


def test_the_report_shows_every_arm_and_marks_the_mechanism(reported, tmp_path):
    finding = reported("regularization", reg_sweep(jitter()))
    assert finding["verdict"] == SUPPORTED
    assert [p["effect"] for p in finding["parts"]][0] == "dropout's gain"
    assert "BN's noise (reported, not deciding)" in (tmp_path / "report.md").read_text()
