"""Claim: BN's small-batch loss is the noise of its statistics, and batch renormalization recovers it
(Ioffe 2017, "Batch Renormalization", Sec. 4.3; Hoffer et al. 2017's ghost batches).

A batch of 4 changes two things at once: each normalization sees 4 examples (noisy μ_B and σ_B, every
output tied to three batch-mates, and a training function unlike the running-statistics one used at test),
and each step averages the gradient over 4. Ghost batches separate them: an SGD batch of 32 normalized in
ghost batches of 4 has the statistics of a batch of 4 and the steps of a batch of 32. Ioffe's small-minibatch
experiment is exactly that (Inception-v3, each minibatch normalized in microbatches of 4), with batch renorm
as the remedy: it corrects each batch's x̂ toward the running statistics by r and d, so that, once r and d are
within their clips, training computes inference's function of one example.
"""

import math

from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import figure

SMALL, REFERENCE = 4, 32  # Ioffe's microbatch, and the SGD batch it sits in
WHOLE, GHOST, BATCH = "batch 32", f"ghost batches of {SMALL} in batch {REFERENCE}", f"batch {SMALL}"
SETTINGS = (WHOLE, GHOST, BATCH)  # how the examples are normalized and how many make a gradient

TRAINS = Effect(
    "both norms train at batch 32",
    f"the lower of BN's and batch renorm's final test accuracies at SGD batch {REFERENCE} with whole-batch "
    f"statistics (same seed): the references must have learned the task for losses from them to mean "
    f"anything",
    smallest=0.8,
    above=True,
    unit="%",
    control=True,
)
RECOVERS = Effect(
    "batch renorm keeps what BN loses",
    "half of BN's loss minus batch renorm's loss, each norm's final test accuracy at batch 32 with whole "
    "batches minus with the small statistics (same seed): above 0 when batch renorm loses less than half "
    "of what BN loses, each measured from its own batch-32 accuracy so that an advantage of renorm at any "
    "batch size is not counted",
    smallest=0.0,
    above=True,
    paper="Ioffe 2017 (Sec. 4.3, Fig. 3; Inception-v3 on ImageNet, each minibatch of 1,600 normalized in "
    "microbatches of 4): BN's validation accuracy falls well below its accuracy with microbatches of 32, "
    "and batch renorm recovers much of the difference.",
)
SHARE = Effect(
    "the statistics' share",
    f"BN's loss with ghost batches of {SMALL} (batch {REFERENCE} minus ghost) minus half its loss at batch "
    f"{SMALL} (batch {REFERENCE} minus batch {SMALL}), same seed: above 0 when the statistics alone cost "
    f"more than half of what a batch of {SMALL} costs",
    smallest=0.0,
    above=True,
    paper="Hoffer et al. 2017 introduce ghost batches to give large-batch training small-batch "
    "statistics; Wu & He 2018 (Sec. 1) and Ioffe 2017 attribute BN's small-batch loss to its batch "
    "statistics.",
)
LOSES = Effect(
    "BN's loss",
    f"BN's final test accuracy at batch {REFERENCE} with whole batches minus with the small statistics "
    f"(same seed): BN must lose accuracy there for a remedy or a share of the loss to mean anything",
    smallest=0.01,
    above=True,
    control=True,
    gates=(RECOVERS.name, SHARE.name),
)

