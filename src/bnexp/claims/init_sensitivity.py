"""Claim: batch normalization removes the sensitivity to weight initialization."""

import math

from bnexp.claims import Claim, Effect, Finding, Revision, group, mean_std, require
from bnexp.claims.plots import errorbars, figure

NEAR = 0.03  # an init is good for an arm if its run reaches the arm's best accuracy less this
FLOOR = 0.85  # an arm trains at its best init if it reaches this test accuracy there
SPAN_GAIN = Effect(
    "span gain",
    f"BN's good-init span minus the plain network's, in decades; an init std is good for an arm if its run "
    f"did not diverge and reached within {NEAR * 100:.0f} points of the arm's own best final test accuracy "
    f"in that seed, and an arm's span is the contiguous run of good stds of the grid around its best one, "
    f"log10 of its largest ÷ its smallest (0 with one)",
    smallest=1.0,  # BN keeps 10× more init scales within reach of its best
    above=True,
    unit="decades",
    paper="Ioffe & Szegedy 2015, Sec. 3.3 argue it from BN(aWu) = BN(Wu), with the gradient w.r.t. aW 1/a "
    "times that w.r.t. W, and report no sweep over initializations.",
)
# The controls, judged per activation like effects: without them the span gain means nothing there.
SENSITIVITY = Effect(
    "plain network's sensitivity",
    "decades of the swept init stds outside the plain network's good-init span (the sweep's span minus "
    "the plain network's); the span gain can be no larger than this",
    smallest=SPAN_GAIN.smallest,  # less, and the sweep leaves BN no room to gain δ: nothing to remove
    above=True,
    unit="decades",
    control=True,
)
PLAIN_TRAINS, BN_TRAINS = (
    Effect(
        f"{arm}'s best accuracy",
        f"{arm}'s best final test accuracy over the swept init stds whose run did not diverge",
        smallest=FLOOR,
        above=True,
        unit="%",
        control=True,
    )
    for arm in ("the plain network", "BN")
)

HYPOTHESIS = (
    "With batch normalization, training no longer depends on the scale of the initial weights: "
    "BN's output is invariant to the scale of the weights feeding it (Ioffe & Szegedy 2015, Sec. 3.3), "
    "so networks train to the same accuracy from initializations many orders of magnitude apart. Tested "
    "here at one learning rate (0.3) and one step budget for both arms."
)
CRITERION = (
    f"The sweep scales only the hidden layers' weights, the ones BN normalizes (init.layers=hidden); the "
    f"head keeps one default init, the same draw in every arm of a seed. For each activation (sigmoid, "
    f"ReLU), three controls: {SENSITIVITY.text()} {PLAIN_TRAINS.text()} {BN_TRAINS.text()} Then one "
    f"effect: {SPAN_GAIN.text()} Predicted in advance: BN falls short at the largest stds within the "
    f"budget (the 1/a² slowdown below), so its upper edge, like the plain network's (where it diverges), "
    f"says what this learning rate and budget allow."
)
# Said in every report: BN removes the init scale from the forward pass, not from SGD's steps.
EFFECTIVE_STEP = (
    "BN(aWu) = BN(Wu), but the gradient w.r.t. aW is 1/a times that w.r.t. W, so SGD turns W's direction "
    "1/a² as fast: at std 10 a hidden layer of fan-in 100 turns 10⁴ times slower than at its 1/√fan-in "
    "scale (std 0.1), far beyond any budget here. A shortfall of BN at the largest stds is that slowness, "
    "within the fixed budget both arms share. At std 0.001 BN's var(Wu) is only a few times its ε, so "
    "the invariance holds only roughly there."
)

WHY = (
    "The methods review found that the init sweep also scaled the output layer, which no norm follows: at "
    "std 10 its logits saturate the softmax, and BN networks failed for a reason BN never claimed to fix; "
    "and an absolute 5-point spread, not how much of the init range BN keeps near its best, decided the "
    "verdict. Now the sweep scales only the hidden layers (the head keeps one default init, the same in "
    "every arm), one scheme (Gaussian, as in the BN paper; the uniform one had the same variances) over "
    "half-decades of init std; the effect is the gain in decades of init std (a contiguous run around "
    f"each arm's best) within {NEAR * 100:.0f} points of each arm's own best, with controls: the plain "
    "network is sensitive in this sweep, and each arm trains at its best init. The budgets are longer "
    "(3.3× the quick profile's steps, 2× the standard's) but do not equalise large stds: SGD's step on "
    "scale-invariant weights shrinks as 1/‖W‖², 10⁴× at std 10, so BN's upper edge is a statement about a "
    "fixed budget; the learning rate is unchanged (0.3), and the claim is stated at it. Before the "
    "criterion was fixed, pilots of the plain network alone (no BN arm) were seen: quick, its span was "
    "1 to 1.5 decades (ReLU, diverging from std 1) and 0.5 (sigmoid, at chance for std ≤ 0.03), best "
    "0.97 to 0.98; standard (seeds 0 to 2), 1 decade (ReLU, diverging from std 0.3) and 0.5 to 1 "
    "(sigmoid), best 0.91 to 0.96. A referee's points (contiguous spans, the learning rate's role, this "
    "disclosure) were mended before any BN run."
)


