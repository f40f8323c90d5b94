"""`bnexp-report SWEEP_DIR`: turn a finished claim sweep into a verdict, a figure and report.md.

Reads only the run folders, so it can be re-run at any time (it also runs by itself at the end of
every claim sweep). Writes into the sweep folder: `report.md`, `<claim>.png`, `finding.json` (what
`bnexp-reproduce` collects) and the figure as a TensorBoard image under `report/`.
"""

import argparse
import json
import sys
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from bnexp import records
from bnexp.claims import CLAIMS
from bnexp.config import UserError
from bnexp.records import Run, load_runs


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


# A run's training has flattened when its test accuracy moved by less than FLAT points between the last
# FLAT_WINDOW of its steps and the FLAT_WINDOW before: means over the evaluations in each window, so that
# the test set's sampling noise (about a point at 1,000 examples) is averaged over several evaluations.
FLAT, FLAT_WINDOW, FLAT_EVALUATIONS = 0.01, 0.2, 8


def flattened(run: Run) -> bool | None:
    """Whether the run's test accuracy had stopped changing by its end; None when it cannot be told: the run
    failed or diverged, or it was evaluated fewer than FLAT_EVALUATIONS times."""
    if run.metrics is None or run.diverged:
        return None
    steps, acc = records.curve(run, records.TEST_ACC)
    if len(acc) < FLAT_EVALUATIONS:
        return None
    end = steps[-1]
    last = acc[steps > end * (1 - FLAT_WINDOW)]
    before = acc[(steps > end * (1 - 2 * FLAT_WINDOW)) & (steps <= end * (1 - FLAT_WINDOW))]
    if not len(last) or not len(before):
        return None
    return abs(float(last.mean() - before.mean())) < FLAT


def flatness(runs: list[Run]) -> str:
    """How many runs had flattened by their end, and the settings (seeds pooled) of those that had not."""
    told = [(r, f) for r in runs if (f := flattened(r)) is not None]
    if not told:
        return f"not checked (no run evaluated {FLAT_EVALUATIONS} times or more)"
    moving: dict[str, int] = {}
    for r, f in told:
        if not f:
            setting = ",".join(p for p in r.path.name.split(",") if not p.startswith("seed="))
            moving[setting] = moving.get(setting, 0) + 1
    text = (
        f"{len(told) - sum(moving.values())} of {len(told)} runs (failed and diverged ones not counted) had "
        f"flattened: their test accuracy moved by less than {FLAT * 100:.0f} point between the last "
        f"{FLAT_WINDOW:.0%} of training and the {FLAT_WINDOW:.0%} before"
    )
    if moving:
        text += "; still moving: " + ", ".join(
            f"{k} ({n} seed{'s' * (n > 1)})" for k, n in sorted(moving.items())
        )
    return text


def setup(runs: list[Run]) -> dict:
    """What produced the result: data, steps, models, norms, seeds (the values the runs used)."""

    def values(key):
        return sorted({r[key] for r in runs}, key=str)

    steps = sorted({r.steps_planned for r in runs if r.metrics})
    return {
        "runs": len(runs),
        "failed runs": sum(r.metrics is None for r in runs),
        "diverged runs": sum(r.diverged for r in runs),
        "seeds": values("seed"),
        "data": values("data.name"),
        "steps": steps if len(steps) <= 3 else [f"{steps[0]}–{steps[-1]}"],
        "models": values("model.name"),
        "norms": values("norm.name"),
        "flattened": flatness(runs),
    }


def distinct_provenance(runs: list[Run]) -> list[dict]:
    """The different provenance records among the finished runs (one, unless code or device changed)."""
    seen = {
        json.dumps(r.provenance, sort_keys=True): r.provenance for r in runs if r.metrics and r.provenance
    }
    return list(seen.values())


def code_versions_note(runs: list[Run]) -> list[str]:
    """A note where the finished runs were recorded by more than one version of the code (bnexp, its commit,
    torch; a sweep resumed after the code changed): their results may differ for that reason alone."""
    versions = {}
    for r in runs:
        if r.metrics and r.provenance:
            p = r.provenance
            code = {k: p.get(k) for k in ("bnexp", "git_commit", "git_dirty", "torch")}
            versions.setdefault(json.dumps(code, sort_keys=True), []).append(r)
    if len(versions) < 2:
        return []
    counts = "; ".join(f"{len(rs)} by {records.describe(json.loads(code))}" for code, rs in versions.items())
    return [
        f"These runs were recorded by {len(versions)} versions of the code ({counts}): a sweep resumed after "
        "the code changed mixes them, and a difference between its runs may come from that alone."
    ]


def effects_table(parts: list[dict]) -> str:
    """The judged parts of a claim: each effect with its 95 % interval, δ, the verdict and the seeds."""
    rows = [
        {
            "part": p["name"]
            + (" (control)" if p.get("control") else "")
            + ("" if p.get("decides", True) else " (reported, not deciding)"),
            "effect [95 % interval]": p["estimate"],
            "claim predicts": f"{p['predicted']} {p['smallest_text']}",
            "verdict": p["verdict"] + (f" ({p['reason']})" if p["reason"] else ""),
            "per seed": ", ".join(f"{seed}: {text}" for seed, text in p["per_seed_text"].items()),
        }
        for p in parts
    ]
    return markdown_table(rows)


def headline(result: dict) -> str:
    """The verdict with the effect that decided it, for the summary tables."""
    parts = {p["name"]: p for p in result.get("parts", [])}
    deciding = [parts[name] for name in result.get("decided_by", "").split("; ") if name in parts]
    judged = [p for p in parts.values() if not p.get("control") and p.get("decides", True)]
    shown = deciding or judged or list(parts.values())  # "every part": the claim's effects, not its controls
    effects = "; ".join(f"{p['name']}: {p['estimate']}" for p in shown[:2])
    return f"**{result['verdict']}**" + (f" — {effects}" if effects else "")


