"""The figure conventions every claim shares: one panel per model or setting; mean ± std over
seeds against a swept value (diverged or failed runs marked) or along training."""
import matplotlib

matplotlib.use("Agg")  # files only: sweeps run on headless machines
import matplotlib.pyplot as plt  # noqa: E402

from bnexp.claims import group, mean_std  # noqa: E402


def figure(panels: int, width: float = 5.0, height: float = 3.8):
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False, constrained_layout=True)
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


def curves(ax, runs, tag: str, label: str, value=lambda v: v):
    """A logged curve (metrics.json series `tag`) against the step: mean over seeds, ± std shaded."""
    by_step: dict[int, list] = {}
    for r in runs:
        for step, v in (r.metrics or {}).get("series", {}).get(tag, []):
            by_step.setdefault(step, []).append(None if v is None else value(v))
    steps = sorted(by_step)
    stats = [mean_std(by_step[s]) for s in steps]
    means = [m for m, _ in stats]
    line, = ax.plot(steps, means, label=label)
    ax.fill_between(steps, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2, color=line.get_color())
    return line
