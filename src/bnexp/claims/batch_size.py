"""Claim: batch normalization depends on the batch size and degrades with small batches."""

from bnexp.claims import Claim, Finding, group, mean_std, require, verdict
from bnexp.claims.plots import errorbars, figure

SMALLEST = 2
EXCESS = 0.05  # BN must lose at least this much more accuracy than GroupNorm at the smallest batch

HYPOTHESIS = (
    "BN's batch statistics get noisier as batches shrink, and the running averages used at test time "
    "drift from them, so BN's accuracy falls at small batch sizes while GroupNorm, which normalizes "
    "within each example, does not (Wu & He 2018, Fig. 1: ResNet-50 on ImageNet, BN 23.6 % error at 32 "
    "images per GPU rising to 34.7 % at 2; GroupNorm flat at about 24 %)."
)
CRITERION = (
    f"For each seed, with the learning rate scaled linearly with the batch size and the budget fixed in "
    f"epochs: BN's drop in final test accuracy from its best batch size to batch size {SMALLEST} exceeds "
    f"GroupNorm's drop by at least {EXCESS * 100:.0f} points."
)


def drop(runs) -> float:
    """Accuracy at the best batch size minus accuracy at the smallest."""
    acc = {r["data.batch_size"]: r.test_acc for r in runs}
    return max(acc.values()) - acc[SMALLEST]


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "gn")
    require(runs, "data.batch_size", SMALLEST)
    passed = {}
    for (seed,), cell in group(runs, "seed").items():
        by_norm = {norm: rs for (norm,), rs in group(cell, "norm.name").items()}
        passed[f"seed {seed}"] = drop(by_norm["bn"]) - drop(by_norm["gn"]) >= EXCESS

    table = []
    for (norm,), rs in group(runs, "norm.name").items():
        row = {
            "norm": norm,
            f"drop to batch {SMALLEST}": "%.3f ± %.3f"
            % mean_std(drop(cell) for cell in group(rs, "seed").values()),
        }
        for (bs,), cell in group(rs, "data.batch_size").items():
            row[f"acc @ {bs}"] = "%.3f" % mean_std(r.test_acc for r in cell)[0]
        table.append(row)
    bn = [r for r in runs if r["norm.name"] == "bn" and r.metrics]
    gap_row = {"norm": "bn: batch-stat − running-stat acc", f"drop to batch {SMALLEST}": ""}
    for (bs,), cell in group(bn, "data.batch_size").items():
        gap_row[f"acc @ {bs}"] = "%+.3f" % mean_std(r.batch_stats_acc - r.test_acc for r in cell)[0]
    table.append(gap_row)

    fig, (ax, ax_gap) = figure(2)
    for (norm,), rs in group(runs, "norm.name").items():
        errorbars(ax, rs, "data.batch_size", lambda r: 1 - r.test_acc, label=norm)
    ax.set(xscale="log", xlabel="batch size", ylabel="final test error", title="Test error vs batch size")
    ax.set_xscale("log", base=2)
    ax.legend(title="norm")
    errorbars(ax_gap, bn, "data.batch_size", lambda r: r.test_acc, label="running statistics (eval mode)")
    errorbars(ax_gap, bn, "data.batch_size", lambda r: r.batch_stats_acc, label="batch statistics")
    ax_gap.set_xscale("log", base=2)
    ax_gap.set(
        xlabel="batch size", ylabel="BN test accuracy", title="BN: which statistics at test time", ylim=(0, 1)
    )
    ax_gap.legend()
    fig.suptitle("Batch-size dependence (mean ± std over seeds; compare the shape with Wu & He 2018, Fig. 1)")

    held = sum(passed.values())
    bn_drop, gn_drop = (
        mean_std(drop(c) for c in group([r for r in runs if r["norm.name"] == n], "seed").values())[0]
        for n in ("bn", "gn")
    )
    summary = (
        f"From the best batch size to {SMALLEST}, BN lost {bn_drop * 100:.1f} accuracy points and GroupNorm "
        f"{gn_drop * 100:.1f} (means over seeds); the criterion held in {held} of {len(passed)} seeds."
    )
    notes = [
        "Wu & He's figures are for ResNet-50 on ImageNet; this sweep's absolute numbers are not comparable, "
        "only the shape of the curves is."
    ]
    return Finding(verdict(passed), summary, passed, table, fig, notes)


CLAIM = Claim(
    name="batch_size",
    title="BN degrades with small batches (GroupNorm does not)",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    analyze=analyze,
)