def render(result: dict, figure: str, level: int = 1) -> str:
    """A claim's result (finding.json's content) as markdown; `figure` is the image's path from the page."""
    setup = "; ".join(
        f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in result["setup"].items()
    )
    # When a version was fixed, against which runs, is the revision's note (the first).
    fixed = f"version {result['version']}, see the first note" + (
        "" if result["preregistered"] else "; first set after a look at results, see the disclosure"
    )
    papers = [f"*{p['effect']}* — {p['paper']}" for p in result["parts"] if p["paper"]]
    parts = [
        f"{'#' * level} {result['title']}",
        f"**Verdict: {result['verdict']}** (decided by: {result['decided_by']}). {result['summary']}",
        f"![{result['claim']}]({figure})",
        f"**Hypothesis.** {result['hypothesis']}",
        f"**Criterion ({fixed}).** {result['criterion']}",
        "**Effects** (mean over seeds and its 95 % Student-t interval; rule: supported when the whole "
        "interval lies beyond the smallest effect of interest on the predicted side, not supported when it "
        "lies wholly on the other side, inconclusive otherwise; a control that is not supported makes the "
        "claim inconclusive):",
        effects_table(result["parts"]),
        "**The papers' numbers beside ours.** " + " ".join(dict.fromkeys(papers))
        if papers
        else "",  # once each
        markdown_table(result["table"]),
    ]
    parts += [f"*Note.* {note}" for note in result["notes"]]
    parts.append(f"**Setup.** {setup}")
    made = "; ".join(records.describe(p) for p in result["provenance"]["runs"])
    parts.append(f"**Provenance.** Runs: {made}. Report: {records.describe(result['provenance']['report'])}.")
    return "\n\n".join(p for p in parts if p) + "\n"


def report(sweep_dir, runs: list[Run] | None = None) -> dict:
    """Analyse the claim sweep in `sweep_dir` (its `runs`, if already loaded); write its report files and
    return finding.json's content."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir) if runs is None else runs
    if not runs:
        raise UserError(
            f"{sweep_dir} holds no runs (no */.hydra/config.yaml below it). Give the folder of a "
            f"finished sweep, e.g. multirun/lr_tolerance/<date_time>, as made by "
            f"`bnexp -m experiment=<claim>`."
        )
    if all(r.metrics is None for r in runs):
        raise UserError(
            f"Every run in {sweep_dir} failed before finishing (no metrics.json); their logs in the run "
            f"folders say why. Fix the cause and run the sweep again."
        )
    names = {r["claim"] for r in runs}
    if len(names) != 1 or None in names or next(iter(names)) not in CLAIMS:
        raise UserError(
            f"The runs in {sweep_dir} belong to claims {sorted(map(str, names))}, but a report needs "
            f"one sweep of one claim ({', '.join(CLAIMS)}): run `bnexp -m experiment=<claim>`."
        )
    claim = CLAIMS[names.pop()]
    seen: dict[str, Run] = {}
    for (
        r
    ) in runs:  # an analysis keys its runs by their settings: a second run with the same ones would hide one
        key = json.dumps(r.config, sort_keys=True, default=str)
        if key in seen:
            raise UserError(
                f"{seen[key].path.name} and {r.path.name} in {sweep_dir} are runs with the same settings "
                f"(two sweeps in one folder?); keep one of them, or give each sweep its own folder."
            )
        seen[key] = r
    try:
        finding = claim.analyze(runs)
    except Exception as e:  # in practice: a narrowed sweep lacks a setting the claim compares
        raise UserError(
            f"The {claim.name} analysis could not use the runs in {sweep_dir} ({type(e).__name__}: {e}). "
            f"It compares the settings that `bnexp -m experiment={claim.name}` sweeps "
            f"(conf/experiment/{claim.name}.yaml): fewer seeds or steps are fine, but a sweep narrowed to "
            f"fewer of its norms, models or other swept values may lack a comparison it needs."
        ) from e
    figure = f"{claim.name}.png"
    finding.figure.savefig(sweep_dir / figure, dpi=110)
    with SummaryWriter(str(sweep_dir / "report")) as tb:
        tb.add_figure(f"claims/{claim.name}", finding.figure)  # add_figure closes the figure
        tb.add_text(f"claims/{claim.name}/verdict", f"{finding.verdict}: {finding.summary}")
    result = dict(
        claim=claim.name,
        title=claim.title,
        verdict=finding.verdict,
        decided_by=finding.decided_by,
        summary=finding.summary,
        hypothesis=claim.hypothesis,
        criterion=claim.criterion,
        version=claim.version,
        preregistered=claim.preregistered,
        parts=[p.to_dict() for p in finding.parts],
        table=finding.table,
        notes=[claim.revision]
        + ([claim.disclosure] if claim.disclosure else [])
        + finding.notes
        + code_versions_note(runs),
        figure=figure,
        setup=setup(runs),
        provenance={"report": records.provenance(), "runs": distinct_provenance(runs)},
    )
    records.write_text(sweep_dir / "report.md", render(result, figure))
    records.write_json(sweep_dir / "finding.json", result)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bnexp-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the folder of a finished `bnexp -m experiment=<claim>` sweep")
    args = parser.parse_args(argv)
    try:
        result = report(args.sweep_dir)
    except UserError as e:
        sys.exit(f"bnexp-report: {e}")
    print(
        f"{result['claim']}: {result['verdict']}. {result['summary']}\n"
        f"  report: {Path(args.sweep_dir) / 'report.md'}"
    )


if __name__ == "__main__":
    main()
