"""The figure conventions every claim shares: one panel per model or setting; mean ± std over
seeds against a swept value (diverged or failed runs marked) or along training."""

import math
import warnings

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only: sweeps run on headless machines
import matplotlib.pyplot as plt  # noqa: E402

from bnexp.claims import group, mean_std  # noqa: E402


def figure(panels: int, width: float = 5.0, height: float = 3.8):
    fig, axes = plt.subplots(
        1, panels, figsize=(width * panels, height), squeeze=False, constrained_layout=True
    )
    return fig, list(axes[0])


def errorbars(ax, runs, x_key: str, value, label: str):
    """Mean ± std over seeds of value(run) at each x; an × where some seed diverged or failed."""
    xs, means, stds, bad = [], [], [], []
    for (x,), rs in group(runs, x_key).items():
        m, s = mean_std([value(r) for r in rs])
        xs.append(x), means.append(m), stds.append(s)
        if any(r.diverged for r in rs):
            bad.append((x, m))
    line = ax.errorbar(xs, means, yerr=stds, marker="o", ms=4, capsize=3, label=label)
    if bad:
        ax.plot(*zip(*bad), "x", ms=9, mew=2, color=line[0].get_color())
    return line


def band(ax, runs, values, label: str, color: str | None = None, log: bool = False):
    """A curve along training, `values(run)` -> (steps, values) (e.g. `lambda r: curve(r, tag)`): mean over
    the runs (seeds) at the first run's steps, ± std shaded; on a log axis (log=True) the shade stays above
    0."""
    curves = [values(r) for r in runs if r.metrics]
    curves = [(s, v) for s, v in curves if len(s)]
    if not curves:  # nothing recorded: the label still stands in the legend
        ax.plot([], [], color=color, label=label)
        return
    steps = curves[0][0]
    stack = np.array([np.interp(steps, s, v, left=math.nan, right=math.nan) for s, v in curves])
    with warnings.catch_warnings():  # all-NaN columns (e.g. every run diverged there) are NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        m, sd = np.nanmean(stack, 0), np.nanstd(stack, 0)
    (line,) = ax.plot(steps, m, color=color, label=label)
    lower = np.where(m - sd > 0, m - sd, m / 2) if log else m - sd
    ax.fill_between(steps, lower, m + sd, color=line.get_color(), alpha=0.2, lw=0)
