"""Claim: batch normalization regularizes, so dropout becomes unnecessary.

The test needs a regime where dropout measurably helps, or "BN matches dropout" holds even if BN does nothing:
a wide ReLU MLP on a small training subset, tested on the whole test split. Dropout's gain there is the
positive control, checked first. Dropout sits after the last hidden layer only (model.dropout_last), where it
feeds the head and no BN, in every arm: in front of BN it would shift the variance BN's test statistics see
(Li et al. 2019), an artefact against "dropout on top of BN". The paper's explanation, BN's batch noise, is
measured beside the verdict without deciding it: `batch_renorm` unclipped (bnexp.norm.BatchRenorm) is BN whose
training forward normalizes each example by the running statistics, not its mini-batch's, and keeps BN's
gradient; what BN gains beyond it is what its batch noise gains.
"""

import math

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, Revision, group, mean_std, ratio, require
from bnexp.claims.plots import figure

MARGIN = 0.01  # one accuracy point
CONTROL = Effect(
    "dropout's gain",
    "final test accuracy of the plain network with dropout minus without; the comparisons below mean "
    "something only where it holds",
    smallest=MARGIN,
    above=True,
    control=True,
    paper="Srivastava et al. 2014 (Table 2, all 60,000 MNIST images): 1.25 % test error for a 3×1024 ReLU "
    "network with dropout, against 1.60 % for a standard 2×800 network without (Simard et al. 2003).",
)
MATCHES = Effect(
    "BN against dropout",
    "final test accuracy of BN without dropout minus the plain network's with dropout (BN's gain minus "
    "dropout's gain)",
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
NOISE = Effect(
    "BN's noise",
    "final test accuracy of BN minus noise-free BN's (batch renorm, unclipped after a warm-up), both without "
    "dropout: the gain BN owes to normalizing each example with its mini-batch's statistics",
    smallest=MARGIN / 2,
    above=True,
    decides=False,
    paper="Ioffe & Szegedy 2015 (Sec. 3.4): a training example is seen in conjunction with the other "
    "examples of its mini-batch, so the network no longer produces deterministic values for it; they "
    "found this advantageous to generalization.",
)
FIT = 0.05  # nats: the noise-free network may end at most this much above BN's training loss
FITS = Effect(
    "noise-free BN fits",
    "final training loss (full training split, nats) of noise-free BN minus BN's, both without dropout: "
    "removing the noise must not stop the network fitting its training set, or a lower test accuracy "
    "would say nothing about regularization",
    smallest=FIT,
    above=False,
    unit="",
    control=True,
    gates=(NOISE.name,),
)

HYPOTHESIS = (
    "Batch normalization regularizes: in a regime where dropout helps, a BN network without dropout "
    "generalizes at least as well as a plain network with it, and adding dropout to BN no longer helps "
    "(Ioffe & Szegedy 2015, abstract, Sec. 3.4 and 4.2.1). The paper's explanation, that each example is "
    "normalized with the other examples of its mini-batch, is measured beside the verdict."
)
CRITERION = (
    f"A 2×512 ReLU MLP on 1,000 training digits, tested on the whole test split, dropout 0.5 after its last "
    f"hidden layer only. First the positive control, {CONTROL.text()} Then non-inferiority and no gain, "
    f"with a margin of {MARGIN * 100:.0f} point: {MATCHES.text()} {ADDS.text()} Then the mechanism, after "
    f"its own control: {FITS.text()} {NOISE.text()} That δ is half the smallest dropout gain the first "
    f"control admits."
)

# (norm, with dropout) -> the setting's name, in the order the report shows them
SETTINGS = {
    ("none", False): "plain",
    ("none", True): "dropout",
    ("bn", False): "bn",
    ("bn", True): "bn + dropout",
    ("batch_renorm", False): "noise-free bn",
    ("batch_renorm", True): "noise-free bn + dropout",
}


def setting(run) -> str:
    return SETTINGS[run["norm.name"], run["model.dropout"] > 0]


def analyze(runs) -> Finding:
    require(runs, "norm.name", "none", "bn", "batch_renorm")
    effects = {e: {} for e in (CONTROL, MATCHES, ADDS, FITS, NOISE)}
    for (seed,), cell in group(runs, "seed").items():
        acc = {setting(r): r.test_acc for r in cell}
        fit = {setting(r): train_loss(r) for r in cell}
        s = str(seed)
        effects[CONTROL][s] = acc["dropout"] - acc["plain"]
        effects[MATCHES][s] = acc["bn"] - acc["dropout"]
        effects[ADDS][s] = acc["bn + dropout"] - acc["bn"]
        effects[FITS][s] = fit["noise-free bn"] - fit["bn"]
        effects[NOISE][s] = acc["bn"] - acc["noise-free bn"]
    judged = {e: e.judge(values) for e, values in effects.items()}
    parts = list(judged.values())

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

    fig, (ax,) = figure(1, width=8)
    test = [mean_std(r.test_acc for r in by_setting[n]) for n in names]
    gap = [mean_std((r.train_acc or 0) - r.test_acc for r in by_setting[n]) for n in names]
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [m for m, _ in test], 0.4, yerr=[s for _, s in test], capsize=3)
    ax.bar([x + 0.2 for x in xs], [m for m, _ in gap], 0.4, yerr=[s for _, s in gap], capsize=3)
    ax.legend(["test accuracy", "train − test gap"])
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    ax.set(ylim=(0, 1), ylabel="accuracy")
    fig.suptitle("Generalization with and without BN, its noise and dropout (mean ± std over seeds)")

    # BN's share of dropout's gain, a ratio of the mean gains (per seed, a small gain would blow it up).
    plain = mean_acc(by_setting["plain"])
    share = ratio(mean_acc(by_setting["bn"]) - plain, mean_acc(by_setting["dropout"]) - plain)
    summary = (
        f"Dropout's gain on the plain network (the control): {judged[CONTROL].estimate()}. BN without "
        f"dropout minus the plain network with dropout: {judged[MATCHES].estimate()} (BN recovers "
        f"{share:.0%} of dropout's mean gain); dropout's gain on top of BN: {judged[ADDS].estimate()}. "
        f"Beside the verdict, BN minus "
        f"its noise-free version: {judged[NOISE].estimate()}, the latter's training loss minus BN's "
        f"{judged[FITS].estimate()} nats (mean [95 % interval] over seeds)."
    )
    return Finding(parts, summary, table, fig)


