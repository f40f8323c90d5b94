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

PRECISE_BATCHES = 200  # the experiment's eval.precise_bn_batches, for the words below
DEFAULT, LARGE = 0.1, 0.5  # torch's EMA momentum, and a large one: half the estimate from the latest batch
SMALL, REFERENCE = 4, 32  # batch sizes
TRAINS = Effect(
    "BN trains",
    f"the final test accuracy with precise statistics of the run at torch's defaults (momentum {DEFAULT}, "
    f"batch {REFERENCE}): the network must have learned the task for its statistics to matter",
    smallest=0.8,
    above=True,
    unit="%",
    control=True,
)
MOMENTUM = Effect(
    "large momentum: precise minus EMA",
    f"final test accuracy with precise statistics minus with the EMA's, at momentum {LARGE} (batch "
    f"{REFERENCE}), the same weights",
    smallest=0.01,
    above=True,
    paper="Wu & Johnson 2021 (Sec. 3.1-3.2): EMA statistics with a large momentum are inaccurate, and "
    "precise BN's average over many batches with the weights frozen is more accurate and stable.",
)
SMALL_BATCH = Effect(
    "small batches: precise minus EMA",
    f"final test accuracy with precise statistics minus with the EMA's, at batch {SMALL} (momentum "
    f"{DEFAULT}), the same weights",
    smallest=0.01,
    above=True,
)
DEFAULTS = Effect(
    "torch's defaults: precise minus EMA",
    f"the same at momentum {DEFAULT}, batch {REFERENCE}, where the EMA should do: reported, a check of "
    f"the comparison",
    smallest=0.01,
    above=True,
    decides=False,
)

HYPOTHESIS = (
    "BN's EMA population statistics lag the moving weights and carry the noise of the latest batches; "
    "with a large momentum or small batches they misestimate the population statistics and cost test "
    "accuracy, which statistics recomputed over many batches with the weights frozen (precise BN) recover "
    "(Wu & Johnson 2021, Sec. 3)."
)
CRITERION = (
    f"The BN paper's sigmoid MLP (3×100), one run per setting and seed, each tested at the end with its EMA "
    f"statistics and with precise ones ({PRECISE_BATCHES} training batches of its own batch size, the "
    f"weights frozen, a plain average). A control, two effects and a check. Control: {TRAINS.text()} "
    f"Effect: {MOMENTUM.text()} Effect: {SMALL_BATCH.text()} Check: {DEFAULTS.text()} The smallest effect "
    f"of interest, one accuracy point, was fixed before any run."
)


def gain(run) -> float:
    """Final test accuracy with precise statistics minus with the EMA's."""
    return run.metrics[records.PRECISE_ACC] - run.test_acc if run.metrics else float("nan")


def precise_acc(run) -> float:
    return run.metrics[records.PRECISE_ACC] if run.metrics else float("nan")


def setting(run) -> tuple[float, int]:
    return run["norm.momentum"], run["data.batch_size"]


def analyze(runs) -> Finding:
    require(runs, "norm.momentum", DEFAULT, LARGE)
    require(runs, "data.batch_size", SMALL, REFERENCE)
    effects = {e: {} for e in (TRAINS, MOMENTUM, SMALL_BATCH, DEFAULTS)}
    for (seed,), cell in group(runs, "seed").items():
        s, by = str(seed), {setting(r): r for r in cell}
        effects[TRAINS][s] = precise_acc(by[DEFAULT, REFERENCE])
        effects[MOMENTUM][s] = gain(by[LARGE, REFERENCE])
        effects[SMALL_BATCH][s] = gain(by[DEFAULT, SMALL])
        effects[DEFAULTS][s] = gain(by[DEFAULT, REFERENCE])
    judged = {e: e.judge(values) for e, values in effects.items()}

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
    ax.set_xticks(list(xs), [f"momentum {m}, batch {b}" for m, b in settings], rotation=15, ha="right")
    ax.set(ylabel="final test accuracy", ylim=(0, 1))
    ax.legend()
    fig.suptitle("BN tested with EMA, precise and per-batch statistics (mean ± std over seeds)")

    summary = (
        f"Precise minus EMA statistics, final test accuracy: at momentum {LARGE} "
        f"{judged[MOMENTUM].estimate()}; at batch {SMALL} {judged[SMALL_BATCH].estimate()}; at torch's "
        f"defaults {judged[DEFAULTS].estimate()} (mean [95 % interval] over seeds). Control: "
        f"{judged[TRAINS].estimate()}."
    )
    notes = [
        "Wu & Johnson's evidence is from ResNets on ImageNet and detection models; this sweep is an MLP on "
        "digits, where a test batch's own statistics (the third column) are also shown for reference.",
    ]
    return Finding(list(judged.values()), summary, table, fig, notes)


CLAIM = Claim(
    name="precise_bn",
    title="Precise BN statistics recover what the EMA's misestimate costs",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, MOMENTUM, SMALL_BATCH, DEFAULTS),
    analyze=analyze,
    introduced="2026-12-05",
)
