"""Claim: BN's learnable γ and β let it leave the linear region of a sigmoid; a bias before BN is
redundant."""

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std
from bnexp.claims.plots import band, figure
from bnexp.records import curve

LEAVES = Effect(
    "γ/β's exit from the linear region",
    f"the fraction of sigmoid inputs in the near-linear region |x| < {records.LINEAR_BOUND:g} at the end of "
    f"training, averaged over the hidden layers, with γ = 1, β = 0 fixed minus with learnable γ/β",
    smallest=0.05,
    above=True,
)
ROUND_OFF = Effect(
    "bias gradient",
    "the largest ratio, over the layers and logged steps, of the gradient norm of a bias before BN to its "
    "layer's gradient norm",
    smallest=1e-4,
    above=False,
    unit="",
)
SAME = Effect(
    "accuracy change from the bias",
    "the largest difference in test accuracy, over the evaluations, between the runs with and without a "
    "bias before BN (same seed, same initial weights)",
    smallest=0.005,
    above=False,
)

HYPOTHESIS = (
    "Normalizing a sigmoid's input to zero mean and unit variance would confine it to the sigmoid's "
    "near-linear region; the learnable scale γ and shift β let the network undo that where it helps "
    "(Ioffe & Szegedy 2015, Sec. 3). And since BN subtracts the mean, a bias added before it has no "
    "effect: its gradient is zero and the network trains identically without it (Sec. 3.2)."
)
CRITERION = (
    f"In the sigmoid MLP with BN, three effects. (a) {LEAVES.text()} (b) {ROUND_OFF.text()} {SAME.text()}"
)


def linear_fraction(run) -> float:
    """The end-of-training near-linear fraction, averaged over the hidden layers."""
    fractions = [
        run.series[records.act(layer, records.LINEAR_FRAC)][-1][1]
        for layer in records.layers_logged(run.series)
    ]
    return sum(fractions) / len(fractions)


def bias_ratio(run) -> float:
    """The largest bias gradient over the layer's gradient, over all layers and logged steps."""
    series = run.series
    return max(
        b / w
        for layer in records.layers_logged(series, "grad")
        if records.grad_bias(layer) in series
        for (_, b), (_, w) in zip(series[records.grad_bias(layer)], series[records.grad_norm(layer)])
    )


def acc_difference(a, b) -> float:
    return max(abs(x - y) for (_, x), (_, y) in zip(a.series[records.TEST_ACC], b.series[records.TEST_ACC]))


def analyze(runs) -> Finding:
    leaves, ratio, same = {}, {}, {}
    for (seed,), cell in group(runs, "seed").items():
        run = {(r["norm.affine"], r["model.bias_before_norm"]): r for r in cell}
        learned, fixed, with_bias = run[True, False], run[False, False], run[True, True]
        leaves[str(seed)] = linear_fraction(fixed) - linear_fraction(learned)
        ratio[str(seed)] = bias_ratio(with_bias)
        same[str(seed)] = acc_difference(learned, with_bias)
    parts = [LEAVES.judge(leaves), ROUND_OFF.judge(ratio), SAME.judge(same)]

    table = []
    for (affine, bias), rs in group(runs, "norm.affine", "model.bias_before_norm").items():
        table.append(
            {
                "γ/β learnable": affine,
                "bias before BN": bias,
                "test acc": "%.3f ± %.3f" % mean_std(r.test_acc for r in rs),
                f"near-linear fraction (|x| < {records.LINEAR_BOUND:g})": "%.3f ± %.3f"
                % mean_std(map(linear_fraction, rs)),
                "max bias grad / layer grad": "%.1e" % max(map(bias_ratio, rs)) if bias else "—",
            }
        )

    fig, (ax_lin, ax_acc, ax_bias) = figure(3)
    last = f"layer{runs[0]['model.depth']}"  # the last hidden layer, as in the BN paper's Figure 1
    for (affine,), rs in group([r for r in runs if not r["model.bias_before_norm"]], "norm.affine").items():
        band(
            ax_lin,
            rs,
            lambda r: curve(r, records.act(last, records.LINEAR_FRAC)),
            "learnable γ, β" if affine else "γ = 1, β = 0 fixed",
        )
    ax_lin.set(
        xlabel="step",
        ylabel=f"fraction with |x| < {records.LINEAR_BOUND:g}",
        ylim=(0, 1),
        title=f"Sigmoid inputs in the near-linear region ({last})",
    )
    ax_lin.legend()
    for (bias,), rs in group([r for r in runs if r["norm.affine"]], "model.bias_before_norm").items():
        band(
            ax_acc,
            rs,
            lambda r: curve(r, records.TEST_ACC),
            "with bias before BN" if bias else "without bias",
        )
    ax_acc.set(xlabel="step", ylabel="test accuracy", title="The bias before BN changes nothing")
    ax_acc.legend()
    with_bias = [r for r in runs if r["model.bias_before_norm"] and r["norm.affine"]]
    band(
        ax_bias,
        with_bias,
        lambda r: curve(r, records.grad_norm("layer1")),
        "all of layer 1's parameters",
        log=True,
    )
    band(ax_bias, with_bias, lambda r: curve(r, records.grad_bias("layer1")), "the bias before BN", log=True)
    ax_bias.set(xlabel="step", ylabel="gradient norm", yscale="log", title="Gradients in layer 1")
    ax_bias.legend(fontsize=8)
    fig.suptitle("γ/β and the bias before BN (sigmoid MLP; mean ± std over seeds)")

    summary = (
        f"Learnable γ/β lowered the near-linear fraction by {parts[0].estimate()}; the bias before BN got a "
        f"gradient of at most {parts[1].estimate()} × its layer's and changed test accuracy by at most "
        f"{parts[2].estimate()} (mean [95 % interval] over seeds)."
    )
    return Finding(parts, summary, table, fig)


CLAIM = Claim(
    name="affine",
    title="γ/β let BN leave the sigmoid's linear region; a bias before BN is redundant",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(LEAVES, ROUND_OFF, SAME),
    analyze=analyze,
    previous="supported",
)
