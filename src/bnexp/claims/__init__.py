"""The claims the suite tests: each a hypothesis, a criterion fixed before any result, and the
analysis that applies the criterion to a finished sweep.

A claim's sweep is `conf/experiment/<name>.yaml` (the quick profile; `conf/experiment/<profile>/<name>.yaml`
for the others); its module here holds the rest. The analysis reads only the sweep's run folders, through
bnexp.records, so a report can be rebuilt at any time without training anything again.

The verdict rule (criteria version 2). A claim's criterion names one or more *effects*: a number computed
for each seed from that seed's runs (a difference or a ratio between arms), each with a *smallest effect
of interest* δ and the side of δ the claim predicts. Per effect, the analysis takes the mean over seeds
and its 95 % Student-t interval, mean ± t(0.975, n − 1) · s / √n. The t interval rather than a bootstrap:
with the 3 to 10 seeds a profile runs, a percentile bootstrap resamples only those n values and ignores
that s is itself an estimate, so its interval is too narrow (for n = 5 about 0.63× the t interval's
width), and it would call effects settled that are not; the t interval is exact for normally distributed
per-seed effects and holds up well for mild skew. An effect (a *part* of the claim) is

    supported      when the whole interval lies on the predicted side of δ,
    not supported  when the whole interval lies on the other side,
    inconclusive   otherwise: the interval contains δ, there are fewer than two seeds, or a seed's
                   effect is undefined (e.g. a run diverged and has no drift to measure).

A claim is supported when every part is, not supported when any part is not, inconclusive otherwise;
the verdict names the part that decided it. A *control* (criteria version 3) is a part the comparison
needs to mean anything, such as "the plain network trains": judged by the same rule, and unless it is
supported the claim (or the parts it gates) is inconclusive, its reason the failed control.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from scipy.stats import t as student_t

from bnexp.records import Run

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
LEVEL = 0.95

# The first rule (version 1) called a claim supported when its criterion held in every seed, not supported
# when it failed in every one. Each claim module states its previous verdict beside this.
REVISION = (
    "Criterion version 2 (2026-12-03), replacing version 1, whose rule asked every seed to agree: each part "
    "is now an effect per seed with a smallest effect of interest, judged by its 95 % interval over seeds "
    "(rule: src/bnexp/claims/__init__.py). Version 1's thresholds are carried over as the smallest effects "
    "of interest; a seed whose effect is undefined (a run diverged where the effect needs it to train) now "
    "makes its part inconclusive, where version 1 counted the seed as failed. Written after version 1's "
    "quick-profile results had been seen, before any run of the standard profile."
)


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


def ratio(a: float, b: float) -> float:
    """a ÷ b, NaN where b is 0 (or either is NaN): a ratio with nothing to compare to is undefined."""
    return a / b if b else math.nan


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """The mean of `values` and its two-sided Student-t confidence interval (low, high); NaN bounds with
    fewer than two values or any that is not finite."""
    n = len(values)
    if n == 0 or not all(math.isfinite(v) for v in values):
        return math.nan, math.nan, math.nan
    mean, std = mean_std(values)
    if n < 2:
        return mean, math.nan, math.nan
    half = student_t.ppf((1 + level) / 2, n - 1) * std / math.sqrt(n)
    return mean, mean - half, mean + half


UNITS = {  # how an effect's values print: a multiplier and a format
    "points": (100.0, "%+.1f points"),  # differences of accuracies (or other fractions), as percentage points
    "%": (100.0, "%.1f %%"),  # accuracies themselves
    "×": (1.0, "%.3g×"),  # ratios
    "decades": (1.0, "%+.2f decades"),  # log10 ratios
    "": (1.0, "%.3g"),
}


@dataclass(frozen=True)
class Effect:
    """One part of a claim's criterion: a number per seed, the smallest effect of interest δ, and the side
    of δ the claim predicts."""

    name: str  # short, e.g. "BN's drop beyond GroupNorm's"
    measures: str  # how one seed's value is computed, in words
    smallest: float  # δ
    above: bool  # the claim predicts the effect beyond δ upwards (False: below δ)
    unit: str = "points"  # a key of UNITS
    paper: str = ""  # the papers' comparable number, with its setup
    # A positive control: a condition the comparison needs to mean anything (the plain network trains),
    # judged by the same rule; unless it is supported the claim is inconclusive (`pool`).
    control: bool = False
    gates: tuple[str, ...] = ()  # a control's scope: the names of the effects it gates; () for all
    # A ratio judged on the log scale: the mean and interval of log(value), reported back as ratios (the
    # geometric mean). Per-seed ratios are skewed, and a t interval on the ratio itself can reach below 0.
    log: bool = False
    # False: judged and reported, but not part of the claim's verdict (`pool`): a mechanism the paper offers
    # as its explanation, which the claim itself does not assert.
    decides: bool = True

    def format(self, value: float) -> str:
        scale, spec = UNITS[self.unit]
        return "n/a" if not math.isfinite(value) else spec % (value * scale)

    def text(self) -> str:
        """The part of the criterion's text this effect contributes."""
        side = "above" if self.above else "below"
        if self.control:
            scope = " and ".join(f"*{name}*" for name in self.gates) or "the claim"
            verb = "are" if len(self.gates) > 1 else "is"
            return (
                f"*{self.name}* (a control: unless it holds, {scope} {verb} inconclusive): {self.measures}; "
                f"it must lie {side} {self.format(self.smallest)}."
            )
        scale = " (geometric mean over seeds, its interval taken on the log scale)" if self.log else ""
        predicts = (
            "the claim predicts it" if self.decides else "reported, not deciding the verdict: predicted"
        )
        return f"*{self.name}*: {self.measures}{scale}; {predicts} {side} {self.format(self.smallest)}."

    def bounded(self, value: float, at_least: bool = False, at_most: bool = False) -> float:
        """A seed's value known only as a bound (a run or a grid cut off by its budget or its edge): kept
        where the bound alone puts the true value on one side of δ, else NaN (undefined: inconclusive)."""
        if at_least and at_most:
            return math.nan
        if at_least:
            return value if value > self.smallest else math.nan
        if at_most:
            return value if value < self.smallest else math.nan
        return value

    def judge(self, per_seed: dict[str, float], where: str = "") -> "Part":
        """Apply the rule to this effect's values per seed (of one model, activation, ... `where`)."""
        values = [float(v) for v in per_seed.values()]
        if self.log:  # a ratio of 0 or below has no logarithm: undefined, like a NaN
            logs = [math.log(v) if v > 0 else math.nan for v in values]
            mean, low, high = (math.exp(v) for v in t_interval(logs))
        else:
            mean, low, high = t_interval(values)
        reason = ""
        if math.isnan(low):
            reason = (
                "fewer than two seeds"
                if len(values) < 2
                else "undefined in seed(s) "
                + ", ".join(s for s, v in per_seed.items() if not math.isfinite(v) or (self.log and v <= 0))
            )
            verdict = INCONCLUSIVE
        elif (low > self.smallest) if self.above else (high < self.smallest):
            verdict = SUPPORTED
        elif (high < self.smallest) if self.above else (low > self.smallest):
            verdict = NOT_SUPPORTED
        else:
            verdict, reason = INCONCLUSIVE, f"the interval contains {self.format(self.smallest)}"
        return Part(self, where, dict(per_seed), mean, low, high, verdict, reason)


