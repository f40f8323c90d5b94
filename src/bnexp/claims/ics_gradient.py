"""Claim (Santurkar et al. 2018): BN's benefit is not a reduction of internal covariate shift; BN makes
the loss landscape smoother."""

import math

import numpy as np

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std, ratio, require
from bnexp.claims.ics import COLORS, LABELS, drift, first_run, fmt, hidden_layers, jitter, percentile_panel
from bnexp.claims.plots import band, plt
from bnexp.records import curve

TOLERANCE = 0.03  # noisy BN "trains like BN": final test accuracy at most this far below BN's
LANDSCAPE = {
    records.LOSS_RANGE: "loss range along the gradient",
    records.GRAD_CHANGE: "gradient change ‖∇L(x′) − ∇L(x)‖",
    records.BETA_SMOOTHNESS: "effective β-smoothness",
}
GRADIENT_ICS = Effect(
    "gradient ICS, BN − plain",
    "1 − cos(G, G′), averaged over all measurements during training and over every layer that has layers "
    "before it (layer2 onwards and the output layer), for BN minus for the plain network",
    smallest=0.0,
    above=True,
    unit="",
    paper="Santurkar et al. 2018 (VGG on CIFAR-10, a 25-layer linear network): with BN the gradient ICS is "
    "not smaller (‖G − G′‖ as large or larger, cos(G, G′) as low or lower; read from their plots).",
)
NOISY_DRIFT = Effect(
    "noisy BN's drift − plain's",
    "the drift of noisy BN's layer inputs (as in the `ics` claim, over all units of a layer, averaged over "
    "the hidden layers) minus the plain network's",
    smallest=0.0,
    above=True,
    unit="",
)
NOISY_ACC = Effect(
    "noisy BN's accuracy − BN's",
    "final test accuracy of noisy BN minus BN's",
    smallest=-TOLERANCE,
    above=True,
    paper="Santurkar et al. 2018 (VGG, CIFAR-10): noisy BN trains about as well as BN (their plots; no "
    "number given); for scale, BN against the plain network there is ≈ 83 % against ≈ 80 % test accuracy.",
)
SMOOTHER = Effect(
    "landscape ratio, BN ÷ plain",
    f"the median over the checkpoints of the measure along the gradient (steps of "
    f"{', '.join('%g' % k for k in records.LANDSCAPE_STEPS)} × the learning rate), BN's over the plain "
    f"network's",
    smallest=1.0,
    above=False,
    unit="×",
    paper="Santurkar et al. 2018 (VGG, CIFAR-10, steps of ½ to 4 × the learning rate): all three measures "
    "markedly smaller with BN (read from their plots).",
)

HYPOTHESIS = (
    "Santurkar et al. (2018), 'How does batch normalization help optimization?': (i) BN does not reduce "
    "internal covariate shift measured by what it should matter for, the change of a layer's gradient "
    "caused by the update of the layers below it (their Fig. 3: BN's is as large or larger); (ii) a BN "
    "network with noise injected after every BN layer, which makes its layer inputs less stable than "
    "even the plain network's, still trains like BN (Fig. 2); (iii) what BN does is make the loss "
    "landscape smoother: along the gradient the loss varies less, the gradient changes less, and the "
    "effective β-smoothness is lower (Fig. 4)."
)
CRITERION = (
    f"Three parts, six effects. (1) *BN does not reduce gradient ICS*: {GRADIENT_ICS.text()} (2) *Noisy BN "
    f"is less stable yet trains like BN*: {NOISY_DRIFT.text()} {NOISY_ACC.text()} (3) *BN's landscape is "
    f"smoother*, for each of the loss range, the gradient change and the effective β-smoothness: "
    f"{SMOOTHER.text()}"
)


def ics_layers(run) -> list[str]:
    """The layers with a gradient-ICS measurement that can be non-zero: all but the first, head last."""
    measured = records.layers_logged(run.series, "ics")
    hidden = [n for n in hidden_layers(run) if n in measured]
    return hidden[1:] + (["head"] if "head" in measured else [])


def one_minus_cos_curve(run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, 1 − cos(G, G′) averaged over the layers that have layers before them)."""
    steps, cos = mean_curve(run, records.ICS_COS)
    return steps, 1 - cos


def mean_curve(run, per_layer: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, an ics/<layer>/<per_layer> value averaged over the layers that have layers before them)."""
    curves = [curve(run, records.ics(layer, per_layer)) for layer in ics_layers(run)]
    if not curves:
        return np.array([]), np.array([])
    return curves[0][0], np.mean([v for _, v in curves], axis=0)


def gradient_ics(run) -> float:
    """Part (1)'s number: mean over steps and layers of 1 − cos(G, G′); NaN if not measured or not finite."""
    values = one_minus_cos_curve(run)[1]
    return float(values.mean()) if len(values) else math.nan


