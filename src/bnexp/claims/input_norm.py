"""Claim: standardized inputs let gradient descent take far larger steps and converge in far fewer.

The first argument for normalization (LeCun et al. 1998, "Efficient BackProp", Sec. 4.3 and 5; the BN
paper's starting point, Sec. 1-2): near a minimum the loss is a quadratic with Hessian H; gradient descent
is stable only for learning rates below 2/λ_max(H), and then needs about λ_max/λ_min steps. A feature
that is 100× larger than another multiplies its curvature by 100² (the Hessian scales with E[x xᵀ]), so on
raw inputs λ_max is huge, the learning rate must be tiny, and the small feature's weight hardly moves.

The sweep trains a linear classifier (model=mlp model.depth=0) on the synthetic data by full-batch
gradient descent, on raw and on standardized inputs, over a learning-rate grid and many starting
points (seeds). Every run logs its loss at every step (log.stats_every=1).

The curvature is computed here, not assumed: this module rebuilds each run's (deterministic) data and
initial model from its recorded config, exactly as bnexp.step does, and finds the top eigenvalue of the
full-batch loss's Hessian by power iteration on Hessian-vector products (torch.func, reverse over
reverse), in float64: at each seed's starting point, at zero weights (every prediction uniform: for two
classes the largest curvature the cross-entropy has anywhere, since its Hessian is E[2p(1-p)·...] and
p(1-p) ≤ 1/4) and at the minimum (found by L-BFGS), whose loss also sets the target loss.
"""

import math
from contextlib import contextmanager
from dataclasses import replace
from functools import cache

import torch
import torch.nn.functional as F
from torch.func import functional_call

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, Revision, group, mean_std
from bnexp.claims.plots import plt

TARGET_GAP = 0.01  # target loss: the minimum's + this many nats
FASTER = Effect(
    "speed-up",
    "steps to the target loss at the best learning rate on raw inputs ÷ on standardized inputs; a raw run "
    "that never reaches it gives a lower bound (the step budget), which counts only where it lies above δ, "
    "and standardized inputs that never reach it leave the seed undefined",
    smallest=10.0,
    above=True,
    unit="×",
)
PAPER = (
    'LeCun et al. 1998 ("Efficient BackProp"): for a quadratic loss the largest stable rate is 2/λ_max; an '
    "argument, with no measurement to compare."
)
WITHIN = Effect(
    "stable-rate gain ÷ predicted",
    "the largest stable learning rate on standardized inputs ÷ on raw inputs, divided by the factor the "
    "quadratic model predicts, λ_max(raw) ÷ λ_max(standardized), with λ_max the Hessian's top eigenvalue at "
    "zero weights (the largest curvature for two classes), computed by power iteration on Hessian-vector "
    "products; a seed without a stable rate on either input is undefined, one whose standardized rate is the "
    "grid's largest gives a lower bound, which counts only where it lies above δ",
    smallest=0.1,
    above=True,
    unit="×",
    paper=PAPER,
)
FACTOR = 3.0  # the check's slack: wider than the grid's quarter-decade step (1.78×)
MEASURED = Effect(
    "stable rate ÷ 2/λ_max (implementation check)",
    "each input's largest stable learning rate of the grid ÷ 2/λ_max at zero weights, the smaller of raw's "
    "and standardized's: for two classes no curvature exceeds that λ_max, so gradient descent descends at "
    "every rate below 2/λ_max (the descent lemma), and a measured limit far below it would mean the "
    "stability test, not the inputs, sets the stable rates",
    smallest=1 / FACTOR,
    above=True,
    unit="×",
    control=True,
    gates=(WITHIN.name,),
)
RISE = 1e-5  # a step that raises the loss by more than this fraction counts as an increase (not rounding)
FLOOR = 1e-8  # plots: float32 losses resolve the minimum to about this
# The illustration's two feature scales: a ratio of 10 (curvatures 10² apart), so that a path both bounces
# across the valley and visibly moves along it within a few dozen steps. At the sweep's ratio of 100 it only
# bounces: it would need ~10⁴ steps to move along.
ILLUSTRATION_SCALES = (1.0, 10.0)

