"""The `ics` and `ics_gradient` claims' verdict logic on hand-made runs."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.records import Run

# ---- the claims' verdict logic on hand-made runs -------------------------------------------------
STEPS = (20, 40, 60, 80, 100)


def percentiles(prefix: str, move: float) -> dict:
    """p15/p50/p85 that shift together by `move` over training, 2 apart: drift = move / 2."""
    return {
        f"{prefix}/p{k}": [[s, off + move * i / (len(STEPS) - 1)] for i, s in enumerate(STEPS)]
        for k, off in (("15", -1.0), ("50", 0.0), ("85", 1.0))
    }


def made_run(norm: str, seed: int, acc: float = 0.95, series=None, **config) -> Run:
    config = {"claim": None, "seed": seed, "model.name": "mlp", "norm.name": norm, "log.probe_batch": 500}
    series = {"test/acc": [[50, acc / 2], [100, acc]], **(series or {})}
    metrics = dict(final_test_acc=acc, diverged=False, series=series, steps_planned=STEPS[-1])
    return Run(pathlib.Path("."), config, metrics)


def ics_sweep(bn_moves, plain_moves, plain_acc=0.95):
    """Per seed, (unit-0 move, whole-layer move) of the last hidden layer's percentiles for BN and plain."""
    return [
        made_run(
            norm,
            seed,
            acc=plain_acc if norm == "none" else 0.95,
            series={
                **percentiles("act/layer3/unit0", moves[seed][0]),
                **percentiles("act/layer3", moves[seed][1]),
            },
        )
        for seed in range(len(bn_moves))
        for norm, moves in (("bn", bn_moves), ("none", plain_moves))
    ]


def test_ics_is_supported_when_bn_drifts_at_most_half_as_much():
    finding = CLAIMS["ics"].analyze(ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3))
    assert finding.verdict == SUPPORTED and finding.figure is not None


def test_ics_is_not_supported_when_bn_drifts_as_much():
    assert CLAIMS["ics"].analyze(ics_sweep([(1.5, 0.9)] * 3, [(2.0, 1.0)] * 3)).verdict == NOT_SUPPORTED


def test_ics_needs_both_the_unit_and_the_layer():
    # Seed 1: the layer is stable, the unit is not; the unit's interval then reaches past half.
    finding = CLAIMS["ics"].analyze(ics_sweep([(0.4, 0.2), (1.5, 0.2), (0.4, 0.2)], [(2.0, 1.0)] * 3))
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == "drift ratio (unit 0 of layer3)"
    assert [p.verdict for p in finding.parts] == [SUPPORTED, INCONCLUSIVE, SUPPORTED]


def test_ics_is_inconclusive_when_the_plain_network_never_trains():
    """Its inputs then barely move because nothing is learned: stability by default, not BN's doing."""
    finding = CLAIMS["ics"].analyze(ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3, plain_acc=0.2))
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by == "control failed: the plain network trains"


def test_ics_measures_the_drift_after_the_burn_in_only():
    """A plain network whose inputs jump in the first quarter of training and then stay put does not
    drift: its percentiles' range over the steps after the burn-in is that of the still phase."""

    def jump_then_drift(prefix, late_move):  # steps 20 (burn-in) and 40..100: a 4.0 jump, then late_move
        values = [0.0, 4.0, 4.0 + late_move / 3, 4.0 + 2 * late_move / 3, 4.0 + late_move]
        return {
            f"{prefix}/p{k}": [[s, v + off] for s, v in zip(STEPS, values)]
            for k, off in (("15", -1.0), ("50", 0.0), ("85", 1.0))
        }

    runs = ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3)
    for r in runs:
        if r["norm.name"] == "none":  # after the burn-in it moves as much as BN (0.4, 0.2 over 3/4 of it)
            r.metrics["series"].update(
                {**jump_then_drift("act/layer3/unit0", 0.3), **jump_then_drift("act/layer3", 0.15)}
            )
    finding = CLAIMS["ics"].analyze(runs)
    assert [p.mean for p in finding.parts[1:]] == pytest.approx([1.0, 1.0])
    assert finding.verdict == NOT_SUPPORTED


def test_ics_refuses_runs_that_observed_their_training_batches():
    runs = ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3)
    runs[0].config["log.probe_batch"] = 0
    with pytest.raises(ValueError, match="fixed probe batch"):
        CLAIMS["ics"].analyze(runs)


def gradient_run(norm, seed, acc=0.95, drift=0.5, one_minus_cos=0.1, land=1.0, early_cos=None):
    """A run of the ics_gradient sweep: layer drift (unit 0 and all units), gradient ICS (layers ≥ 2) and
    landscape values; `early_cos`, if given, is 1 − cos(G, G′) in the burn-in (step 20 of 100)."""
    series = {}
    for layer in ("layer1", "layer2"):
        series.update(
            {**percentiles(f"act/{layer}", 2 * drift), **percentiles(f"act/{layer}/unit0", 2 * drift)}
        )
    for layer in ("layer1", "layer2", "head"):
        late = 1.0 if layer == "layer1" else 1 - one_minus_cos
        early = late if early_cos is None or layer == "layer1" else 1 - early_cos
        series.update(
            {
                f"ics/{layer}/cos": [[s, early if s <= 25 else late] for s in STEPS],
                f"ics/{layer}/l2": [[s, 0.1] for s in STEPS],
                f"ics/{layer}/rel": [[s, 0.2] for s in STEPS],
            }
        )
    for key in ("loss_range", "grad_change", "beta_smoothness", "grad_norm"):
        series[f"landscape/{key}"] = [[s, land] for s in STEPS]
    return made_run(norm, seed, acc, series)


