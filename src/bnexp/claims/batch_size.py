"""Claim: batch normalization depends on the batch size and degrades with small batches."""

from bnexp.claims import (
    Claim,
    Effect,
    Finding,
    Revision,
    group,
    mean_std,
    require,
)
from bnexp.claims.plots import errorbars, figure

SMALLEST, REFERENCE = 2, 32  # Wu & He's smallest batch, and the 32 images per GPU they compare it with
TRAINS = Effect(
    f"training at batch {REFERENCE}",
    f"the lower of BN's and GroupNorm's final test accuracies at batch size {REFERENCE} (same seed): both "
    f"norms must have trained at the paper's batch size for their drops from it to mean anything",
    smallest=0.9,
    above=True,
    unit="%",
    control=True,
)
EXCESS = Effect(
    "BN's drop beyond GroupNorm's",
    f"BN's drop in final test accuracy from batch size {REFERENCE} to {SMALLEST}, minus GroupNorm's drop "
    f"(same seed)",
    smallest=0.05,
    above=True,
    paper="Wu & He 2018 (ResNet-50, ImageNet, 8 GPUs, learning rate 0.1·N/32, the same epochs at "
    "every batch size): BN's error rises from 23.6 % at 32 images per GPU to 34.7 % at 2 (+11.1 points), "
    "GroupNorm's from 24.1 % to 24.1 % (+0.0 points): an excess of +11.1 points.",
)

HYPOTHESIS = (
    "BN's batch statistics get noisier as batches shrink, and the running averages used at test time "
    "drift from them, so BN's accuracy falls at small batch sizes while GroupNorm, which normalizes "
    "within each example, does not (Wu & He 2018, Fig. 1: ResNet-50 on ImageNet, BN 23.6 % error at 32 "
    "images per GPU rising to 34.7 % at 2; GroupNorm flat at about 24 %)."
)
CRITERION = (
    f"In a CNN with the norm on its convolutions only (as in Wu & He's ResNets, whose only fully connected "
    f"layer is the classifier), with the learning rate scaled linearly with the batch size and the same "
    f"epochs for every batch size, a control and one effect. Control: {TRAINS.text()} Effect: {EXCESS.text()}"
)
REVISION = Revision(
    3,
    "2026-12-05",
    why="The methods review (issue 13) found three confounds. The CNN's hidden fully connected layer was "
    "batch-normalized over the batch alone, so at batch 2 every normalized value was ±1, which Wu & He's "
    "networks never see; each norm's drop was measured from its best batch size, not from the paper's 32; "
    "and the large batches got too few steps to converge (10 at batch 256 in the quick profile). Now the "
    "norm is on the convolutions only (model.norm_fc=false), each drop is from batch 32 to batch 2, the "
    "sweep is Wu & He's batch sizes 2 to 32 with BN and GroupNorm, each trained for the same 10 epochs "
    "(quick) or 12 (standard), and a control asks both norms to train at batch 32 before the effect is "
    "judged. The smallest effect of interest (5 points) is version 2's.",
    previous="supported (standard profile, 2026-12-03): BN's drop beyond GroupNorm's +18.9 points "
    "[+13.4 points, +24.4 points]",
)


def drop(runs) -> float:
    """Accuracy at the reference batch size minus accuracy at the smallest."""
    acc = {r["data.batch_size"]: r.test_acc for r in runs}
    return acc[REFERENCE] - acc[SMALLEST]


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "gn")
    require(runs, "data.batch_size", SMALLEST, REFERENCE)
    trains, excess = {}, {}
    for (seed,), cell in group(runs, "seed").items():
        by_norm = {norm: rs for (norm,), rs in group(cell, "norm.name").items()}
        trains[str(seed)] = min(
            r.test_acc for n in ("bn", "gn") for r in by_norm[n] if r["data.batch_size"] == REFERENCE
        )
        excess[str(seed)] = drop(by_norm["bn"]) - drop(by_norm["gn"])
    control, part = TRAINS.judge(trains), EXCESS.judge(excess)

    table = []
    for (norm,), rs in group(runs, "norm.name").items():
        row = {
            "norm": norm,
            f"drop from {REFERENCE} to {SMALLEST}": "%.3f ± %.3f"
            % mean_std(drop(cell) for cell in group(rs, "seed").values()),
        }
        for (bs,), cell in group(rs, "data.batch_size").items():
            row[f"acc @ {bs}"] = "%.3f" % mean_std(r.test_acc for r in cell)[0]
        table.append(row)
    bn = [r for r in runs if r["norm.name"] == "bn" and r.metrics]
    gap_row = {"norm": "bn: batch-stat − running-stat acc", f"drop from {REFERENCE} to {SMALLEST}": ""}
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
        f"From batch size {REFERENCE} to {SMALLEST}, BN lost {bn_drop * 100:.1f} accuracy points and "
        f"GroupNorm {gn_drop * 100:.1f} (means over seeds): BN's excess drop was {part.estimate()}."
    )
    notes = [
        "Wu & He's figures are for ResNet-50 on ImageNet; this sweep's absolute numbers are not comparable, "
        "only the shape of the curves is. It also differs in GroupNorm's groups (4, of 2 to 4 channels each, "
        "against their G = 32), in plain SGD (they use momentum), and in its ceiling: on MNIST digits "
        "accuracies sit near 100 %, so the 5-point smallest effect is a larger share of what can be lost.",
        "Batch renorm and ghost batches, the remedies for BN's small-batch loss, are tested in the claim "
        "small_batch, in the BN paper's sigmoid MLP, whose statistics are per unit over the examples alone: "
        "with the norm on convolutions only, as here, the statistics pool every position of a feature map "
        "and BN lost nothing at batch 2 in this sweep's standard profile, leaving nothing to remedy.",
    ]
    return Finding([control, part], summary, table, fig, notes)


CLAIM = Claim(
    name="batch_size",
    title="BN degrades with small batches (GroupNorm does not)",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, EXCESS),
    analyze=analyze,
    previous="supported",
    revisions=(REVISION,),
)