def layer_drift(run) -> float:
    """Part (2)'s number: the drift of the layer-wide input distribution, averaged over the hidden layers."""
    layers = hidden_layers(run)
    return float(np.mean([drift(run, layer) for layer in layers])) if layers else math.nan


def layer_jitter(run) -> float:
    """Not judged: the step-to-step change of the layer-wide input distribution, averaged over the hidden
    layers."""
    layers = hidden_layers(run)
    return float(np.mean([jitter(run, layer) for layer in layers])) if layers else math.nan


def landscape(run, key: str, second_half: bool = False) -> float:
    """Part (3)'s numbers: the median over checkpoints of landscape/<key> (NaN: none, or a non-finite one).
    `second_half`: only the checkpoints in the second half of training (not judged)."""
    steps, values = curve(run, records.landscape(key))
    if second_half and len(steps):
        values = values[steps > steps.max() / 2]
    return float(np.median(values)) if len(values) else math.nan


def _effects(by_norm: dict) -> dict[tuple[Effect, str], float]:
    """Each (effect, where) of the criterion for one seed's runs; NaN where an arm is missing."""
    bn, plain, noisy = by_norm.get("bn"), by_norm.get("none"), by_norm.get("noisy_bn")
    nan = math.nan
    out = {
        (GRADIENT_ICS, ""): gradient_ics(bn) - gradient_ics(plain) if bn and plain else nan,
        (NOISY_DRIFT, ""): layer_drift(noisy) - layer_drift(plain) if noisy and plain else nan,
        (NOISY_ACC, ""): noisy.test_acc - bn.test_acc if noisy and bn else nan,
    }
    for key, label in LANDSCAPE.items():
        out[SMOOTHER, label] = ratio(landscape(bn, key), landscape(plain, key)) if bn and plain else nan
    return out


def analyze(runs) -> Finding:
    require(runs, "norm.name", "none", "bn", "noisy_bn")
    per_seed: dict[tuple[Effect, str], dict[str, float]] = {}
    for (seed,), cell in group(runs, "seed").items():
        by_norm = {norm: rs[0] for (norm,), rs in group(cell, "norm.name").items()}
        for key, value in _effects(by_norm).items():
            per_seed.setdefault(key, {})[str(seed)] = value
    parts = [effect.judge(values, where) for (effect, where), values in per_seed.items()]

    table = []
    for norm in ("none", "bn", "noisy_bn"):
        rs = [r for r in runs if r["norm.name"] == norm]
        if not rs:
            continue
        table.append(
            {
                "network": LABELS[norm],
                "final test acc": fmt([r.test_acc for r in rs], "%.3f"),
                "layer-input drift": fmt([layer_drift(r) for r in rs]),
                "step-to-step change (not judged)": fmt([layer_jitter(r) for r in rs]),
                "1 − cos(G, G′)": fmt([gradient_ics(r) for r in rs]),
                "‖G − G′‖": fmt([_mean(mean_curve(r, records.ICS_L2)[1]) for r in rs]),
                "‖G − G′‖ / ‖G‖": fmt([_mean(mean_curve(r, records.ICS_REL)[1]) for r in rs]),
                **{
                    f"{key.replace('_', ' ')} (median)": fmt([landscape(r, key) for r in rs])
                    for key in LANDSCAPE
                },
                "‖∇L‖ at checkpoints (median)": fmt([landscape(r, records.GRAD_NORM) for r in rs]),
                "diverged runs": sum(r.diverged for r in rs),
            }
        )

    fig = _figure(runs)
    summary = (
        "Santurkar et al.'s three claims, as effects (mean [95 % interval] over seeds): "
        + "; ".join(f"{p.name} {p.estimate()}" for p in parts)
        + "."
    )
    return Finding(parts, summary, table, fig, _readings(runs))


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _avg(runs, norm, fn) -> float:
    return mean_std(fn(r) for r in runs if r["norm.name"] == norm)[0]