HYPOTHESIS = (
    "Gradient descent on inputs whose scales differ by orders of magnitude is slow: the largest stable "
    "learning rate is about 2/λ_max of the loss Hessian, which the large feature inflates by its "
    "squared scale, so the weights of the small features barely move. Standardizing the inputs "
    "(zero mean, unit variance) raises the stable learning rate by about the factor the curvatures "
    "differ and reaches a given loss in far fewer steps, from any starting point (LeCun et al. 1998, "
    '"Efficient BackProp", Sec. 4.3 and 5; Ioffe & Szegedy 2015, Sec. 2).'
)
CRITERION = (
    f"A linear classifier on the synthetic data, full-batch gradient descent from each starting point "
    f"(seed) over a learning-rate grid, on raw and on standardized inputs. A learning rate is *stable* "
    f"if the training loss never rose from one step to the next (by more than a fraction {RISE:g}) and "
    f"stayed finite. The target loss is the minimum's (computed) + {TARGET_GAP} nats. Two effects: "
    f"{FASTER.text()} {WITHIN.text()} First, an implementation check of the stability test: "
    f"{MEASURED.text()} How far above 2/λ_max the largest stable rate lies (the quadratic model at zero "
    f"weights is a bound, not a prediction, for logistic regression) is reported, not judged."
)

INPUTS = {False: "raw", True: "standardized"}


# ---- the curvature of a run's loss ------------------------------------------------------------------
def flat_loss(model, x, y):
    """The full-batch cross-entropy of `model` on (x, y) as a function of one flat parameter vector,
    and the model's own parameters as such a vector."""
    named = [(n, p.shape, p.numel()) for n, p in model.named_parameters()]

    def loss(theta):
        params = {n: t.view(shape) for (n, shape, _), t in zip(named, theta.split([k for *_, k in named]))}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    return loss, torch.cat([p.detach().flatten() for p in model.parameters()])


def hessian_vector_product(loss, theta):
    """v -> Hv, H the Hessian of `loss` at `theta`: the vector-Jacobian product of ∇loss with v (reverse over
    reverse; H is symmetric), the gradient's graph built once and reused for every v."""
    _, vjp = torch.func.vjp(torch.func.grad(loss), theta)
    return lambda v: vjp(v)[0]


def hessian(loss, theta):
    """The whole Hessian, one Hessian-vector product per coordinate (small models only)."""
    hvp = hessian_vector_product(loss, theta)
    return torch.stack([hvp(e) for e in torch.eye(theta.numel(), dtype=theta.dtype)])


def top_eigenvalue(loss, theta, iters: int = 2000, rtol: float = 1e-10) -> float:
    """The eigenvalue of largest magnitude of the Hessian of `loss` at `theta` (λ_max for a convex loss),
    by power iteration on Hessian-vector products."""
    hvp = hessian_vector_product(loss, theta)
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=theta.dtype)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        hv = hvp(v)
        new = float(v @ hv)  # the Rayleigh quotient of the current unit vector
        norm = hv.norm()
        if norm == 0:
            return 0.0
        v = hv / norm
        if abs(new - lam) <= rtol * abs(new):
            return new
        lam = new
    return lam


def minimize(loss, theta):
    """The minimum of a convex loss by L-BFGS (float64), from theta; returns (θ*, loss(θ*))."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1,
        max_iter=1000,
        tolerance_grad=1e-12,
        tolerance_change=1e-16,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = loss(theta)
        value.backward()
        return value

    for _ in range(20):
        opt.step(closure)
        if theta.grad is not None and theta.grad.abs().max() < 1e-10:
            break
    theta = theta.detach()
    return theta, float(loss(theta))


def nested_config(flat: dict):
    """A run's typed config (records.nested_config), its norm computing with the textbook kernel, which
    torch.func (the curvature's Hessian-vector products) can transform."""
    cfg = records.nested_config(flat)
    cfg.norm.fast = False
    return cfg


def _frozen(flat: dict, keys: tuple) -> tuple:
    return tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(flat.items()) if k.startswith(keys)
    )


