"""Claim: batch normalization keeps the distribution of each sigmoid's input stable during training
(the BN paper's Figure 1)."""

import math

import numpy as np

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std, ratio, require
from bnexp.claims.plots import band, plt
from bnexp.records import curve

RATIO = Effect(
    "drift ratio",
    "BN's drift divided by the plain network's (same seed)",
    smallest=0.5,
    above=False,
    unit="×",
    paper="Ioffe & Szegedy 2015, Fig. 1(b, c) (MNIST, 3 × 100 sigmoid MLP, batch 60, 50k steps) show the "
    "percentiles of one sigmoid's input shifting without BN and steady with it; the paper gives no number.",
)
COLORS = {"none": "C0", "bn": "C1", "noisy_bn": "C2"}
LABELS = {"none": "without BN", "bn": "with BN", "noisy_bn": "noisy BN"}

HYPOTHESIS = (
    "Without batch normalization the distribution of a layer's inputs keeps shifting as the layers "
    "below it learn (internal covariate shift); with BN it stays much more stable, and the network "
    "trains faster and to a higher accuracy. Ioffe & Szegedy (2015), Fig. 1: a 3 × 100 sigmoid MLP on "
    "MNIST, batch 60; (a) test accuracy vs training step, (b, c) the 15th, 50th and 85th percentiles of "
    "the input to a typical sigmoid of the last hidden layer over training, without and with BN."
)
CRITERION = (
    "At the input of the sigmoids of the last hidden layer, a network's *drift* is: for each of the 15th, "
    "50th and 85th percentiles, its range over training (largest minus smallest value over all logged "
    "steps), averaged over the three percentiles and divided by the distribution's mean width over training "
    "(85th minus 15th percentile, averaged over the logged steps); a run that diverged has no drift. One "
    f"effect, for one fixed unit (unit 0, as in the paper) and for all units of the layer pooled: "
    f"{RATIO.text()} Test accuracy over training (Fig. 1a) is shown and tabulated, not judged."
)


# ---- reading the runs' curves (shared with the ics_gradient claim) --------------------------------
def hidden_layers(run) -> list[str]:
    """The probe points the run logged (layer1, layer2, ...), in depth order."""
    return records.layers_logged(run.series)


def _movement(run, layer: str, unit0: bool, change, min_points: int) -> float:
    """`change` of each of the 15th/50th/85th percentile curves of a layer (unit 0 or all units), averaged
    over the three and divided by their mean 15–85 % width; NaN if fewer than min_points are recorded, or any
    is not finite."""
    p15, p50, p85 = (curve(run, tag)[1] for tag in records.act_percentiles(layer, unit0))
    if len(p50) < min_points or not all(np.isfinite(v).all() for v in (p15, p50, p85)):
        return math.nan
    width = float(np.mean(p85 - p15))
    if width <= 0:
        return math.nan
    return float(np.mean([change(v) for v in (p15, p50, p85)])) / width


def drift(run, layer: str, unit0: bool = False) -> float:
    """Range over training of the 15th/50th/85th percentiles of a layer's inputs to its nonlinearity (of unit
    0, or of all units), averaged over the three and divided by the mean 15–85 % width; NaN if not recorded or
    not finite (e.g. diverged)."""
    return _movement(run, layer, unit0, lambda v: v.max() - v.min(), min_points=1)


def jitter(run, layer: str, unit0: bool = False) -> float:
    """Mean change of the 15th/50th/85th percentiles (as for drift) from one logged step to the next, averaged
    over the three and divided by the mean 15–85 % width (drift's short-term counterpart); NaN if absent."""
    return _movement(run, layer, unit0, lambda v: np.abs(np.diff(v)).mean(), min_points=2)


def mean_test_acc(run) -> float:
    """Test accuracy averaged over the run's evaluations: higher when a network learns sooner."""
    acc = curve(run, records.TEST_ACC)[1]
    return float(np.mean(acc)) if len(acc) else math.nan


def percentile_panel(
    ax, run, layer: str, unit0: bool, color: str, title: str, ylabel: str = "input to the sigmoid"
):
    """The paper's Fig. 1b/c: the 15th, 50th and 85th percentiles of one run over training."""
    (steps, p15), (_, p50), (_, p85) = (curve(run, tag) for tag in records.act_percentiles(layer, unit0))
    ax.fill_between(steps, p15, p85, color=color, alpha=0.15, lw=0)
    for values, style, label in (
        (p85, "--", "85th percentile"),
        (p50, "-", "50th (median)"),
        (p15, ":", "15th percentile"),
    ):
        ax.plot(steps, values, style, color=color, label=label)
    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8, loc="best")


def first_run(runs, norm: str):
    """The lowest seed's run of a norm (the curves a reader compares, like the paper's single run)."""
    rs = sorted((r for r in runs if r["norm.name"] == norm and r.metrics), key=lambda r: r["seed"])
    return rs[0] if rs else None


def fmt(values, spec: str = "%.3g") -> str:
    m, s = mean_std(values)
    return "n/a" if math.isnan(m) else f"{spec % m} ± {spec % s}"