def gradient_sweep(per_seed):
    """per_seed: for each seed, {norm: kwargs of gradient_run}."""
    return [gradient_run(norm, seed, **kw) for seed, cell in enumerate(per_seed) for norm, kw in cell.items()]


SANTURKAR = {
    "none": dict(drift=0.3, one_minus_cos=0.1, land=2.0),
    "bn": dict(drift=0.05, one_minus_cos=0.2, land=1.0),
    "noisy_bn": dict(drift=0.6, one_minus_cos=0.2, land=1.0, acc=0.94),
    "noisy_none": dict(drift=0.9, one_minus_cos=0.3, land=3.0, acc=0.3),  # the noise stops it training
}
ICS_STORY = {
    "none": dict(drift=0.3, one_minus_cos=0.2, land=1.0),
    "bn": dict(drift=0.05, one_minus_cos=0.1, land=2.0),
    "noisy_bn": dict(drift=0.2, one_minus_cos=0.2, land=1.0, acc=0.80),
    "noisy_none": dict(drift=0.9, one_minus_cos=0.3, land=3.0, acc=0.3),
}


@pytest.mark.parametrize("norm", ["none", "bn", "noisy_bn", "noisy_none"])
def test_ics_gradient_refuses_a_sweep_without_one_of_its_four_networks(norm):
    cells = [{k: v for k, v in SANTURKAR.items() if k != norm}] * 3
    with pytest.raises(ValueError, match=f"norm.name={norm}"):
        CLAIMS["ics_gradient"].analyze(gradient_sweep(cells))


@pytest.mark.parametrize("norm", ["bn", "none"])
def test_ics_refuses_a_sweep_without_bn_or_without_the_plain_network(norm):
    with pytest.raises(ValueError, match=f"norm.name={norm}"):
        CLAIMS["ics"].analyze(
            [r for r in ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3) if r["norm.name"] != norm]
        )


def test_ics_gradient_is_supported_when_all_three_of_santurkars_claims_hold():
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([SANTURKAR] * 3))
    assert finding.verdict == SUPPORTED and len(finding.parts) == 8
    assert {p.name for p in finding.parts if p.effect.control} == {
        "the plain network trains",
        "the noise destabilizes BN's inputs",
        "the noise harms the plain network",
    }
    assert any("Reading 2, smoothness" in note for note in finding.notes)


def test_ics_gradient_is_not_supported_when_the_data_tell_the_ics_story():
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([ICS_STORY] * 3))
    assert finding.verdict == NOT_SUPPORTED
    assert any(note.startswith("**Reading 1") and "For the original story" in note for note in finding.notes)


def test_ics_gradient_is_decided_by_the_part_that_fails():
    noisy_trains_worse = {**SANTURKAR, "noisy_bn": dict(drift=0.6, one_minus_cos=0.2, land=1.0, acc=0.85)}
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([SANTURKAR, noisy_trains_worse, SANTURKAR]))
    assert finding.verdict == INCONCLUSIVE and finding.decided_by == "noisy BN's accuracy − BN's"
    # One part failing in every seed, the others holding: not supported, and that part decided it.
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([noisy_trains_worse] * 3))
    assert finding.verdict == NOT_SUPPORTED and finding.decided_by == "noisy BN's accuracy − BN's"


def test_noisy_bn_training_like_bn_means_nothing_when_the_noise_is_harmless_without_bn():
    harmless = {**SANTURKAR, "noisy_none": dict(drift=0.9, one_minus_cos=0.3, land=3.0, acc=0.95)}
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([harmless] * 3))
    assert finding.verdict == INCONCLUSIVE
    assert (
        finding.decided_by == "noisy BN's accuracy − BN's (control failed: the noise harms the plain network)"
    )
    assert any("did not measurably stop the plain network" in note for note in finding.notes)


def test_ics_gradient_judges_after_the_burn_in_so_an_early_plateau_does_not_decide():
    """The plain network's 1 − cos is 0 on its plateau in the burn-in, 0.15 after; BN's is 0.12 throughout.
    Over all of training the two would tie; after the burn-in BN's is smaller: part (1) fails."""
    plateau = {**SANTURKAR, "none": dict(drift=0.3, one_minus_cos=0.15, land=2.0, early_cos=0.0)}
    plateau["bn"] = dict(drift=0.05, one_minus_cos=0.12, land=1.0)
    finding = CLAIMS["ics_gradient"].analyze(gradient_sweep([plateau] * 3))
    part = next(p for p in finding.parts if p.name == "gradient ICS, BN − plain")
    assert part.mean == pytest.approx(-0.03) and part.verdict == NOT_SUPPORTED


def test_the_reports_of_ics_and_ics_gradient(reported, tmp_path):
    assert reported("ics", ics_sweep([(0.4, 0.2)] * 3, [(2.0, 1.0)] * 3))["verdict"] == SUPPORTED
    assert reported("ics_gradient", gradient_sweep([SANTURKAR] * 3))["verdict"] == SUPPORTED