@cache
def _curvature(data_model: tuple, seeds: tuple) -> dict:
    from bnexp.data import load_data
    from bnexp.step import initialized_model

    cfg = nested_config({k: list(v) if isinstance(v, tuple) else v for k, v in data_model})
    data = load_data(cfg.data)
    x, y = data.prepare(data.train_x).double(), data.train_y
    out = {"start": {}}
    for seed in seeds:  # the run's model as bnexp.step builds and initializes it
        cfg.seed = seed
        model = initialized_model(cfg, data, torch.device("cpu")).double()
        loss, theta = flat_loss(model, x, y)
        out["start"][seed] = top_eigenvalue(loss, theta)
    zero = torch.zeros_like(theta)
    out["zero"] = top_eigenvalue(loss, zero)
    theta_min, out["min_loss"] = minimize(loss, zero)
    out["minimum"] = top_eigenvalue(loss, theta_min)
    if theta.numel() <= 2000:  # the whole spectrum, for the condition number (no power iteration needed)
        eig = torch.linalg.eigvalsh(hessian(loss, theta_min))
        nonzero = eig[eig > 1e-9 * eig[-1]]  # softmax's shift invariance leaves exact zeros
        out["condition"] = float(nonzero[-1] / nonzero[0])
    return out


def curvature(runs) -> dict:
    """λ_max at each seed's start, at zero weights and at the minimum, and the minimum's loss, for the runs'
    data and model (which must all share them)."""
    key = _frozen(runs[0].config, ("data.", "model.", "init.", "norm."))
    with _one_thread():
        return _curvature(key, tuple(sorted({r["seed"] for r in runs})))