def arm_span(runs) -> tuple[float, float, bool]:
    """One arm's (one seed's) best accuracy, its good-init span in decades, and whether the span reaches an
    edge of the swept grid (then it is a lower bound)."""
    grid = sorted({r["init.std"] for r in runs})
    by_std = {r["init.std"]: r for r in runs}
    trained = [r for r in runs if not r.diverged]
    if not trained:
        return 0.0, math.nan, False
    best = max(trained, key=lambda r: r.test_acc)

    def good(i: int) -> bool:
        r = by_std.get(grid[i])
        return r is not None and not r.diverged and r.test_acc >= best.test_acc - NEAR

    lo = hi = grid.index(best["init.std"])
    while lo > 0 and good(lo - 1):
        lo -= 1
    while hi < len(grid) - 1 and good(hi + 1):
        hi += 1
    return best.test_acc, math.log10(grid[hi] / grid[lo]), lo == 0 or hi == len(grid) - 1


def judge_activation(runs, act: str) -> list:
    """The controls and the span gain of one activation's runs (every part's `where` is the activation, so
    its controls gate its gain alone)."""
    grid = sorted({r["init.std"] for r in runs})
    swept = math.log10(grid[-1] / grid[0])
    best, spans = {}, {}
    for (norm, seed), cell in group(runs, "norm.name", "seed").items():
        acc, width, _ = arm_span(cell)
        best.setdefault(norm, {})[str(seed)], spans.setdefault(norm, {})[str(seed)] = acc, width
    return [
        SENSITIVITY.judge({seed: swept - s for seed, s in spans["none"].items()}, act),
        PLAIN_TRAINS.judge(best["none"], act),
        BN_TRAINS.judge(best["bn"], act),
        SPAN_GAIN.judge({seed: spans["bn"][seed] - spans["none"][seed] for seed in spans["none"]}, act),
    ]


def analyze(runs) -> Finding:
    require(runs, "norm.name", "bn", "none")
    if len(group(runs, "init.std")) < 2:
        raise ValueError("the sweep has one initialization; the claim compares accuracy across several")
    parts, table = [], []
    for (act,), rs in group(runs, "model.activation").items():
        parts += judge_activation(rs, act)
    for (act, norm), rs in group(runs, "model.activation", "norm.name").items():
        per_seed = [arm_span(cell) for cell in group(rs, "seed").values()]
        table.append(
            {
                "activation": act,
                "norm": norm,
                "best test acc": "%.3f ± %.3f" % mean_std(b for b, _, _ in per_seed),
                "good-init span (decades)": "%.2f ± %.2f" % mean_std(s for _, s, _ in per_seed),
                "seeds whose span reaches the grid's edge (a lower bound)": sum(e for _, _, e in per_seed),
                "diverged runs": sum(r.diverged for r in rs),
            }
        )
    notes = [
        EFFECTIVE_STEP,
        "The span gain cannot exceed the plain network's sensitivity (the control), and the two share the "
        "plain network's span, so their values are correlated.",
    ]

    acts = sorted({r["model.activation"] for r in runs})
    fig, axes = figure(len(acts))
    for ax, act in zip(axes, acts):
        for (norm,), rs in group([r for r in runs if r["model.activation"] == act], "norm.name").items():
            errorbars(ax, rs, "init.std", lambda r: r.test_acc, label=norm)
        ax.set(xscale="log", xlabel="hidden weights' initial std", ylabel="final test accuracy", title=act)
        ax.set_ylim(0, 1)
        ax.legend(title="norm", fontsize=8)
    fig.suptitle("Final test accuracy vs the hidden layers' init scale (mean ± std over seeds)")

    summary = (
        "BN's good-init span minus the plain network's: "
        + "; ".join(f"{p.where} {p.estimate()}" for p in parts if p.effect is SPAN_GAIN)
        + " (mean [95 % interval] over seeds)."
    )
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="init_sensitivity",
    title="BN removes the sensitivity to initialization",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(SENSITIVITY, PLAIN_TRAINS, BN_TRAINS, SPAN_GAIN),
    analyze=analyze,
    previous="not supported",
    revisions=(
        Revision(
            3,
            "2026-12-05",
            why=WHY,
            previous="not supported (standard profile, 2026-12-03): BN's spread (relu) +85.3 points "
            "[+85.0, +85.7]; BN's spread (sigmoid) +14.4 points [+10.9, +17.8]",
        ),
    ),
)
