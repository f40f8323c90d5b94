"""Claim: BN's small-batch loss is the noise of its statistics, and batch renormalization recovers it
(Ioffe 2017, "Batch Renormalization", Sec. 4.3; Hoffer et al. 2017's ghost batches).

A batch of 4 changes two things at once: each normalization sees 4 examples (noisy μ_B and σ_B, every
output tied to three batch-mates, and a training function unlike the running-statistics one used at test),
and each gradient is an average over 4. Ghost batches separate them: an SGD batch of 32 normalized in ghost
batches of 4 has the statistics of a batch of 4 and the gradient of a batch of 32. Ioffe's small-minibatch
experiment is exactly that (Inception-v3, each minibatch normalized in microbatches of 4), with batch renorm
as the remedy: it corrects each batch's x̂ toward the running statistics by r and d, so that training computes
inference's function of one example.
"""

from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import figure

SMALL, REFERENCE = 4, 32  # Ioffe's microbatch, and the SGD batch it sits in
WHOLE, GHOST, BATCH = "batch 32", f"ghost batches of {SMALL} in batch {REFERENCE}", f"batch {SMALL}"
SETTINGS = (WHOLE, GHOST, BATCH)  # how the examples are normalized and how many make a gradient

TRAINS = Effect(
    "BN trains at batch 32",
    f"BN's final test accuracy at SGD batch {REFERENCE} with whole-batch statistics: the reference must have "
    f"learned the task for losses from it to mean anything",
    smallest=0.9,
    above=True,
    unit="%",
    control=True,
)
RECOVERS = Effect(
    "batch renorm's gain",
    "batch renorm's final test accuracy minus BN's, the same small statistics and seed",
    smallest=0.01,
    above=True,
    paper="Ioffe 2017 (Sec. 4.3, Fig. 3; Inception-v3 on ImageNet, each minibatch of 1,600 normalized in "
    "microbatches of 4): BN's validation accuracy falls well below its accuracy with microbatches of 32, "
    "and batch renorm recovers much of the difference.",
)
SHARE = Effect(
    "the statistics' share",
    f"BN's loss with ghost batches of {SMALL} (batch {REFERENCE} minus ghost) minus half its loss at batch "
    f"{SMALL} (batch {REFERENCE} minus batch {SMALL}), same seed: above 0 when the statistics' noise alone "
    f"costs more than half of what a batch of {SMALL} costs",
    smallest=0.0,
    above=True,
    paper="Hoffer et al. 2017 introduce ghost batches to give large-batch training small-batch "
    "statistics; Wu & He 2018 (Sec. 1) and Ioffe 2017 attribute BN's small-batch loss to its batch "
    "statistics.",
)

LOSES = Effect(
    "BN's loss",
    f"BN's final test accuracy at batch {REFERENCE} minus with the small statistics (same seed): BN must "
    f"lose accuracy there for a remedy or a share of the loss to mean anything (judged in each "
    f"small-statistics setting, gating that setting's parts)",
    smallest=0.01,
    above=True,
    control=True,
    gates=(RECOVERS.name, SHARE.name),
)
HYPOTHESIS = (
    f"BN's small-batch loss is its statistics': with {SMALL} examples per normalization μ_B and σ_B are "
    f"noisy, each example's output depends on its batch-mates, and training (batch statistics) and "
    f"inference (running statistics) compute different functions. Normalizing in ghost batches of {SMALL} "
    f"inside an SGD batch of {REFERENCE} keeps the statistics' noise without the gradient's (Hoffer et al. "
    f"2017), so it should cost BN most of what batches of {SMALL} cost; batch renorm, which corrects each "
    f"batch toward the running statistics, should recover much of the loss in both (Ioffe 2017, Sec. 4.3)."
)
CRITERION = (
    f"The BN paper's sigmoid MLP (3×100, the norm before each sigmoid, so each statistic is over the "
    f"examples alone) with BN or batch renorm in three settings: SGD batch {REFERENCE} with whole-batch "
    f"statistics, batch {REFERENCE} normalized in ghost batches of {SMALL}, and batch {SMALL}; plain SGD at "
    f"learning rate 1·N/32 (linear in the batch size), the same epochs in every setting; batch renorm on "
    f"the paper's schedule (plain BN, then r_max relaxed to 3 and d_max to 5), shortened to the run. "
    f"Control: "
    f"{TRAINS.text()} In each small-statistics setting (ghost batches, and batch {SMALL}), a control "
    f"gates its parts: {LOSES.text()} Effect, in each: {RECOVERS.text()} Effect, at batch {SMALL}: "
    f"{SHARE.text()} The smallest effects of interest (one accuracy point, and half the loss) were fixed "
    f"before any run; the ghost size {SMALL} is Ioffe's microbatch, the smallest at which a per-unit "
    f"statistic is not degenerate (over 2 examples every x̂ is ±1)."
)


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
    trains, loses, gains, share = {}, {s: {} for s in small}, {s: {} for s in small}, {}
    for (seed,), cell in group(once, "seed").items():
        acc = {(r["norm.name"], setting(r)): r.test_acc for r in cell}
        seed = str(seed)
        trains[seed] = acc["bn", WHOLE]
        for s in small:
            loses[s][seed] = acc["bn", WHOLE] - acc["bn", s]
            gains[s][seed] = acc["batch_renorm", s] - acc["bn", s]
        share[seed] = loses[GHOST][seed] - loses[BATCH][seed] / 2
    parts = [TRAINS.judge(trains)]
    parts += [LOSES.judge(loses[s], s) for s in small]
    parts += [RECOVERS.judge(gains[s], s) for s in small]
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
                    "with each test batch's own": "%.4f ± %.4f" % mean_std(r.batch_stats_acc for r in rs),
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
        f"batch {SMALL}; batch renorm's gain over BN was {estimate(RECOVERS, GHOST)} and "
        f"{estimate(RECOVERS, BATCH)}; the ghost loss minus half the batch-{SMALL} loss was "
        f"{estimate(SHARE, BATCH)} (mean [95 % interval] over seeds)."
    )
    notes = [
        "Ioffe's evidence is Inception-v3 on ImageNet, normalized in microbatches of 4 inside minibatches of "
        "1,600 and trained with RMSProp; this sweep is an MLP on digits with plain SGD, ghost batches of 4 "
        "inside batches of 32, and the paper's renorm schedule shortened to the run.",
        "Batch renorm's schedule counts normalization batches (num_batches_tracked). The small-statistics "
        "arms normalize 8 ghost batches or take 8 steps where batch 32 takes one, so at batch 32 with whole "
        "batches batch renorm relaxes its clips 8 times more slowly in epochs (that row of the table is "
        "shown, not judged).",
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