HYPOTHESIS = (
    f"BN's small-batch loss is its statistics': with {SMALL} examples per normalization μ_B and σ_B are "
    f"noisy, each example's output depends on its batch-mates, and training (batch statistics) and "
    f"inference (running statistics) compute different functions. Ghost batches of {SMALL} inside an SGD "
    f"batch of {REFERENCE} have the statistics of a batch of {SMALL} and the steps of a batch of "
    f"{REFERENCE} (Hoffer et al. 2017); with the learning rate scaled linearly, a batch of {SMALL} differs "
    f"from them further only in taking 8 times as many steps, 8 times smaller, whose gradient noise per "
    f"epoch matches to first order. So ghost batches should cost BN most of what batches of {SMALL} cost. "
    f"Batch renorm corrects each batch toward the running statistics by r and d, so that, once r and d are "
    f"within their clips, training computes inference's function of each example; it should keep most of "
    f"what BN loses in both settings (Ioffe 2017, Sec. 4.3)."
)
CRITERION = (
    f"The BN paper's sigmoid MLP (3×100, the norm before each sigmoid, so each statistic is over the "
    f"examples alone) with BN or batch renorm in three settings: SGD batch {REFERENCE} with whole-batch "
    f"statistics, batch {REFERENCE} normalized in ghost batches of {SMALL}, and batch {SMALL}; plain SGD at "
    f"learning rate 1·N/32 (linear in the batch size), the same epochs in every setting; batch renorm on "
    f"the paper's schedule in SGD steps (plain BN, then r_max relaxed to 3 and d_max to 5), at the "
    f"fractions of the batch-{REFERENCE} runs that 5k, 25k and 40k steps are of 160k. A run that diverged "
    f"leaves its seed's effects undefined. Control: {TRAINS.text()} In each small-statistics setting "
    f"(ghost batches, and batch {SMALL}) a control gates that setting's parts: {LOSES.text()} Effect, in "
    f"each: {RECOVERS.text()} Effect, at batch {SMALL}: {SHARE.text()} The thresholds (a loss of one "
    f"accuracy point; half the loss) were fixed before any run. The ghost size {SMALL} is Ioffe's "
    f"microbatch; over 2 examples every per-unit x̂ is ±1."
)


def accuracy(run) -> float:
    """Final test accuracy; NaN for a run that diverged (its seed's effects are undefined)."""
    return float("nan") if run.diverged else run.test_acc


def setting(run) -> str:
    """How a run normalized its examples: whole batches of 32, ghost batches of 4 in them, or batches of 4
    (a ghost batch of 4 leaves a batch of 4 whole)."""
    if run["data.batch_size"] == SMALL:
        return BATCH
    return GHOST if run["norm.ghost_batch_size"] == SMALL else WHOLE