def _readings(runs) -> list[str]:
    """Both readings of the data, stated from the numbers: what speaks for the ICS story, what for
    smoothness."""
    d = {n: _avg(runs, n, layer_drift) for n in ("none", "bn", "noisy_bn")}
    g = {n: _avg(runs, n, gradient_ics) for n in ("none", "bn", "noisy_bn")}
    acc = {n: _avg(runs, n, lambda r: r.test_acc) for n in ("none", "bn", "noisy_bn")}
    land = {k: {n: _avg(runs, n, lambda r, k=k: landscape(r, k)) for n in ("none", "bn")} for k in LANDSCAPE}
    gn = {n: _avg(runs, n, lambda r: landscape(r, records.GRAD_NORM)) for n in ("none", "bn")}
    notes = []
    ics_for = []
    if d["bn"] < d["none"]:
        ics_for.append(
            f"BN's layer inputs drifted less than the plain network's (drift {d['bn']:.2f} vs "
            f"{d['none']:.2f}): BN does stabilize the distributions, the premise of the original story"
        )
    if g["bn"] < g["none"]:
        ics_for.append(
            f"BN's gradients changed less when the layers below moved (1 − cos {g['bn']:.3g} vs "
            f"{g['none']:.3g})"
        )
    if acc["noisy_bn"] < acc["bn"] - TOLERANCE:
        ics_for.append(
            f"noisy BN, with its unstable inputs, trained worse than BN ({acc['noisy_bn']:.3f} vs "
            f"{acc['bn']:.3f})"
        )
    notes.append(
        "**Reading 1, internal covariate shift.** "
        + (
            "For the original story: " + "; ".join(ics_for) + "."
            if ics_for
            else "Nothing in these runs speaks for it: BN's layer inputs did not drift less, its gradient "
            "ICS was not lower, and noisy BN trained as well as BN."
        )
    )
    smooth_for, smooth_against = [], []
    if g["bn"] >= g["none"]:
        smooth_for.append(
            f"BN did not reduce gradient ICS (1 − cos {g['bn']:.3g} vs {g['none']:.3g} without BN)"
        )
    if d["noisy_bn"] > d["none"] and acc["noisy_bn"] >= acc["bn"] - TOLERANCE:
        smooth_for.append(
            f"noisy BN trained like BN ({acc['noisy_bn']:.3f} vs {acc['bn']:.3f}) although its layer "
            f"inputs drifted more than the plain network's ({d['noisy_bn']:.2f} vs {d['none']:.2f})"
        )
    for key, text in LANDSCAPE.items():
        bn, plain = land[key]["bn"], land[key]["none"]
        (smooth_for if bn < plain else smooth_against).append(
            f"{text}: {bn:.3g} with BN vs {plain:.3g} without"
        )
    notes.append(
        "**Reading 2, smoothness.** "
        + ("For it: " + "; ".join(smooth_for) + ". " if smooth_for else "")
        + ("Against it: " + "; ".join(smooth_against) + "." if smooth_against else "")
    )
    jit = {n: _avg(runs, n, layer_jitter) for n in ("none", "bn", "noisy_bn")}
    late = {
        k: {n: _avg(runs, n, lambda r, k=k: landscape(r, k, second_half=True)) for n in ("none", "bn")}
        for k in LANDSCAPE
    }
    notes.append(
        "*Added after seeing the quick results, not part of the criterion:* (a) the drift above is a range "
        "over all of training; the mean change from one logged step to the next (÷ width, averaged over "
        f"percentiles and hidden layers) was {jit['none']:.3g} without BN, {jit['bn']:.3g} with BN and "
        f"{jit['noisy_bn']:.3g} with noisy BN. (b) Over the second half of training only, the median loss "
        "range, gradient change and β-smoothness were "
        + "; ".join(f"{late[k]['bn']:.3g} with BN vs {late[k]['none']:.3g} without" for k in LANDSCAPE)
        + ", in that order (early checkpoints can sit on a flat plateau of the loss, where all three are "
        "small: in the quick profile the plain network's first few hundred steps are one)."
    )
    notes.append(
        f"The landscape numbers are absolute, in the units of each network's own loss and parameters, and "
        f"grow with the gradient: the median gradient norm at the checkpoints was {gn['bn']:.3g} with BN and "
        f"{gn['none']:.3g} without, so a network sitting on a flat plateau (small gradient) looks 'smooth' "
        f"too. ‖G − G′‖ likewise scales with the gradient; 1 − cos(G, G′) and ‖G − G′‖/‖G‖ do not."
    )
    notes.append(
        "G′ is computed after a plain SGD step of the layers below (p − lr·∂L/∂p), whatever the optimizer; "
        "the landscape steps are ½ to 4 SGD steps along the gradient of the training batch. Santurkar et al. "
        "measured VGG on CIFAR-10 and a 25-layer linear network; the quick profile is the 3 × 100 sigmoid "
        "MLP "
        "on the 8×8 digits."
    )
    return notes


