"""The figure conventions every claim shares: one panel per model or setting, mean ± std over
seeds against a swept value, diverged or failed runs marked."""
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