def twin_gap(runs) -> float:
    """The largest difference in final test accuracy between a batch-4 run with ghost batches of 4 and its
    twin without: ghost batches the size of the batch change nothing, so it should be 0."""
    by = {(r["norm.name"], r["seed"], r["norm.ghost_batch_size"]): r for r in runs if setting(r) == BATCH}
    return max(
        (
            abs(r.test_acc - by[n, s, None].test_acc)
            for (n, s, g), r in by.items()
            if g and (n, s, None) in by
        ),
        default=0.0,
    )


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "batch_renorm")
    require(runs, "data.batch_size", SMALL, REFERENCE)
    require(runs, "norm.ghost_batch_size", None, SMALL)
    once = [r for r in runs if not (setting(r) == BATCH and r["norm.ghost_batch_size"] == SMALL)]
    small = (GHOST, BATCH)
    trains, loses, keeps, share = {}, {s: {} for s in small}, {s: {} for s in small}, {}
    for (seed,), cell in group(once, "seed").items():
        acc = {(r["norm.name"], setting(r)): accuracy(r) for r in cell}
        acc = {(n, s): acc.get((n, s), math.nan) for n in ("bn", "batch_renorm") for s in SETTINGS}
        seed = str(seed)
        trains[seed] = min(acc["bn", WHOLE], acc["batch_renorm", WHOLE])
        for s in small:
            loses[s][seed] = acc["bn", WHOLE] - acc["bn", s]
            renorm_loses = acc["batch_renorm", WHOLE] - acc["batch_renorm", s]
            keeps[s][seed] = loses[s][seed] / 2 - renorm_loses
        share[seed] = loses[GHOST][seed] - loses[BATCH][seed] / 2
    parts = [TRAINS.judge(trains)]
    parts += [LOSES.judge(loses[s], s) for s in small]
    parts += [RECOVERS.judge(keeps[s], s) for s in small]
    parts.append(SHARE.judge(share, BATCH))
    named = {p.name: p for p in parts}

    table = []
    for norm in ("bn", "batch_renorm"):
        for s in SETTINGS:
            rs = [r for r in once if r["norm.name"] == norm and setting(r) == s]
            table.append(
                {
                    "norm": norm,
                    "setting": s,
                    "test accuracy (running statistics)": "%.4f ± %.4f" % mean_std(r.test_acc for r in rs),
                    "in training mode": "%.4f ± %.4f" % mean_std(r.batch_stats_acc for r in rs),
                    "diverged": sum(r.diverged for r in rs),
                }
            )

    fig, (ax,) = figure(1, width=8)
    for offset, norm in zip((-0.2, 0.2), ("bn", "batch_renorm")):
        stats = [
            mean_std(r.test_acc for r in once if r["norm.name"] == norm and setting(r) == s) for s in SETTINGS
        ]
        ax.bar(
            [x + offset for x in range(3)],
            [m for m, _ in stats],
            0.4,
            yerr=[sd for _, sd in stats],
            label=norm,
            capsize=3,
        )
    ax.set_xticks(range(3), SETTINGS)
    low = min(mean_std(r.test_acc for r in once if setting(r) == s)[0] for s in SETTINGS)
    ax.set(ylabel="final test accuracy", ylim=(max(0.0, low - 0.1), 1.0))
    ax.legend(title="norm")
    fig.suptitle("BN and batch renorm with small statistics (mean ± std over seeds)")

    def estimate(effect: Effect, where: str) -> str:
        return named[f"{effect.name} ({where})"].estimate()

    summary = (
        f"BN lost {estimate(LOSES, GHOST)} with ghost batches of {SMALL} and {estimate(LOSES, BATCH)} at "
        f"batch {SMALL}. Half of BN's loss minus batch renorm's: {estimate(RECOVERS, GHOST)} with ghost "
        f"batches, {estimate(RECOVERS, BATCH)} at batch {SMALL} (above 0: renorm keeps more than half). BN's "
        f"ghost loss minus half its batch-{SMALL} loss: {estimate(SHARE, BATCH)} (mean [95 % interval] over "
        f"seeds)."
    )
    notes = [
        "Ioffe's evidence is Inception-v3 on ImageNet, normalized in microbatches of 4 inside minibatches of "
        "1,600 and trained with RMSProp; this sweep is an MLP on digits with plain SGD and ghost batches of "
        "4 inside batches of 32.",
        "Batch renorm's schedule counts SGD steps, as the paper's does, so with whole batches and with ghost "
        "batches it relaxes at the same point of training. The batch-4 runs take 8 times the steps, so "
        "theirs relax in an eighth of the epochs (their clips fully open after 3 % of training).",
        "The running statistics move by momentum 0.1 per normalization batch, as torch's do: with batches "
        "or ghost batches of 4 they average about 40 examples where batch 32's average about 320, so they "
        "are noisier too, a part of the statistics' noise this claim measures. Precise statistics "
        "(eval.precise_bn_batches) would separate it, but batch renorm's training forward reads the running "
        "statistics being recomputed, so the engine refuses them for it. The column 'in training mode' "
        "tests each batch of the training batch size as it was trained (batch or ghost-batch statistics): "
        "its gap to the running-statistics accuracy is the train/test difference the hypothesis names.",
        "The two halfway effects have their threshold at 0: an interval wholly above or below half decides "
        "them, however close to half.",
        f"A ghost batch of {SMALL} leaves a batch of {SMALL} whole, so the sweep's batch-{SMALL} runs with "
        f"ghost batches are twins of those without; the analysis uses the ones without. The largest "
        f"difference in final test accuracy between twins: {twin_gap(runs) * 100:.2f} points.",
    ]
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="small_batch",
    title="BN's small-batch loss is its statistics' noise, and batch renorm recovers it",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, LOSES, RECOVERS, SHARE),
    analyze=analyze,
    introduced="2026-12-05",
)
