"""Claim: batch normalization removes the sensitivity to weight initialization."""

from bnexp.claims import Claim, Effect, Finding, group, mean_std, require
from bnexp.claims.plots import errorbars, figure

BN_SPREAD = Effect(
    "BN's spread",
    "the spread (best − worst) of BN's final test accuracy over all initializations of the sweep "
    "(schemes × standard deviations)",
    smallest=0.05,
    above=False,
    paper="Ioffe & Szegedy 2015, Sec. 3.3 argue it from BN(aWu) = BN(Wu) and report no sweep over "
    "initializations.",
)
REDUCTION = Effect(
    "spread reduction",
    "the plain network's spread minus BN's (same seed)",
    smallest=0.0,
    above=True,
)

HYPOTHESIS = (
    "With batch normalization, training no longer depends on the scale of the initial weights: "
    "BN's output is invariant to the scale of the weights feeding it (Ioffe & Szegedy 2015, Sec. 3.3), "
    "so networks train to the same accuracy from initializations many orders of magnitude apart."
)
CRITERION = f"For each activation (sigmoid, ReLU), two effects: {BN_SPREAD.text()} {REDUCTION.text()}"


def spread(runs) -> float:
    accs = [r.test_acc for r in runs]
    return max(accs) - min(accs)


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "none")
    if len(group(runs, "init.name", "init.std")) < 2:
        raise ValueError("the sweep has one initialization; the claim compares accuracy across several")
    parts, table = [], []
    for (act,), rs in group(runs, "model.activation").items():
        bn, reduction = {}, {}
        for (seed,), cell in group(rs, "seed").items():
            by_norm = {norm: c for (norm,), c in group(cell, "norm.name").items()}
            bn[str(seed)] = spread(by_norm["bn"])
            reduction[str(seed)] = spread(by_norm["none"]) - bn[str(seed)]
        parts += [BN_SPREAD.judge(bn, act), REDUCTION.judge(reduction, act)]
    for (act, norm), rs in group(runs, "model.activation", "norm.name").items():
        per_seed = group(rs, "seed").values()
        worst = min(
            group(rs, "init.name", "init.std").items(), key=lambda kv: mean_std(r.test_acc for r in kv[1])[0]
        )
        table.append(
            {
                "activation": act,
                "norm": norm,
                "spread over inits": "%.3f ± %.3f" % mean_std(spread(cell) for cell in per_seed),
                "best test acc": "%.3f" % mean_std(max(r.test_acc for r in cell) for cell in per_seed)[0],
                "worst test acc": "%.3f" % mean_std(min(r.test_acc for r in cell) for cell in per_seed)[0],
                "worst init": "%s, std %g" % worst[0],
                "diverged runs": sum(r.diverged for r in rs),
            }
        )

    acts = sorted({r["model.activation"] for r in runs})
    fig, axes = figure(len(acts))
    for ax, act in zip(axes, acts):
        for (norm, scheme), rs in group(
            [r for r in runs if r["model.activation"] == act], "norm.name", "init.name"
        ).items():
            errorbars(ax, rs, "init.std", lambda r: r.test_acc, label=f"{norm}, {scheme}")
        ax.set(
            xscale="log", xlabel="initial weight std", ylabel="final test accuracy", title=act, ylim=(0, 1)
        )
        ax.legend(title="norm, init", fontsize=8)
    fig.suptitle("Final test accuracy vs initialization scale (mean ± std over seeds)")

    summary = (
        "Across initializations, "
        + "; ".join(f"{p.where}: {p.effect.name} {p.estimate()}" for p in parts)
        + " (mean [95 % interval] over seeds)."
    )
    return Finding(parts, summary, table, fig)


CLAIM = Claim(
    name="init_sensitivity",
    title="BN removes the sensitivity to initialization",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(BN_SPREAD, REDUCTION),
    analyze=analyze,
    previous="not supported",
)
