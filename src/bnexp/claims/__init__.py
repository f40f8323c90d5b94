"""The claims the suite tests: each a hypothesis, a criterion fixed before any result, and the
analysis that applies the criterion to a finished sweep.

A claim's sweep is `conf/experiment/<name>.yaml` (its papers' setup `conf/experiment/paper/<name>.yaml`);
its module here holds the rest. The analysis reads only the sweep's run folders, through bnexp.records,
so a report can be rebuilt at any time without training anything again.

Verdicts are decided per seed, then pooled: the claim is `supported` when its criterion holds for
every seed (and every model the claim covers), `not supported` when it fails for every one, and
`inconclusive` when they disagree.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bnexp.records import Run

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


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
