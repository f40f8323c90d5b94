"""Claim: batch normalization in a recurrent network needs statistics per time step.

An Elman RNN (model=rnn) normalizes the summed input of each step. In training, BN must normalize
each step's batch by that step's own statistics: step t's input depends on step t−1's output, so the
statistics of all steps are never available at once. The variants differ in the *population*
statistics used at test time: one set shared by all steps (the running averages updated at every
step), or one set per step (Cooijmans et al. 2016), steps beyond the training length reusing the
last step's. With the same seed both variants therefore train identically, and the comparison
between them is paired: the same weights, different test-time statistics.

Sequences of other lengths (train.eval_lengths) are aligned at their end: shorter ones lose their
first steps, longer ones get blank steps (a raw 0, an image's background) before the first, so the
classifier still reads the same last steps.
"""

from bnexp import records
from bnexp.claims import Claim, Effect, Finding, group, mean_std
from bnexp.claims.plots import band, figure
from bnexp.records import curve

MARGIN = 0.01  # one accuracy point
AT_TRAINING = Effect(
    "per-step gain at the training length",
    "final test accuracy of BN with per-step statistics minus BN with shared statistics, at the training "
    "length",
    smallest=MARGIN,
    above=True,
    paper="Cooijmans et al. 2016 (BN-LSTMs on sequential MNIST, Penn Treebank, text8): averaging the "
    "statistics over time severely degrades performance; they give no number for it.",
)
BEYOND = Effect(
    "per-step vs shared beyond the training length",
    "the same difference at a tested length longer than the training length (blank rows put before the "
    "image; per-step statistics reuse the last step's beyond the training length)",
    smallest=-MARGIN,
    above=True,
)

HYPOTHESIS = (
    "Batch normalization works in a recurrent network when its population statistics are kept per time "
    "step, because the distribution of the normalized inputs differs between time steps: one set of "
    "statistics shared by all steps fits none of them. Sequences longer than those seen in training are "
    "handled by reusing the last step's statistics for the steps beyond (Cooijmans et al. 2016, "
    '"Recurrent Batch Normalization", Sec. 4, with LSTMs). LayerNorm, computed per example, needs '
    "neither (Ba et al. 2016)."
)
CRITERION = (
    f"An Elman RNN reading images row by row, trained with BN (the two BN variants train identically; "
    f"only their test-time statistics differ). Two effects: {AT_TRAINING.text()} {BEYOND.text()} (one "
    f"part per longer length). The RNN without normalization and with LayerNorm are reported for "
    f"comparison, not judged."
)

VARIANTS = {
    ("none", False): "none",
    ("bn", False): "bn, shared statistics",
    ("bn", True): "bn, per-step statistics",
    ("ln", False): "ln",
}
# per_step_stats changes nothing without running statistics: with it these norms must train and test exactly
# as without it (the sweep is a full grid, so it runs them; the analysis checks them and leaves them out)
TWINS = ("none", "ln")


def variant(run) -> str:
    return VARIANTS.get((run["norm.name"], bool(run["model.per_step_stats"])), "")


def accuracy_at(run, length: int) -> float:
    """Final test accuracy on sequences `length` steps long (the training length: final_test_acc)."""
    if run.metrics is None:
        return 0.0
    if length == run.train_length:
        return run.test_acc
    return run.acc_at_length(length) or 0.0


def twins_that_differ(runs, all_lengths) -> list[str]:
    """The runs with per_step_stats=true and a norm without statistics whose results differ from their
    twin's."""
    differ = []
    for (norm, seed), cell in group(
        [r for r in runs if r["norm.name"] in TWINS], "norm.name", "seed"
    ).items():
        on = [r for r in cell if r["model.per_step_stats"]]
        off = [r for r in cell if not r["model.per_step_stats"]]
        if on and off and any(accuracy_at(on[0], n) != accuracy_at(off[0], n) for n in all_lengths):
            differ.append(f"{norm}, seed {seed}")
    return differ


def lengths(runs) -> list[int]:
    return sorted({n for r in runs for n in r.tested_lengths} | {train_length(runs)})


def train_length(runs) -> int:
    return next(r.train_length for r in runs if r.train_length is not None)


