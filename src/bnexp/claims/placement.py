"""Claim: batch normalization belongs before the nonlinearity, as the BN paper places it.

The BN paper (Ioffe & Szegedy 2015, Sec. 3.2) normalizes x = Wu + b and feeds the result to g, and argues
for that place: the layer input u is another nonlinearity's output, whose distribution keeps changing shape,
so fixing its first two moments would not remove its shift, while Wu + b is more likely symmetric and
non-sparse ("more Gaussian"), and normalizing it gives activations of a stable distribution. Practitioners
often put BN after the nonlinearity instead. The sweep trains the BN paper's MLP both ways
(`model.norm_position=pre|post`), with sigmoids and with ReLUs, each placement at its best of three learning
rates by training loss, and compares final accuracy and accuracy early in training, seed by seed.
"""

import math

import numpy as np

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import band, figure

ACTIVATIONS = ("sigmoid", "relu")
EARLY = 0.1  # "early in training": the first evaluation at or after this share of the step budget
TRAINS = Effect(
    "both placements train",
    "the lower final test accuracy of the two placements (each at its chosen learning rate) with this "
    "nonlinearity: a placement that does not train makes the comparison meaningless",
    smallest=0.8,
    above=True,
    unit="%",
    control=True,
)
FINAL = Effect(
    "final accuracy, before minus after",
    "final test accuracy with BN before g minus with BN after g (same seed and nonlinearity, each at its "
    "chosen learning rate)",
    smallest=0.005,
    above=True,
    paper="Ioffe & Szegedy 2015 (Sec. 3.2) argue for BN before the nonlinearity without comparing the two "
    "places.",
)
SPEED = Effect(
    "early accuracy, before minus after",
    f"test accuracy at {EARLY:.0%} of the step budget (the first evaluation there) with BN before g minus "
    f"with BN after g (same seed and nonlinearity, each at its chosen learning rate): the speed of training",
    smallest=0.02,
    above=True,
)

HYPOTHESIS = (
    "BN before the nonlinearity, g(BN(Wu)), trains faster and ends more accurate than BN after it, "
    "BN(g(Wu + b)): normalizing Wu + b, whose distribution is more symmetric and non-sparse than a "
    "nonlinearity's output, gives the next layer's inputs a stable distribution (Ioffe & Szegedy 2015, "
    "Sec. 3.2). The claim is the paper's choice of place; the common practice of BN after a ReLU is its "
    "alternative."
)
CRITERION = (
    "The BN paper's MLP (3×100) with sigmoids and with ReLUs, BN before or after each nonlinearity; BN "
    "before g drops the bias before it as redundant, BN after g keeps the bias before g (100 parameters "
    "per layer more). Each placement is trained at three learning rates (0.1, 0.5, 2) with the same budget, "
    "and for each seed, nonlinearity and placement the rate with the lowest final training loss is "
    "chosen (training loss, not test accuracy: the choice must not look at what is compared). Per "
    f"nonlinearity, a control, then two effects. Control: {TRAINS.text()} Effect: {FINAL.text()} Effect: "
    f"{SPEED.text()} The smallest effects of interest are half an accuracy point at the end and two points "
    "early in training."
)


def early_acc(run) -> float:
    """Test accuracy at the first evaluation at or after EARLY of the run's step budget (NaN if none)."""
    steps, values = records.curve(run, records.TEST_ACC)
    later = np.nonzero(steps >= EARLY * run.steps_planned)[0] if run.metrics else []
    return float(values[later[0]]) if len(later) else math.nan


def train_loss(run) -> float:
    loss = (run.metrics or {}).get(records.FINAL_TRAIN_LOSS)
    return math.nan if loss is None or run.diverged else loss


def chosen(runs):
    """The run of the learning rate with the lowest final training loss (None if every rate diverged)."""
    trained = [r for r in runs if math.isfinite(train_loss(r))]
    return min(trained, key=train_loss) if trained else None


def _acc(run, early: bool = False) -> float:
    if run is None:
        return math.nan
    return early_acc(run) if early else run.test_acc


def analyze(runs) -> Finding:
    require(runs, "model.norm_position", "pre", "post")
    require(runs, "model.activation", *ACTIVATIONS)
    values = {(e, a): {} for e in (TRAINS, FINAL, SPEED) for a in ACTIVATIONS}
    picks = {}  # (activation, position) -> the chosen runs, one per seed
    for (seed, activation), cell in group(runs, "seed", "model.activation").items():
        s = str(seed)
        pre, post = (chosen([r for r in cell if r["model.norm_position"] == p]) for p in ("pre", "post"))
        picks.setdefault((activation, "pre"), []).append(pre)
        picks.setdefault((activation, "post"), []).append(post)
        values[TRAINS, activation][s] = min(_acc(pre), _acc(post))
        values[FINAL, activation][s] = _acc(pre) - _acc(post)
        values[SPEED, activation][s] = _acc(pre, early=True) - _acc(post, early=True)
    parts = [e.judge(v, where=a) for (e, a), v in values.items()]

    table = []
    for (activation, position), rs in group(runs, "model.activation", "model.norm_position").items():
        row = {"nonlinearity": activation, "BN": "before g" if position == "pre" else "after g"}
        for (lr,), cell in group(rs, "optim.lr").items():
            row[f"final test acc @ lr {lr}"] = "%.4f" % mean_std(r.test_acc for r in cell)[0]
        picked = picks[activation, position]
        row["chosen rates"] = ", ".join(str(r["optim.lr"]) if r else "none" for r in picked)
        row["final test acc, chosen"] = "%.4f ± %.4f" % mean_std(_acc(r) for r in picked)
        row[f"test acc at {EARLY:.0%}, chosen"] = "%.4f ± %.4f" % mean_std(_acc(r, True) for r in picked)
        table.append(row)

    fig, axes = figure(len(ACTIVATIONS))
    for ax, activation in zip(axes, ACTIVATIONS):
        for position in ("pre", "post"):
            label = "BN before g" if position == "pre" else "BN after g"
            picked = [r for r in picks[activation, position] if r is not None]
            band(ax, picked, lambda r: records.curve(r, records.TEST_ACC), label)
        ax.set(xlabel="step", ylabel="test accuracy", title=f"{activation}, chosen rates", ylim=(0, 1))
        ax.legend()
    fig.suptitle("BN before or after the nonlinearity (mean ± std over seeds)")

    judged = {p.name: p for p in parts}
    summary = (
        "BN before minus after the nonlinearity, each at its learning rate of lowest training loss; final "
        "test accuracy: "
        + "; ".join(f"{a} {judged[f'{FINAL.name} ({a})'].estimate()}" for a in ACTIVATIONS)
        + f". At {EARLY:.0%} of the steps: "
        + "; ".join(f"{a} {judged[f'{SPEED.name} ({a})'].estimate()}" for a in ACTIVATIONS)
        + " (mean [95 % interval] over seeds)."
    )
    notes = [
        "The BN paper's MNIST network is the sweep's; the paper itself reports no comparison of the two "
        "places. Each placement gets the best of three learning rates by training loss; a finer grid could "
        "move a placement's best rate between them.",
    ]
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="placement",
    title="BN belongs before the nonlinearity",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, FINAL, SPEED),
    analyze=analyze,
    introduced="2026-12-05",
)
