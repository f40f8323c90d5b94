"""Claim: batch normalization depends on the batch size and degrades with small batches."""

from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import errorbars, figure

SMALLEST = 2
EXCESS = Effect(
    "BN's drop beyond GroupNorm's",
    f"BN's drop in final test accuracy from its best batch size to batch size {SMALLEST}, minus GroupNorm's "
    f"drop (same seed)",
    smallest=0.05,
    above=True,
    paper="Wu & He 2018 (ResNet-50, ImageNet, 8 GPUs, learning rate 0.1·N/32, the same epochs at "
    "every batch size): BN's error rises from 23.6 % at 32 images per GPU to 34.7 % at 2 (+11.1 points), "
    "GroupNorm's 24.1 % at 2 is 0.1 points above its best (24.0 % at 8): an excess of about +11.0 points.",
)

HYPOTHESIS = (
    "BN's batch statistics get noisier as batches shrink, and the running averages used at test time "
    "drift from them, so BN's accuracy falls at small batch sizes while GroupNorm, which normalizes "
    "within each example, does not (Wu & He 2018, Fig. 1: ResNet-50 on ImageNet, BN 23.6 % error at 32 "
    "images per GPU rising to 34.7 % at 2; GroupNorm flat at about 24 %)."
)
CRITERION = (
    f"With the learning rate scaled linearly with the batch size and the budget fixed in epochs, one "
    f"effect: {EXCESS.text()}"
)


def drop(runs) -> float:
    """Accuracy at the best batch size minus accuracy at the smallest."""
    acc = {r["data.batch_size"]: r.test_acc for r in runs}
    return max(acc.values()) - acc[SMALLEST]


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "gn")
    require(runs, "data.batch_size", SMALLEST)
    excess = {}
    for (seed,), cell in group(runs, "seed").items():
        by_norm = {norm: rs for (norm,), rs in group(cell, "norm.name").items()}
        excess[str(seed)] = drop(by_norm["bn"]) - drop(by_norm["gn"])
    part = EXCESS.judge(excess)

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

    bn_drop, gn_drop = (
        mean_std(drop(c) for c in group([r for r in runs if r["norm.name"] == n], "seed").values())[0]
        for n in ("bn", "gn")
    )
    summary = (
        f"From the best batch size to {SMALLEST}, BN lost {bn_drop * 100:.1f} accuracy points and GroupNorm "
        f"{gn_drop * 100:.1f} (means over seeds): BN's excess drop was {part.estimate()}."
    )
    notes = [
        "Wu & He's figures are for ResNet-50 on ImageNet; this sweep's absolute numbers are not comparable, "
        "only the shape of the curves is."
    ]
    return Finding([part], summary, table, fig, notes)


CLAIM = Claim(
    name="batch_size",
    title="BN degrades with small batches (GroupNorm does not)",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(EXCESS,),
    analyze=analyze,
    previous="supported",
)