# ---- the analysis ---------------------------------------------------------------------------------
def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "none")
    layers = max((hidden_layers(r) for r in runs), key=len, default=[])
    last = layers[-1] if layers else "layer?"
    unit0 = {"unit 0": True, "whole layer": False}  # where: of unit 0 or of all units

    ratios: dict[str, dict[str, float]] = {where: {} for where in unit0}
    for (seed,), cell in group(runs, "seed").items():
        by_norm = {norm: rs[0] for (norm,), rs in group(cell, "norm.name").items()}
        bn, plain = by_norm.get("bn"), by_norm.get("none")
        for where, u in unit0.items():
            ratios[where][str(seed)] = (
                ratio(drift(bn, last, u), drift(plain, last, u)) if bn and plain else math.nan
            )  # NaN: a run is missing or diverged
    parts = [RATIO.judge(per_seed, f"{where} of {last}") for where, per_seed in ratios.items()]

    table = []
    for (norm,), rs in group(runs, "norm.name").items():
        row = {"network": LABELS.get(norm, norm)}
        for where, u in unit0.items():
            row[f"drift, {where} of {last}"] = fmt([drift(r, last, u) for r in rs])
        row["final test acc"] = fmt([r.test_acc for r in rs], "%.3f")
        row["test acc averaged over training"] = fmt([mean_test_acc(r) for r in rs], "%.3f")
        row["diverged runs"] = sum(r.diverged for r in rs)
        table.append(row)

    fig, axes = plt.subplots(2, 3, figsize=(16, 9), constrained_layout=True)
    ax = axes[0, 0]
    for (norm,), rs in group(runs, "norm.name").items():
        band(ax, rs, lambda r: curve(r, records.TEST_ACC), LABELS.get(norm, norm), COLORS.get(norm, "C3"))
    ax.set(
        xlabel="training step",
        ylabel="test accuracy",
        title="(a) Test accuracy (mean ± std over seeds)",
        ylim=(0, 1),
    )
    ax.legend()
    for row, (where, u) in enumerate(unit0.items()):
        panels = axes[row, 1:]
        for ax, norm in zip(panels, ("none", "bn")):
            r = first_run(runs, norm)
            if r is not None:
                percentile_panel(
                    ax,
                    r,
                    last,
                    u,
                    COLORS[norm],
                    f"{LABELS[norm]}: input to the sigmoid, {where} of {last}\n(seed {r['seed']}; "
                    f"drift {drift(r, last, u):.2f})",
                )
        lo = min(a.get_ylim()[0] for a in panels)
        hi = max(a.get_ylim()[1] for a in panels)
        for a in panels:
            a.set_ylim(lo, hi)
    ax = axes[1, 0]
    norms = [n for n in ("none", "bn") if any(r["norm.name"] == n for r in runs)]
    for i, norm in enumerate(norms):
        for j, u in enumerate(unit0.values()):
            values = [drift(r, last, u) for r in runs if r["norm.name"] == norm]
            m = mean_std(values)[0]
            x = j + (i - (len(norms) - 1) / 2) * 0.35
            ax.bar(
                x,
                0 if math.isnan(m) else m,
                width=0.33,
                color=COLORS[norm],
                alpha=0.7,
                label=LABELS[norm] if j == 0 else None,
            )
            ax.plot([x] * len(values), values, "k.", ms=6)
    ax.set_xticks(range(len(unit0)), [f"{w} of {last}" for w in unit0])
    ax.set(
        ylabel="drift: percentiles' range over training ÷ mean width",
        title="Drift of the sigmoid's input (bars: mean; dots: seeds)\nlower = more stable",
    )
    ax.legend()
    fig.suptitle(
        "BN paper, Fig. 1: test accuracy, and the 15th/50th/85th percentiles of the input to a sigmoid "
        f"of the last hidden layer over training (criterion: BN's drift < {RATIO.smallest:g}× the plain "
        "network's)"
    )

    means = {
        norm: [mean_std(drift(r, last, u) for r in runs if r["norm.name"] == norm)[0] for u in unit0.values()]
        for norm in ("none", "bn")
    }
    summary = (
        f"Drift of the last hidden layer's sigmoid input over training (percentiles' range ÷ width; unit 0, "
        f"whole layer): with BN {means['bn'][0]:.2f}, {means['bn'][1]:.2f}; without "
        f"{means['none'][0]:.2f}, {means['none'][1]:.2f} (means over seeds). BN's drift over the plain "
        f"network's: " + "; ".join(f"{p.where} {p.estimate()}" for p in parts) + " (mean [95 % interval])."
    )
    notes = [
        "The BN paper trains for 50,000 steps on MNIST with small random Gaussian initial weights; the quick "
        "profile trains for far fewer steps on the 8×8 digits from PyTorch's default initialization, so the "
        "curves can only be compared with Fig. 1 in shape.",
        "With BN the sigmoid's input is γ·x̂ + β: in training mode its mean and spread over the batch are "
        "set by "
        "the learned β and γ of the unit, so with BN the drift measures how far γ and β moved.",
    ]
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="ics",
    title="BN keeps the sigmoids' input distributions stable (BN paper, Fig. 1)",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(RATIO,),
    analyze=analyze,
    previous="supported",
)
