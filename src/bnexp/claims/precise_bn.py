"""Claim: BN's moving-average population statistics misestimate the population, and precise statistics
recover the accuracy that costs (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3).

At test time BN normalizes with running averages of the training batches' statistics, an exponential moving
average (EMA) that weighs the latest batches most, computed while the weights moved. Wu & Johnson show that
with a large EMA momentum (in torch's convention: the latest batch's weight) or noisy batch statistics the
EMA is a poor estimate, and that "precise BN", statistics recomputed as a plain average over many training
batches with the weights frozen, recovers the loss. The comparison here is within each run: the same weights
tested with its EMA statistics, with precise ones (`eval.precise_bn_batches`) and with each test batch's own.
"""

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import figure

PRECISE_BATCHES = 1600  # the experiment's eval.precise_bn_batches: 6,400 examples at batch 4, more at 32
DEFAULT, LARGE = 0.1, 0.5  # torch's EMA momentum, and a large one: half the estimate from the latest batch
SMALL, REFERENCE = 4, 32  # batch sizes
JUDGED = ((LARGE, REFERENCE), (DEFAULT, SMALL))  # the settings where the EMA should fail
TRAINS = Effect(
    "BN trains",
    "the final test accuracy with precise statistics: the network must have learned the task for its "
    "statistics to matter (judged in each setting, gating that setting's comparison)",
    smallest=0.8,
    above=True,
    unit="%",
    control=True,
)
GAIN = Effect(
    "precise minus EMA",
    "final test accuracy with precise statistics minus with the EMA's, the same weights",
    smallest=0.01,
    above=True,
    paper="Wu & Johnson 2021 (Sec. 3.1-3.2): EMA statistics with a large momentum are inaccurate, and "
    "precise BN's average over many batches with the weights frozen is more accurate and stable.",
)
DEFAULTS = Effect(
    "precise minus EMA where the EMA should do",
    "the same at torch's defaults, where the EMA is predicted to cost less than the smallest effect: "
    "reported, a check of the comparison",
    smallest=0.01,
    above=False,
    decides=False,
)

HYPOTHESIS = (
    "BN's EMA population statistics lag the moving weights and carry the noise of the latest batches; "
    "with a large momentum or small batches they misestimate the population statistics and cost test "
    "accuracy, which statistics recomputed over many batches with the weights frozen (precise BN) recover "
    "(Wu & Johnson 2021, Sec. 3)."
)
CRITERION = (
    f"The BN paper's sigmoid MLP (3×100) at EMA momentum {DEFAULT} and {LARGE} and batch sizes {SMALL} and "
    f"{REFERENCE}, one run per setting and seed, each tested at the end with its EMA statistics and with "
    f"precise ones ({PRECISE_BATCHES} training batches of its own batch size, at least 6,400 examples, the "
    f"weights frozen, a plain average). The EMA's momentum does not change training (BN trains on batch "
    f"statistics), so at batch {REFERENCE} the two momenta train the same weights and differ only in the "
    f"EMA. In each setting compared, a control gates the comparison: {TRAINS.text()} Effect, at momentum "
    f"{LARGE} (batch {REFERENCE}) and at batch {SMALL} (momentum {DEFAULT}): {GAIN.text()} Check, at "
    f"momentum {DEFAULT} and batch {REFERENCE}: {DEFAULTS.text()} The smallest effect of interest, one "
    f"accuracy point, was fixed before any run."
)


def gain(run) -> float:
    """Final test accuracy with precise statistics minus with the EMA's."""
    return precise_acc(run) - run.test_acc if run.metrics else float("nan")


def precise_acc(run) -> float:
    return (run.metrics or {}).get(records.PRECISE_ACC, float("nan"))


def setting(run) -> tuple[float, int]:
    return run["norm.momentum"], run["data.batch_size"]


def where(s: tuple[float, int]) -> str:
    return f"momentum {s[0]}, batch {s[1]}"


def analyze(runs) -> Finding:
    require(runs, "norm.momentum", DEFAULT, LARGE)
    require(runs, "data.batch_size", SMALL, REFERENCE)
    compared = ((DEFAULT, REFERENCE), *JUDGED)
    trains, gains = {s: {} for s in compared}, {s: {} for s in compared}
    for (seed,), cell in group(runs, "seed").items():
        by = {setting(r): r for r in cell}
        for s in compared:
            trains[s][str(seed)] = precise_acc(by[s])
            gains[s][str(seed)] = gain(by[s])
    parts = [TRAINS.judge(trains[s], where(s)) for s in compared]
    parts += [GAIN.judge(gains[s], where(s)) for s in JUDGED]
    parts.append(DEFAULTS.judge(gains[DEFAULT, REFERENCE], where((DEFAULT, REFERENCE))))
    named = {p.name: p for p in parts}

    table = []
    for (momentum, batch), rs in group(runs, "norm.momentum", "data.batch_size").items():
        table.append(
            {
                "momentum": momentum,
                "batch": batch,
                "EMA statistics": "%.4f ± %.4f" % mean_std(r.test_acc for r in rs),
                "precise statistics": "%.4f ± %.4f" % mean_std(precise_acc(r) for r in rs),
                "each test batch's own": "%.4f ± %.4f" % mean_std(r.batch_stats_acc for r in rs),
            }
        )

    fig, (ax,) = figure(1, width=8)
    settings = list(group(runs, "norm.momentum", "data.batch_size"))
    xs = range(len(settings))
    for offset, (name, acc) in zip(
        (-0.25, 0.0, 0.25),
        (
            ("EMA statistics", lambda r: r.test_acc),
            ("precise statistics", precise_acc),
            ("each test batch's own", lambda r: r.batch_stats_acc),
        ),
    ):
        stats = [mean_std(acc(r) for r in runs if setting(r) == k) for k in settings]
        ax.bar(
            [x + offset for x in xs], [m for m, _ in stats], 0.25, yerr=[sd for _, sd in stats], label=name
        )
    ax.set_xticks(list(xs), [where(k) for k in settings], rotation=15, ha="right")
    ax.set(ylabel="final test accuracy", ylim=(0, 1))
    ax.legend()
    fig.suptitle("BN tested with EMA, precise and per-batch statistics (mean ± std over seeds)")

    summary = (
        "Precise minus EMA statistics, final test accuracy: "
        + "; ".join(f"{where(s)} {named[f'{GAIN.name} ({where(s)})'].estimate()}" for s in JUDGED)
        + f"; at torch's defaults "
        f"{named[f'{DEFAULTS.name} ({where((DEFAULT, REFERENCE))})'].estimate()} (mean [95 % interval] over "
        f"seeds)."
    )
    notes = [
        "Wu & Johnson's evidence is from ResNets on ImageNet and detection models; this sweep is an MLP on "
        "digits, where a test batch's own statistics (the third column) are also shown for reference.",
    ]
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="precise_bn",
    title="Precise BN statistics recover what the EMA's misestimate costs",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, GAIN, DEFAULTS),
    analyze=analyze,
    introduced="2026-12-05",
)