@dataclass
class Part:
    """An effect judged on a sweep: its values per seed, their mean and 95 % interval, and the verdict."""

    effect: Effect
    where: str
    per_seed: dict[str, float]
    mean: float
    low: float
    high: float
    verdict: str
    reason: str = ""  # why inconclusive

    @property
    def name(self) -> str:
        return f"{self.effect.name} ({self.where})" if self.where else self.effect.name

    def estimate(self) -> str:
        """The effect and its interval, e.g. "+8.1 points [+5.2, +11.0]"."""
        e = self.effect
        if math.isnan(self.low):
            return e.format(self.mean)
        return f"{e.format(self.mean)} [{e.format(self.low)}, {e.format(self.high)}]"

    def to_dict(self) -> dict:
        """For finding.json, an undefined number (NaN) as null."""
        e = self.effect

        def number(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return dict(
            name=self.name,
            effect=e.name,
            where=self.where,
            measures=e.measures,
            smallest=e.smallest,
            predicted="above" if e.above else "below",
            unit=e.unit,
            scale="log" if e.log else "linear",
            control=e.control,
            decides=e.decides,
            per_seed={seed: number(v) for seed, v in self.per_seed.items()},
            per_seed_text={seed: e.format(v) for seed, v in self.per_seed.items()},
            mean=number(self.mean),
            interval=[number(self.low), number(self.high)],
            level=LEVEL,
            estimate=self.estimate(),
            smallest_text=e.format(e.smallest),
            verdict=self.verdict,
            reason=self.reason,
            paper=e.paper,
        )


def gates(control: Part, part: Part) -> bool:
    """Whether a control gates a part: one of the effects it names (all, if it names none), in its setting
    (its `where`: a control judged for one activation, say, gates that activation's parts; one judged for
    the whole sweep gates them all)."""
    named = not control.effect.gates or part.effect.name in control.effect.gates
    return named and (not control.where or control.where == part.where)


def pool(parts: list[Part]) -> tuple[str, str]:
    """The claim's verdict from its parts, and the part that decided it (every part, when supported). A
    control that is not supported makes the parts it gates inconclusive (all of them, unless it names
    some), whatever they say. A part whose effect does not decide (a mechanism) is left out."""
    failed = [c for c in parts if c.effect.control and c.verdict != SUPPORTED]
    if any(not c.effect.gates and not c.where for c in failed):
        return INCONCLUSIVE, "control failed: " + "; ".join(c.name for c in failed)
    verdicts = {}
    for p in parts:
        if not p.effect.control and p.effect.decides:
            gating = [c.name for c in failed if gates(c, p)]
            verdicts[p.name + (f" (control failed: {'; '.join(gating)})" if gating else "")] = (
                INCONCLUSIVE if gating else p.verdict
            )
    if not verdicts:
        return INCONCLUSIVE, "no part could be judged"
    for outcome in (NOT_SUPPORTED, INCONCLUSIVE):
        deciding = [name for name, verdict in verdicts.items() if verdict == outcome]
        if deciding:
            return outcome, "; ".join(deciding)
    return SUPPORTED, "every part"


def gate_mechanisms(parts: list[Part]) -> list[Part]:
    """The parts, each mechanism (decides=False) that a failed control gates made inconclusive, its reason
    that control: pool() sets only deciding parts aside, and a mechanism's own verdict would read as if its
    control had held."""
    failed = [c for c in parts if c.effect.control and c.verdict != SUPPORTED]

    def gated(p: Part) -> Part:
        gating = [c.name for c in failed if gates(c, p)]
        if p.effect.decides or p.effect.control or not gating:
            return p
        return replace(p, verdict=INCONCLUSIVE, reason="control failed: " + "; ".join(gating))

    return [gated(p) for p in parts]


@dataclass
class Finding:
    """What an analysis concludes: the judged parts, the numbers behind them, and its figure."""

    parts: list[Part]
    summary: str  # a sentence or two with the key numbers
    table: list[dict] = field(default_factory=list)  # rows of numbers, rendered as a markdown table
    figure: object = None  # a matplotlib Figure
    notes: list[str] = field(default_factory=list)  # caveats the reader should know

    def __post_init__(self):
        self.parts = gate_mechanisms(self.parts)

    @property
    def verdict(self) -> str:
        return pool(self.parts)[0]

    @property
    def decided_by(self) -> str:
        return pool(self.parts)[1]


@dataclass(frozen=True)
class Revision:
    """A criterion revised after version 2: a new version, committed before the runs that judge it. The
    report discloses it with its date, the reason (the confound that motivated it) and the verdict of the
    version it replaces."""

    version: int
    date: str  # when the new version was committed, YYYY-MM-DD
    why: str  # the confound or error that motivated it, and what changed
    previous: str  # the replaced version's verdict, with its profile and date

    def text(self) -> str:
        return (
            f"Criterion version {self.version} ({self.date}), replacing version {self.version - 1}, fixed "
            f"before any run that judges it: {self.why} Version {self.version - 1}'s verdict: "
            f"{self.previous}."
        )


@dataclass(frozen=True)
class Claim:
    name: str
    title: str
    hypothesis: str
    criterion: str  # in plain words, the effects' texts among it
    effects: tuple[Effect, ...]
    analyze: Callable[[list[Run]], Finding]
    previous: str = ""  # version 1's verdict on the quick profile, for version 2's disclosure
    changes: str = ""  # what else version 2 changed for this claim beyond the rule, for the disclosure
    # Set only where the criterion was fixed after some of its results had been seen: when and how, put
    # first among the report's notes.
    disclosure: str = ""
    revisions: tuple[Revision, ...] = ()  # the versions after 2, oldest first
    # A claim added after the rule's version 2: the date its first criterion (its version 1, judged by the
    # interval rule from the start) was committed, before any of its runs. Its revisions count from 2.
    introduced: str = ""

    @property
    def version(self) -> int:
        return self.revisions[-1].version if self.revisions else (1 if self.introduced else 2)

    @property
    def preregistered(self) -> bool:
        """Whether the criterion was fixed before any of its runs were seen."""
        return not self.disclosure

    @property
    def revision(self) -> str:
        """The criterion's history, newest version first."""
        if self.introduced:
            first = (
                f"Criterion version 1 ({self.introduced}), the claim's first, fixed before any of its runs "
                f"and judged by the interval rule of src/bnexp/claims/__init__.py."
            )
            return " ".join([r.text() for r in reversed(self.revisions)] + [first])
        previous = f"Version 1's verdict (quick profile, 2026-12-03): {self.previous}."
        second = " ".join(text for text in (REVISION, self.changes, previous) if text)
        return " ".join([r.text() for r in reversed(self.revisions)] + [second])


def _registry() -> dict[str, Claim]:
    from bnexp.claims import (
        affine,
        batch_size,
        ics,
        ics_gradient,
        init_sensitivity,
        input_norm,
        lr_tolerance,
        placement,
        precise_bn,
        regularization,
        rnn,
        sharpness,
        small_batch,
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
            placement,
            precise_bn,
            sharpness,
            small_batch,
        )
    }


CLAIMS = _registry()