def train_loss(run) -> float:
    """A run's final training loss over the whole training split (NaN for a failed or diverged run)."""
    loss = (run.metrics or {}).get(records.FINAL_TRAIN_LOSS)
    return math.nan if loss is None else loss


def mean_acc(runs) -> float:
    """The mean final test accuracy of runs (a setting's seeds)."""
    return mean_std(r.test_acc for r in runs)[0]


CLAIM = Claim(
    name="regularization",
    title="BN regularizes, so dropout is unnecessary",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(CONTROL, MATCHES, ADDS, FITS, NOISE),
    analyze=analyze,
    previous="supported",
    revisions=(
        Revision(
            3,
            "2026-12-05",
            why="Dropout barely helped the plain network (0.874 vs 0.865 in the standard profile, under the "
            "one-point margin; 0.937 vs 0.936 in the quick one), so BN "
            "matching dropout held even if BN did nothing. Now a regime where dropout helps (a 2×512 ReLU "
            "MLP on 1,000 of mnist5k's training digits, the whole test split), dropout's gain checked first "
            "as a positive control, and dropout after the last hidden layer only, in every arm, so that it "
            "never sits in front of a BN layer (Li et al. 2019's variance shift). A referee of a draft asked "
            "three changes, made before any run of the compared arms: the noise mechanism (BN against batch "
            "renorm unclipped after 100 batches of plain BN: normalized by running statistics, BN's gradient "
            "kept) is reported beside the verdict, not deciding it, as the paper asserts the regularization, "
            "not its cause; dropout moved from every hidden layer to the last; the noise-free arm's fit is "
            "judged by training loss (training accuracy is 100 % for every arm here). The regime and "
            "the placement were piloted on the plain network with and without dropout only.",
            previous="inconclusive (standard profile, 2026-12-03): BN against dropout -0.9 points "
            "[-1.7 points, -0.1 points]",
        ),
    ),
)