def _figure(runs):
    norms = [n for n in ("none", "bn", "noisy_bn") if any(r["norm.name"] == n for r in runs)]
    fig, axes = plt.subplots(3, 4, figsize=(20, 13), constrained_layout=True)
    layers = max((hidden_layers(r) for r in runs), key=len, default=[])
    last = layers[-1] if layers else "layer?"

    def by_norm(ax, values, ylabel, title, log=False):
        for norm in norms:
            band(ax, [r for r in runs if r["norm.name"] == norm], values, LABELS[norm], COLORS[norm], log)
        ax.set(xlabel="training step", ylabel=ylabel, title=title)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)

    # Row 1: training, and the layer-input distributions (Santurkar Fig. 2).
    by_norm(
        axes[0, 0],
        lambda r: curve(r, records.TEST_ACC),
        "test accuracy",
        "Test accuracy (mean ± std over seeds)",
    )
    axes[0, 0].set_ylim(0, 1)
    panels = axes[0, 1:]
    for ax, norm in zip(panels, ("none", "bn", "noisy_bn")):
        r = first_run(runs, norm)
        if r is not None:
            percentile_panel(
                ax,
                r,
                last,
                False,
                COLORS[norm],
                f"{LABELS[norm]}: inputs to {last}'s nonlinearity\n"
                f"(all units; seed {r['seed']}; drift {drift(r, last):.2f})",
                ylabel="input to the nonlinearity",
            )
    lo, hi = min(a.get_ylim()[0] for a in panels), max(a.get_ylim()[1] for a in panels)
    for a in panels:
        a.set_ylim(lo, hi)

    # Row 2: gradient ICS (Santurkar Fig. 3), over training and per layer.
    by_norm(
        axes[1, 0],
        one_minus_cos_curve,
        "1 − cos(G, G′)",
        "Gradient ICS: 1 − cos(G, G′), mean over layers ≥ 2\n(higher = more shift)",
        log=True,
    )
    by_norm(
        axes[1, 1],
        lambda r: mean_curve(r, records.ICS_L2),
        "‖G − G′‖₂",
        "Gradient ICS: ‖G − G′‖₂, mean over layers ≥ 2",
        log=True,
    )
    all_layers = max((ics_layers(r) for r in runs), key=len, default=[])
    for ax, (stat, ylabel) in zip(
        axes[1, 2:], ((records.ICS_COS, "1 − cos(G, G′)"), (records.ICS_L2, "‖G − G′‖₂"))
    ):
        width = 0.8 / max(len(norms), 1)
        for i, norm in enumerate(norms):
            rs = [r for r in runs if r["norm.name"] == norm]
            means = []
            for layer in all_layers:
                per_run = [curve(r, records.ics(layer, stat))[1] for r in rs]
                per_run = [1 - v if stat == records.ICS_COS else v for v in per_run if len(v)]
                means.append(mean_std([float(np.mean(v)) for v in per_run])[0])
            ax.bar(
                np.arange(len(all_layers)) + (i - (len(norms) - 1) / 2) * width,
                means,
                width=width,
                color=COLORS[norm],
                label=LABELS[norm],
            )
        ax.set_xticks(range(len(all_layers)), all_layers)
        ax.set(
            xlabel="layer (G: gradient of its weights)",
            ylabel=ylabel + ", mean over training",
            title=f"Gradient ICS per layer: {ylabel}",
        )
        top = ax.get_ylim()[1]
        ax.set_ylim(0, top * 1.2)  # room for the legend above the bars
        ax.legend(fontsize=8, ncol=3, loc="upper center")

    # Row 3: the landscape along the gradient (Santurkar Fig. 4), and the drift summary.
    for ax, (key, text) in zip(axes[2, :3], LANDSCAPE.items()):
        by_norm(
            ax,
            lambda r, key=key: curve(r, records.landscape(key)),
            text,
            f"{text}\n(steps {records.LANDSCAPE_STEPS[0]:g}–{records.LANDSCAPE_STEPS[-1]:g} × lr "
            "along the gradient)",
            log=True,
        )
    ax = axes[2, 3]
    for i, norm in enumerate(norms):
        values = [layer_drift(r) for r in runs if r["norm.name"] == norm]
        m = mean_std(values)[0]
        ax.bar(i, 0 if math.isnan(m) else m, color=COLORS[norm], alpha=0.7)
        ax.plot([i] * len(values), values, "k.", ms=6)
    ax.set_xticks(range(len(norms)), [LABELS[n] for n in norms])
    ax.set(
        ylabel="drift: percentiles' range over training ÷ width",
        title="Drift of the layer inputs, mean over hidden layers\n"
        "(bars: mean; dots: seeds; higher = less stable)",
    )
    fig.suptitle(
        "Santurkar et al. 2018: distribution stability and training (top), gradient-based internal covariate "
        "shift (middle), loss-landscape smoothness (bottom); mean ± std over seeds"
    )
    return fig


CLAIM = Claim(
    name="ics_gradient",
    title="BN's benefit is not less ICS but a smoother landscape (Santurkar et al. 2018)",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(GRADIENT_ICS, NOISY_DRIFT, NOISY_ACC, SMOOTHER),
    analyze=analyze,
    previous="inconclusive",
    changes="Part (1)'s smallest effect of interest is 0 on the difference, so it is supported only when "
    "BN's gradient ICS is larger beyond doubt (version 1 asked for at least as large in every seed).",
)