@contextmanager
def _one_thread():
    """Tiny tensors: extra threads only add overhead (and fight other processes for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- what each run did ------------------------------------------------------------------------------
def losses(run) -> list[float]:
    """The full-batch training loss after 0, 1, 2, ... updates (batch/loss at step t is the loss before
    update t; train/loss at the last step the loss after it). Non-finite values are None."""
    series = run.series
    out = [v for _, v in series[records.BATCH_LOSS]]
    last = series.get(records.TRAIN_LOSS, [])
    if last and last[-1][0] == run.steps:
        out.append(last[-1][1])
    return out


def stable(run) -> bool:
    if run.diverged:
        return False
    values = losses(run)
    return (
        all(b is not None and b <= a * (1 + RISE) for a, b in zip(values, values[1:]))
        and values[0] is not None
    )


def steps_to(run, target: float):
    """Updates until the loss first reached `target` (None: it never did)."""
    return next((i for i, v in enumerate(losses(run)) if v is not None and v <= target), None)


def final_gap(run, best: float) -> float:
    values = losses(run) if run.metrics else [None]
    return math.inf if values[-1] is None else max(values[-1] - best, 0.0)


# ---- the analysis -----------------------------------------------------------------------------------
def _rank(run, target: float) -> tuple:
    """Best first: fewest steps to the target; if it was not reached, stable runs by their final loss; then
    the rest."""
    steps = steps_to(run, target)
    if steps is not None:
        return 0, steps, 0.0
    return (1 if stable(run) else 2), 0, final_gap(run, target)


def per_seed(runs, target: float) -> dict:
    """For each (normalize, seed): the largest stable lr, the fewest steps to target (and the lr), the best
    run."""
    out = {}
    for (normalize, seed), cell in group(runs, "data.normalize", "seed").items():
        stable_lrs = [r["optim.lr"] for r in cell if stable(r)]
        reached = [(s, r["optim.lr"]) for r in cell if (s := steps_to(r, target)) is not None]
        fewest = min(reached) if reached else None
        best = min(cell, key=lambda r: _rank(r, target))
        out[normalize, seed] = dict(
            stable=max(stable_lrs) if stable_lrs else None,
            steps=fewest[0] if fewest else None,
            steps_lr=fewest[1] if fewest else None,
            best=best,
        )
    return out


def analyze(runs) -> Finding:
    runs = [r for r in runs if r.metrics]  # a failed run has no curve
    for r in runs:  # `losses` reads list positions as steps
        logged = [s for s, _ in r.series[records.BATCH_LOSS]]
        if logged != list(range(1, len(logged) + 1)):
            raise ValueError(
                "the analysis needs the training loss of every step: run the sweep with "
                "log.stats_every=1, as conf/experiment/input_norm.yaml does"
            )
    curv = {normalize: curvature(rs) for (normalize,), rs in group(runs, "data.normalize").items()}
    min_loss = min(c["min_loss"] for c in curv.values())  # the same function class: one minimum
    target = min_loss + TARGET_GAP
    budget = max(r.steps_planned for r in runs)
    cells = per_seed(runs, target)
    predicted = curv[False]["zero"] / curv[True]["zero"]

    faster = {}
    for seed in sorted({r["seed"] for r in runs}):
        raw, std = cells[False, seed], cells[True, seed]
        if std["steps"] is None:
            faster[str(seed)] = math.nan
        else:
            censored = raw["steps"] is None
            speed_up = (budget if censored else raw["steps"]) / std["steps"]
            faster[str(seed)] = FASTER.bounded(speed_up, at_least=censored)
    within, measured = {}, {}
    tops = {n: max(r["optim.lr"] for r in runs if r["data.normalize"] == n) for n in curv}
    for seed in sorted({r["seed"] for r in runs}):
        raw, std = cells[False, seed]["stable"], cells[True, seed]["stable"]
        if raw is None or std is None:
            within[str(seed)] = measured[str(seed)] = math.nan
            continue
        within[str(seed)] = WITHIN.bounded(std / raw / predicted, at_least=std == tops[True])
        limits = {n: lr / (2 / curv[n]["zero"]) for n, lr in ((False, raw), (True, std))}
        measured[str(seed)] = MEASURED.bounded(
            min(limits.values()), at_least=all(lr == tops[n] for n, lr in ((False, raw), (True, std)))
        )
    parts = [MEASURED.judge(measured), FASTER.judge(faster), WITHIN.judge(within)]

    table = []
    for normalize, c in curv.items():
        mine = [v for (n, _), v in cells.items() if n == normalize]
        starts = sorted(2 / lam for lam in c["start"].values())
        steps = [v["steps"] for v in mine if v["steps"] is not None]
        gaps = [final_gap(v["best"], min_loss) for v in mine]
        table.append(
            {
                "inputs": INPUTS[normalize],
                "λ_max at zero weights": "%.4g" % c["zero"],
                "2/λ_max: zero weights": "%.3g" % (2 / c["zero"]),
                "2/λ_max: minimum": "%.3g" % (2 / c["minimum"]),
                "2/λ_max: starts (min–max)": "%.3g–%.3g" % (starts[0], starts[-1]),
                "κ at minimum": "%.3g" % c["condition"] if "condition" in c else "",
                "largest stable lr (over seeds)": _span([v["stable"] for v in mine]),
                "÷ 2/λ_max at zero weights": _span(
                    [None if v["stable"] is None else v["stable"] * c["zero"] / 2 for v in mine]
                ),
                "steps to target at the best lr": (("%.0f ± %.0f" % mean_std(steps)) if steps else "–")
                + f" ({len(steps)} of {len(mine)} seeds reached it)",
                "loss − min at the best lr (mean ± std)": "%.2g ± %.2g" % mean_std(gaps),
            }
        )

    fig = plt.figure(figsize=(20, 4.6), constrained_layout=True)
    axes = fig.subplots(1, 4)
    _plot_lr(axes[0], runs, curv, min_loss)
    _plot_curves(axes[1], cells, min_loss, target)
    illustrate(axes[2:], ILLUSTRATION_SCALES)
    fig.suptitle(
        "Input normalization and gradient descent: a linear classifier on the synthetic data, full batch "
        "(left two: the sweep; right two: an illustration on two weights)"
    )

    std_steps = [v["steps"] for (n, _), v in cells.items() if n]
    raw_reached = sum(v["steps"] is not None for (n, _), v in cells.items() if not n)
    largest = {n: _span([v["stable"] for (m, _), v in cells.items() if m == n]) for n in (False, True)}
    summary = (
        f"The curvature at zero weights is {predicted:.3g}× larger on raw inputs; the largest stable "
        "learning "
        f"rate was {largest[False]} on raw and {largest[True]} on standardized inputs; standardized inputs "
        f"reached the target loss in {_fmt(std_steps)} steps at their best learning rate, raw inputs in "
        f"{raw_reached} of {len(std_steps)} seeds within {budget} steps. "
        + "; ".join(f"{p.name} {p.estimate()}" for p in parts)
        + " (mean [95 % interval] over seeds)."
    )
    notes = [
        "The two right panels are an illustration computed by the analysis, not sweep results: gradient "
        "descent on "
        "a two-weight problem where the quadratic model is exact (the least-squares fit of the labels by "
        "w·x, "
        f"without bias, on two synthetic features of scales {ILLUSTRATION_SCALES[0]:g} and "
        f"{ILLUSTRATION_SCALES[1]:g}, milder than the sweep's so that the raw path visibly moves along the "
        "valley), "
        "at the best fixed learning rate of each, 2/(λ_max + λ_min), from four starting points one "
        "feature-scale "
        f"unit from the minimum.",
        "The quadratic model is a local one: for logistic regression the curvature shrinks as predictions "
        "saturate, "
        "so a learning rate above 2/λ_max at zero weights can still descend monotonically when the path "
        "avoids "
        "the high-curvature region, and raw inputs with PyTorch's default initialization start saturated "
        "(2/λ_max "
        "at the start is then far above the learning rates that are stable later).",
    ]
    if any(cells[False, s]["stable"] is None for (n, s) in cells if not n):
        notes.append(
            "Some seeds had no stable learning rate on raw inputs: the grid does not reach low enough."
        )
    return Finding(parts, summary, table, fig, notes)


def _span(values) -> str:
    """min–max over seeds of the largest stable learning rate ("none" for a seed without one)."""
    if any(v is None for v in values) or not values:
        return "none in some seeds" if values else "none"
    return "%.3g" % values[0] if min(values) == max(values) else "%.3g–%.3g" % (min(values), max(values))


def _fmt(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "none"
    return "%.0f ± %.0f" % mean_std(values)


def _plot_lr(ax, runs, curv, min_loss):
    for i, ((normalize,), rs) in enumerate(group(runs, "data.normalize").items()):
        color, label = f"C{i}", INPUTS[normalize]
        for cell in group(rs, "seed").values():
            cell = sorted(cell, key=lambda r: r["optim.lr"])
            points = [(r["optim.lr"], min(max(final_gap(r, min_loss), FLOOR), 1e3), stable(r)) for r in cell]
            ax.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                "-",
                color=color,
                alpha=0.35,
                lw=1,
                label=label,
            )
            label = None
            for marker, keep in (("o", True), ("x", False)):
                ax.plot(
                    [p[0] for p in points if p[2] == keep],
                    [p[1] for p in points if p[2] == keep],
                    marker,
                    color=color,
                    ms=3.5,
                    alpha=0.6,
                )
        ax.axvline(2 / curv[normalize]["zero"], color=color, ls="--", lw=1.2)
        ax.axvline(2 / curv[normalize]["minimum"], color=color, ls=":", lw=1.2)
    ax.plot([], [], "k--", lw=1.2, label="2/λ_max at zero weights")
    ax.plot([], [], "k:", lw=1.2, label="2/λ_max at the minimum")
    ax.plot([], [], "ko", ms=3.5, label="stable (the loss never rose)")
    ax.plot([], [], "kx", ms=3.5, label="not stable")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="learning rate",
        ylabel="final training loss − minimum",
        title="Final loss vs learning rate (a line per seed)",
    )
    ax.legend(fontsize=7)


def _plot_curves(ax, cells, min_loss, target):
    for i, normalize in enumerate((False, True)):
        label = f"{INPUTS[normalize]} inputs"
        for (n, _), cell in sorted(cells.items()):
            if n != normalize:
                continue
            values = [v for v in losses(cell["best"]) if v is not None]
            ax.plot([max(v - min_loss, FLOOR) for v in values], color=f"C{i}", alpha=0.5, lw=1, label=label)
            label = None
    ax.axhline(target - min_loss, color="k", ls="--", lw=1, label="target")
    ax.set_xscale("symlog", linthresh=10)
    ax.set(
        yscale="log",
        xlim=(0, None),
        xlabel="gradient-descent step",
        ylabel="training loss − minimum",
        title="Each seed at its best learning rate",
    )
    ax.legend(fontsize=7)


# ---- the illustration ---------------------------------------------------------------------------------
def illustrate(axes, scales, steps: int = 40):
    """Gradient descent on the contours of a two-weight quadratic: the least-squares fit of the labels (±1)
    by w·x, without bias, on two synthetic features of the given scales, raw and standardized, where the
    quadratic model is exact; at the best fixed learning rate 2/(λ_max + λ_min), from four starting points."""
    from bnexp.config import DataConfig
    from bnexp.data import load_data

    base = DataConfig(name="synthetic", feature_scales=list(scales), num_classes=2)
    for ax, normalize in zip(axes, (False, True)):
        data = load_data(replace(base, normalize=normalize))
        x, target = data.prepare(data.train_x).double(), 2.0 * data.train_y.double() - 1

        def loss(w, x=x, target=target):
            return 0.5 * ((x @ w - target) ** 2).mean()

        zero = torch.zeros(2, dtype=torch.float64)
        lam_min, lam_max = torch.linalg.eigvalsh(hessian(loss, zero)).tolist()  # constant: a quadratic
        lr = 2 / (lam_max + lam_min)  # the best fixed rate: both extreme directions shrink by (κ−1)/(κ+1)
        w_min, loss_min = minimize(loss, zero)
        unit = 1 / x.std(0)  # one unit of each feature's own scale
        grad = torch.func.grad(loss)
        paths = []
        for d in ((-1.0, 1.0), (1.0, 1.0), (-1.0, -0.4), (1.0, -1.0)):
            w = w_min + torch.tensor(d, dtype=torch.float64) * unit
            path = [w]
            for _ in range(steps):
                w = w - lr * grad(w)
                path.append(w)
            paths.append(torch.stack(path))
        every = torch.cat(paths)
        lo = torch.minimum(every.min(0).values, w_min - unit) - 0.1 * unit
        hi = torch.maximum(every.max(0).values, w_min + unit) + 0.1 * unit
        g1, g2 = torch.meshgrid(
            torch.linspace(float(lo[0]), float(hi[0]), 150, dtype=torch.float64),
            torch.linspace(float(lo[1]), float(hi[1]), 150, dtype=torch.float64),
            indexing="ij",
        )
        w_grid = torch.stack([g1.flatten(), g2.flatten()], 1)
        z = (0.5 * ((w_grid @ x.T - target) ** 2).mean(1)).view_as(g1) - loss_min
        ax.contour(
            g1,
            g2,
            z,
            levels=torch.logspace(-4, math.log10(float(z.max())), 12).tolist(),
            colors="0.6",
            linewidths=0.7,
        )
        for i, path in enumerate(paths):
            ax.plot(path[:, 0], path[:, 1], ".-", color=f"C{i + 2}", ms=2.5, lw=0.8)
            ax.plot(path[0, 0], path[0, 1], "o", color=f"C{i + 2}", ms=5)
        ax.plot(*w_min.tolist(), "k*", ms=10)
        ax.set(
            xlim=(float(lo[0]), float(hi[0])),
            ylim=(float(lo[1]), float(hi[1])),
            xlabel=f"w₁ (feature of scale {scales[0]:g})",
            ylabel=f"w₂ (feature of scale {scales[-1]:g})",
            title=f"Illustration, {INPUTS[normalize]}: {steps} steps, κ = {lam_max / lam_min:.3g}",
        )


CLAIM = Claim(
    name="input_norm",
    title="Standardized inputs: larger stable learning rates, far fewer steps",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(MEASURED, FASTER, WITHIN),
    analyze=analyze,
    previous="supported",
    disclosure="Disclosure: this criterion's thresholds were set after prototype runs on 3 seeds (10× fewer "
    "steps; at least 1/10 of the predicted gain), not before any data; they were not changed after the "
    "final sweeps.",
    revisions=(
        Revision(
            3,
            "2026-12-05",
            why="Version 2 measured the largest stable rate on a grid of whole decades, so the raw inputs' "
            "limit read 0.0001, 0.29× the quadratic model's 2/λ_max (0.000341), for the grid's sake; and a "
            "raw run that never reached the target counted as the step budget, a lower bound, in the "
            "speed-up's mean. Version 3 sweeps four rates per decade (eight in the paper profile); keeps the "
            "speed-up and the stable-rate gain ÷ predicted with version 2's δ; counts a bound (a raw run cut "
            "off by the budget, a standardized rate at the grid's top) only where it settles the side of δ, "
            "else the seed is undefined; and first checks the stability test itself: every rate below "
            "2/λ_max must be found stable, within a factor 3 (the measured limit ÷ 2/λ_max at least 1/3). A "
            "draft of version 3, refereed before any run, also asked the limit to lie below 3 × 2/λ_max; "
            "version 2's own standardized inputs were stable at 3.24 × 2/λ_max, as logistic regression "
            "allows (its curvature falls as predictions saturate), so that side tested the quadratic "
            "model's tightness, not the claim: it is reported, not judged.",
            previous="supported (standard profile, 2026-12-03): speed-up 263× [50.4×, 476×]; stable-rate "
            "gain ÷ predicted 11× [11×, 11×]",
        ),
    ),
)
