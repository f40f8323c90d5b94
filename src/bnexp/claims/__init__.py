"""The claims the suite tests: each a hypothesis, a criterion fixed before any result, and the
analysis that applies the criterion to a finished sweep.

A claim's sweep is `conf/experiment/<name>.yaml`; its module here holds the rest. The analysis
reads only the sweep's run folders (`metrics.json`, `.hydra/config.yaml`), so a report can be
rebuilt at any time without training anything again.

Verdicts are decided per seed, then pooled: the claim is `supported` when its criterion holds for
every seed (and every model the claim covers), `not supported` when it fails for every one, and
`inconclusive` when they disagree.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass
class Run:
    """One run folder of a sweep, as recorded; `metrics` is None if the run failed before the end."""

    path: Path
    config: dict  # flat "group.key" -> value, as in metrics.json
    metrics: dict | None

    def __getitem__(self, key: str):
        return self.config[key]

    @property
    def diverged(self) -> bool:
        return self.metrics is None or self.metrics["diverged"]

    @property
    def test_acc(self) -> float:
        """Final test accuracy; a failed run counts as 0 (it produced no classifier)."""
        return (self.metrics or {}).get("final_test_acc") or 0.0


def load_runs(sweep_dir) -> list[Run]:
    """Every run of a sweep: each subfolder that Hydra made (it holds `.hydra/config.yaml`); a run without a
    readable metrics.json counts as failed."""
    from bnexp.train import flat_config

    runs = []
    for cfg_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        folder = cfg_file.parent.parent
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):  # not there (the run failed), or unreadable: no result either way
            metrics = None
        config = metrics["config"] if metrics else flat_config(OmegaConf.load(cfg_file))
        runs.append(Run(folder, config, metrics))
    return runs


def curve(run, tag) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a logged scalar; a non-finite value (None in metrics.json) is NaN; empty if
    absent."""
    points = (run.metrics or {}).get("series", {}).get(tag, [])
    steps = np.array([s for s, _ in points], dtype=float)
    values = np.array([math.nan if v is None else v for _, v in points], dtype=float)
    return steps, values


def require(runs: list[Run], key: str, *values) -> None:
    """Raise unless the sweep has runs with each of `values` of `key`: an analysis compares them, and without
    one of them it would judge the claim on a comparison never made."""
    missing = [v for v in values if not any(r[key] == v for r in runs)]
    if missing:
        raise ValueError(
            f"the sweep has no run with {' or '.join(f'{key}={v}' for v in missing)}, which the claim "
            f"compares"
        )


def group(runs: list[Run], *keys: str) -> dict[tuple, list[Run]]:
    """Runs grouped by the values of config keys, groups in sorted order."""
    out: dict[tuple, list[Run]] = {}
    for r in runs:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: [str(v) if v is None else v for v in kv[0]]))


def mean_std(values) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    return m, (sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5


def verdict(passed: dict) -> str:
    """Pool the criterion's outcome per seed (or per seed and model) into a verdict."""
    outcomes = set(passed.values())
    if outcomes == {True}:
        return SUPPORTED
    if outcomes == {False}:
        return NOT_SUPPORTED
    return INCONCLUSIVE


@dataclass
class Finding:
    """What an analysis concludes: the verdict, the numbers behind it, and its figure."""

    verdict: str
    summary: str  # a sentence or two with the key numbers
    passed: dict  # the criterion's outcome per seed (or per model and seed), as strings
    table: list[dict] = field(default_factory=list)  # rows of numbers, rendered as a markdown table
    figure: object = None  # a matplotlib Figure
    notes: list[str] = field(default_factory=list)  # caveats the reader should know


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    hypothesis: str
    criterion: str  # in plain words
    analyze: Callable[[list[Run]], Finding]
    paper: tuple[str, ...] = ()  # overrides that turn the quick sweep into the papers' setup
    # Set only where the criterion was fixed after some of its results had been seen: when and how, put
    # first among the report's notes.
    disclosure: str = ""

    @property
    def preregistered(self) -> bool:
        """Whether the criterion was fixed before any of its runs were seen."""
        return not self.disclosure


def _registry() -> dict[str, Claim]:
    from bnexp.claims import (
        affine,
        batch_size,
        ics,
        ics_gradient,
        init_sensitivity,
        input_norm,
        lr_tolerance,
        regularization,
        rnn,
    )

    return {
        m.CLAIM.name: m.CLAIM
        for m in (
            lr_tolerance,
            init_sensitivity,
            regularization,
            batch_size,
            affine,
            ics,
            ics_gradient,
            input_norm,
            rnn,
        )
    }


CLAIMS = _registry()