def analyze(runs) -> Finding:
    trained = train_length(runs)
    all_lengths = lengths(runs)
    longer = [n for n in all_lengths if n > trained]
    if not longer:  # part (2) would hold for want of anything to test
        raise ValueError(
            f"the sweep tested no sequence longer than the training length {trained} "
            f"(train.eval_lengths), which part (2) of the criterion needs"
        )
    twins_differ = twins_that_differ(runs, all_lengths)
    runs = [r for r in runs if variant(r)]

    gains: dict[int, dict[str, float]] = {n: {} for n in [trained, *longer]}
    for (seed,), cell in group(runs, "seed").items():
        by = {variant(r): r for r in cell}
        step, shared = by["bn, per-step statistics"], by["bn, shared statistics"]
        for n, per_seed in gains.items():
            per_seed[str(seed)] = accuracy_at(step, n) - accuracy_at(shared, n)
    parts = [AT_TRAINING.judge(gains[trained], f"length {trained}")]
    parts += [BEYOND.judge(gains[n], f"length {n}") for n in longer]

    table = []
    names = [v for v in VARIANTS.values() if any(variant(r) == v for r in runs)]
    for name in names:
        rs = [r for r in runs if variant(r) == name]
        row = {"variant": name}
        for n in all_lengths:
            label = f"acc @ {n}" + (" (training)" if n == trained else "")
            row[label] = "%.3f ± %.3f" % mean_std(accuracy_at(r, n) for r in rs)
        batch = [r.batch_stats_acc for r in rs if r.batch_stats_acc is not None]
        row["acc with batch statistics"] = "%.3f ± %.3f" % mean_std(batch) if batch else ""
        table.append(row)

    fig, (ax, ax_diff, ax_curve) = figure(3, width=5.5)
    for i, name in enumerate(names):
        rs = [r for r in runs if variant(r) == name]
        stats = [mean_std(accuracy_at(r, n) for r in rs) for n in all_lengths]
        ax.errorbar(
            all_lengths,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            ms=4,
            capsize=3,
            label=name,
            color=f"C{i}",
        )
        band(ax_curve, rs, lambda r: curve(r, records.BATCH_LOSS), name, color=f"C{i}", log=True)
    ax.axvline(trained, color="k", ls=":", lw=1)
    ax.set(
        xlabel="test sequence length (steps; aligned at the end)",
        ylabel="final test accuracy",
        title=f"Test accuracy vs sequence length (trained on {trained})",
    )
    ax.legend(fontsize=8)
    for (seed,), cell in group(runs, "seed").items():
        by = {variant(r): r for r in cell}
        ax_diff.plot(
            all_lengths,
            [
                100
                * (
                    accuracy_at(by["bn, per-step statistics"], n)
                    - accuracy_at(by["bn, shared statistics"], n)
                )
                for n in all_lengths
            ],
            marker="o",
            ms=4,
            label=f"seed {seed}",
        )
    ax_diff.axhline(
        100 * MARGIN, color="k", ls="--", lw=1, label=f"criterion: +{MARGIN * 100:.0f} at training length"
    )
    ax_diff.axhline(
        -100 * MARGIN, color="k", ls=":", lw=1, label=f"criterion: ≥ −{MARGIN * 100:.0f} when longer"
    )
    ax_diff.axhline(0, color="grey", lw=0.5)
    ax_diff.axvline(trained, color="k", ls=":", lw=1)
    ax_diff.set(
        xlabel="test sequence length",
        ylabel="accuracy points",
        title="BN: per-step − shared statistics (same weights)",
    )
    ax_diff.legend(fontsize=7)
    ax_curve.set(
        yscale="log",
        xlabel="training step",
        ylabel="mini-batch loss (mean over seeds)",
        title="Training loss (the BN variants coincide)",
    )
    ax_curve.legend(fontsize=8)
    fig.suptitle(
        "BN in a recurrent network: statistics shared across time steps or kept per step "
        "(mean ± std over seeds)"
    )

    summary = (
        "BN with per-step statistics minus shared statistics, in accuracy points (mean [95 % interval] over "
        "seeds): " + "; ".join(f"{p.where} {p.estimate()}" for p in parts) + f" (trained on {trained})."
    )
    notes = [
        "The two BN variants train identically (the same weights; their training curves coincide): every "
        "difference between them comes from the population statistics used at test time.",
        "Cooijmans et al. normalize the input and recurrent terms of an LSTM separately and start γ at 0.1; "
        "this Elman RNN normalizes their sum (as Ba et al. do for LayerNorm) and starts γ at 1.",
        "The shared running averages are updated at every time step (momentum per update), so they weigh the "
        "last steps of the last batches most.",
        "Longer test sequences put blank steps before the content, so with per-step statistics every content "
        "step is normalized with another step's statistics; shorter ones drop the first steps, shifting them "
        "the other way. Shorter lengths are reported, not judged: the reuse rule under test covers only "
        "steps "
        "beyond the training length.",
    ]
    if twins_differ:
        notes.append(
            f"Warning: with per_step_stats=true, runs without running statistics should equal their twins "
            f"without it, but these differ: {'; '.join(twins_differ)}."
        )
    return Finding(parts, summary, table, fig, notes)


CLAIM = Claim(
    name="rnn",
    title="BN in a recurrent network needs per-time-step statistics",
    hypothesis=HYPOTHESIS,
    criterion=CRITERION,
    effects=(AT_TRAINING, BEYOND),
    analyze=analyze,
    previous="not supported",
    disclosure="Disclosure: this criterion was written after a first full quick sweep had been seen (its "
    "1-point margins follow the regularization claim); it was not changed after that.",
)
