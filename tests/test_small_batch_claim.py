"""small_batch: BN's loss with ghost batches of 4 and with batches of 4, against batch 32, and batch renorm's
gain over BN with the same small statistics."""

import pathlib

import pytest

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.records import Run

analyze = CLAIMS["small_batch"].analyze
ARMS = [(norm, batch, ghost) for norm in ("bn", "batch_renorm") for batch in (4, 32) for ghost in (None, 4)]


def run(acc, seed, norm, batch, ghost):
    config = {"seed": seed, "norm.name": norm, "data.batch_size": batch, "norm.ghost_batch_size": ghost}
    metrics = dict(final_test_acc=acc, final_test_acc_batch_stats=acc, diverged=False)
    return Run(pathlib.Path("."), config, metrics)


def sweep(accuracy, seeds=4):
    """accuracy: (norm, setting) -> final test accuracy, the setting "whole", "ghost" or "small"; seeds vary
    it by ±0.002. The batch-4 runs with ghost batches of 4 are their twins'."""

    def setting(batch, ghost):
        return "small" if batch == 4 else "ghost" if ghost else "whole"

    return [
        run(accuracy[norm, setting(b, g)] + 0.002 * (s % 2), s, norm, b, g)
        for s in range(seeds)
        for norm, b, g in ARMS
    ]


def accuracies(bn_ghost, bn_small, renorm_ghost, renorm_small, whole=0.95, renorm_whole=None):
    return {
        ("bn", "whole"): whole,
        ("bn", "ghost"): bn_ghost,
        ("bn", "small"): bn_small,
        ("batch_renorm", "whole"): whole if renorm_whole is None else renorm_whole,
        ("batch_renorm", "ghost"): renorm_ghost,
        ("batch_renorm", "small"): renorm_small,
    }


def parts(finding):
    return {p.name: p for p in finding.parts}


# BN loses 5 points with ghost batches and 4 at batch 4; batch renorm loses 1 in each.
RECOVERED = accuracies(bn_ghost=0.90, bn_small=0.91, renorm_ghost=0.94, renorm_small=0.94)


def test_supported_when_ghost_batches_cost_bn_most_of_a_small_batch_and_renorm_keeps_most():
    finding = analyze(sweep(RECOVERED))
    assert finding.verdict == SUPPORTED
    named = parts(finding)
    assert named["BN's loss (ghost batches of 4 in batch 32)"].mean == pytest.approx(0.05)
    assert named["batch renorm keeps what BN loses (ghost batches of 4 in batch 32)"].mean == pytest.approx(
        0.05 / 2 - 0.01
    )
    assert named["batch renorm keeps what BN loses (batch 4)"].mean == pytest.approx(0.04 / 2 - 0.01)
    assert named["the statistics' share (batch 4)"].mean == pytest.approx(0.05 - 0.04 / 2)


def test_not_supported_when_batch_renorm_loses_as_much_as_bn():
    finding = analyze(sweep(accuracies(bn_ghost=0.90, bn_small=0.91, renorm_ghost=0.90, renorm_small=0.91)))
    assert finding.verdict == NOT_SUPPORTED
    assert "batch renorm keeps what BN loses" in finding.decided_by


def test_a_renorm_better_at_every_batch_size_is_not_counted_as_keeping_what_bn_loses():
    # Renorm beats BN by 3 points with small statistics, but only because it is 3 points ahead at batch 32.
    accuracy = accuracies(
        bn_ghost=0.90, bn_small=0.91, renorm_ghost=0.93, renorm_small=0.94, renorm_whole=0.98
    )
    assert analyze(sweep(accuracy)).verdict == NOT_SUPPORTED


def test_not_supported_when_the_statistics_alone_cost_less_than_half_the_small_batch_loss():
    finding = analyze(sweep(accuracies(bn_ghost=0.93, bn_small=0.85, renorm_ghost=0.945, renorm_small=0.93)))
    assert finding.verdict == NOT_SUPPORTED
    assert finding.decided_by == "the statistics' share (batch 4)"


def test_inconclusive_where_bn_loses_nothing_for_renorm_to_keep():
    # Small statistics cost BN nothing: the halfway effects mean nothing, and are not judged.
    finding = analyze(sweep(accuracies(bn_ghost=0.95, bn_small=0.95, renorm_ghost=0.97, renorm_small=0.97)))
    assert parts(finding)["batch renorm keeps what BN loses (batch 4)"].verdict == SUPPORTED  # on its own
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by == "; ".join(
        f"{part} (control failed: BN's loss ({where}))"
        for part, where in (
            (
                "batch renorm keeps what BN loses (ghost batches of 4 in batch 32)",
                "ghost batches of 4 in batch 32",
            ),
            ("batch renorm keeps what BN loses (batch 4)", "batch 4"),
            ("the statistics' share (batch 4)", "batch 4"),
        )
    )


def test_inconclusive_when_a_norm_does_not_train_at_batch_32():
    accuracy = accuracies(
        bn_ghost=0.60, bn_small=0.60, renorm_ghost=0.68, renorm_small=0.68, renorm_whole=0.7
    )
    finding = analyze(sweep(accuracy))
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by.startswith("control failed: both norms train at batch 32")


def test_a_diverged_run_leaves_its_seeds_effects_undefined_not_a_loss_of_everything():
    runs = sweep(RECOVERED)
    bn_ghost = next(
        r for r in runs if (r["norm.name"], r["data.batch_size"], r["norm.ghost_batch_size"]) == ("bn", 32, 4)
    )
    bn_ghost.metrics.update(diverged=True, final_test_acc=0.1)
    named = parts(analyze(runs))
    assert named["BN's loss (ghost batches of 4 in batch 32)"].verdict == INCONCLUSIVE
    assert "undefined in seed(s) 0" in named["BN's loss (ghost batches of 4 in batch 32)"].reason


def test_a_seed_missing_an_arm_is_undefined_there():
    runs = [r for r in sweep(RECOVERED) if not (r["seed"] == 1 and r["norm.name"] == "batch_renorm")]
    named = parts(analyze(runs))
    assert "undefined in seed(s) 1" in named["batch renorm keeps what BN loses (batch 4)"].reason


def test_the_batch_4_twins_with_ghost_batches_are_set_aside_and_their_gap_reported():
    runs = sweep(RECOVERED)
    for r in runs:
        if r["data.batch_size"] == 4 and r["norm.ghost_batch_size"] == 4:
            r.metrics["final_test_acc"] -= 0.5  # were they used, BN's loss and renorm's would move
    finding = analyze(runs)
    assert parts(finding)["BN's loss (batch 4)"].mean == pytest.approx(0.04)
    assert "between twins: 50.00 points" in finding.notes[-1]


def test_a_sweep_without_batch_renorm_is_refused():
    with pytest.raises(ValueError, match="norm.name=batch_renorm"):
        analyze([r for r in sweep(RECOVERED) if r["norm.name"] == "bn"])


def test_its_report_renders(reported):
    assert reported("small_batch", sweep(RECOVERED))["verdict"] == SUPPORTED
