"""Claim: batch normalization regularizes, so dropout becomes unnecessary."""

from bnexp.claims import Claim, Effect, Finding, group, mean_std
from bnexp.claims.plots import figure

MARGIN = 0.01  # one accuracy point
MATCHES = Effect(
    "BN against dropout",
    "final test accuracy of BN without dropout minus the plain network's with dropout",
    smallest=-MARGIN,
    above=True,
)
ADDS = Effect(
    "dropout's gain on top of BN",
    "final test accuracy of BN with dropout minus BN's without",
    smallest=MARGIN,
    above=False,
    paper="Ioffe & Szegedy 2015 (abstract): BN acts as a regularizer, in some cases removing the need for "
    "dropout; the paper gives no side-by-side numbers.",
)

HYPOTHESIS = (
    "Batch normalization regularizes: a BN network generalizes at least as well without dropout as a "
    "plain network with it, and adding dropout to BN no longer helps (Ioffe & Szegedy 2015, Sec. 3.4 "
    "and 4.2.1)."
)
CRITERION = (
    f"On a training set small enough to overfit, two effects (non-inferiority and no gain, with a margin of "
    f"{MARGIN * 100:.0f} point): {MATCHES.text()} {ADDS.text()}"
)

# (norm, with dropout) -> the setting's name, in the order the report shows them
SETTINGS = {
    ("none", False): "plain",
    ("none", True): "dropout",
    ("bn", False): "bn",
    ("bn", True): "bn + dropout",
}


def setting(run) -> str:
    return SETTINGS[run["norm.name"], run["model.dropout"] > 0]


def analyze(runs) -> Finding:
    matches, adds = {}, {}
    for (seed,), cell in group(runs, "seed").items():
        acc = {setting(r): r.test_acc for r in cell}
        matches[str(seed)] = acc["bn"] - acc["dropout"]
        adds[str(seed)] = acc["bn + dropout"] - acc["bn"]
    parts = [MATCHES.judge(matches), ADDS.judge(adds)]
    by_setting = {}
    for r in runs:
        by_setting.setdefault(setting(r), []).append(r)
    names = [s for s in SETTINGS.values() if s in by_setting]
    table = []
    for name in names:
        rs = by_setting[name]
        train_acc = [r.train_acc for r in rs]
        table.append(
            {
                "setting": name,
                "test acc": "%.3f ± %.3f" % mean_std(r.test_acc for r in rs),
                "train acc": "%.3f ± %.3f" % mean_std(train_acc),
                "train − test gap": "%.3f ± %.3f"
                % mean_std(t - r.test_acc for t, r in zip(train_acc, rs) if t is not None),
            }
        )

    fig, (ax,) = figure(1, width=6)
    test = [mean_std(r.test_acc for r in by_setting[n]) for n in names]
    gap = [mean_std((r.train_acc or 0) - r.test_acc for r in by_setting[n]) for n in names]
    xs = range(len(names))
    ax.bar(
        [x - 0.2 for x in xs],
        [m for m, _ in test],
        0.4,
        yerr=[s for _, s in test],
        capsize=3,
        label="test accuracy",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [m for m, _ in gap],
        0.4,
        yerr=[s for _, s in gap],
        capsize=3,
        label="train − test gap",
    )
    ax.set_xticks(list(xs), names)
    ax.set(ylim=(0, 1), ylabel="accuracy")
    ax.legend()
    fig.suptitle("Generalization with and without BN and dropout (mean ± std over seeds)")

    summary = (
        f"BN without dropout minus the plain network with dropout: {parts[0].estimate()}; dropout's gain "
        f"on top of BN: {parts[1].estimate()} (mean [95 % interval] over seeds)."
    )
    return Finding(parts, summary, table, fig)


CLAIM = Claim(
    name="regularization",
    title="BN regularizes, so dropout is unnecessary",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(MATCHES, ADDS),
    analyze=analyze,
    previous="supported",
)
