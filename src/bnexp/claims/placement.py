"""Claim: batch normalization belongs before the nonlinearity, as the BN paper places it.

The BN paper (Ioffe & Szegedy 2015, Sec. 3.2) normalizes x = Wu + b and feeds the result to g, and argues
for that place: the layer input u is another nonlinearity's output, whose distribution keeps changing shape,
so fixing its first two moments would not remove its shift, while Wu + b is more likely symmetric and
non-sparse ("more Gaussian"), and normalizing it gives activations of a stable distribution. Practitioners
often put BN after the nonlinearity instead. The sweep trains the BN paper's MLP both ways
(`model.norm_position=pre|post`), with sigmoids and with ReLUs, at one learning rate, and compares final
accuracy and accuracy early in training, seed by seed.
"""

import math

import numpy as np

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import band, figure

ACTIVATIONS = ("sigmoid", "relu")
EARLY = 0.1  # "early in training": the first evaluation at or after this share of the step budget
TRAINS = Effect(
    "every arm trains",
    "the lowest final test accuracy of the seed's four runs (two placements, two nonlinearities): a "
    "placement that does not train at this learning rate makes the comparison one of learning rates",
    smallest=0.8,
    above=True,
    unit="%",
    control=True,
)


def _final(activation: str) -> Effect:
    return Effect(
        f"{activation}: final accuracy, before minus after",
        f"final test accuracy of the {activation} network with BN before g minus with BN after g (same seed)",
        smallest=0.005,
        above=True,
        paper="Ioffe & Szegedy 2015 (Sec. 3.2) argue for BN before the nonlinearity without comparing the "
        "two places.",
    )


def _early(activation: str) -> Effect:
    return Effect(
        f"{activation}: early accuracy, before minus after",
        f"test accuracy at {EARLY:.0%} of the step budget (the first evaluation there) of the {activation} "
        f"network with BN before g minus with BN after g (same seed): the speed of training",
        smallest=0.02,
        above=True,
    )


FINAL = {a: _final(a) for a in ACTIVATIONS}
SPEED = {a: _early(a) for a in ACTIVATIONS}

HYPOTHESIS = (
    "BN before the nonlinearity, g(BN(Wu)), trains faster and ends more accurate than BN after it, "
    "BN(g(Wu + b)): normalizing Wu + b, whose distribution is more symmetric and non-sparse than a "
    "nonlinearity's output, gives the next layer's inputs a stable distribution (Ioffe & Szegedy 2015, "
    "Sec. 3.2). The claim is the paper's choice of place; the common practice of BN after a ReLU is its "
    "alternative."
)
CRITERION = (
    "The BN paper's MLP (3×100) with sigmoids and with ReLUs, BN before or after each nonlinearity "
    "(the bias before BN dropped, the bias before g kept), every arm at the same learning rate and step "
    f"budget. A control, then four effects, one per nonlinearity and measure. Control: {TRAINS.text()} "
    + " ".join(f"Effect: {FINAL[a].text()} Effect: {SPEED[a].text()}" for a in ACTIVATIONS)
    + " The smallest effects of interest are half an accuracy point at the end and two points early in "
    "training, fixed before any run."
)


def early_acc(run) -> float:
    """Test accuracy at the first evaluation at or after EARLY of the run's step budget (NaN if none)."""
    steps, values = records.curve(run, records.TEST_ACC)
    later = np.nonzero(steps >= EARLY * run.steps_planned)[0] if run.metrics else []
    return float(values[later[0]]) if len(later) else math.nan


def analyze(runs) -> Finding:
    require(runs, "model.norm_position", "pre", "post")
    require(runs, "model.activation", *ACTIVATIONS)
    effects = {e: {} for e in (TRAINS, *FINAL.values(), *SPEED.values())}
    for (seed,), cell in group(runs, "seed").items():
        s = str(seed)
        arm = {(r["model.activation"], r["model.norm_position"]): r for r in cell}
        effects[TRAINS][s] = min(r.test_acc for r in cell)
        for a in ACTIVATIONS:
            effects[FINAL[a]][s] = arm[a, "pre"].test_acc - arm[a, "post"].test_acc
            effects[SPEED[a]][s] = early_acc(arm[a, "pre"]) - early_acc(arm[a, "post"])
    judged = {e: e.judge(values) for e, values in effects.items()}

    table = []
    for (activation, position), rs in group(runs, "model.activation", "model.norm_position").items():
        table.append(
            {
                "nonlinearity": activation,
                "BN": "before g" if position == "pre" else "after g",
                "final test acc": "%.4f ± %.4f" % mean_std(r.test_acc for r in rs),
                f"test acc at {EARLY:.0%} of the steps": "%.4f ± %.4f" % mean_std(early_acc(r) for r in rs),
                "diverged": sum(r.diverged for r in rs),
            }
        )

    fig, axes = figure(len(ACTIVATIONS))
    for ax, activation in zip(axes, ACTIVATIONS):
        for (position,), rs in group(
            [r for r in runs if r["model.activation"] == activation], "model.norm_position"
        ).items():
            label = "BN before g" if position == "pre" else "BN after g"
            band(ax, rs, lambda r: records.curve(r, records.TEST_ACC), label)
        ax.set(xlabel="step", ylabel="test accuracy", title=f"{activation}", ylim=(0, 1))
        ax.legend()
    fig.suptitle("BN before or after the nonlinearity (mean ± std over seeds)")

    summary = (
        "BN before minus after the nonlinearity, final test accuracy: "
        + "; ".join(f"{a} {judged[FINAL[a]].estimate()}" for a in ACTIVATIONS)
        + f". At {EARLY:.0%} of the steps: "
        + "; ".join(f"{a} {judged[SPEED[a]].estimate()}" for a in ACTIVATIONS)
        + f" (mean [95 % interval] over seeds). Control, every arm trains: {judged[TRAINS].estimate()}."
    )
    notes = [
        "One learning rate for every arm: a placement may prefer another rate, so a difference here is one "
        "at this rate, not at each placement's best. The BN paper's MNIST network is the sweep's; the paper "
        "itself reports no comparison of the two places.",
    ]
    return Finding(list(judged.values()), summary, table, fig, notes)


CLAIM = Claim(
    name="placement",
    title="BN belongs before the nonlinearity",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(TRAINS, *FINAL.values(), *SPEED.values()),
    analyze=analyze,
    introduced="2026-12-05",
)
