"""`bnexp-reproduce`: run every claim's sweep and write one REPORT.md with all the verdicts.

    bnexp-reproduce                          # quick profile: the offline datasets, sized for a 2-core laptop
    bnexp-reproduce --profile standard       # real MNIST digits, offline, 5+ seeds: the committed results
    bnexp-reproduce --profile paper          # the papers' setups (MNIST, CIFAR-10): for a GPU
    bnexp-reproduce --claims lr_tolerance,batch_size --out my_results
    bnexp-reproduce --update-experiments     # also refresh experiments/<claim>/README.md
    bnexp-reproduce --resume reproduce/standard_<date_time>   # finish an interrupted reproduction

Each claim runs as `bnexp -m experiment=<claim>` (the exact command is in the report), so every
number in REPORT.md can be re-derived from its sweep folder with `bnexp-report`.
"""

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bnexp import records
from bnexp.claims import CLAIMS
from bnexp.config import UserError
from bnexp.report import headline, markdown_table, render, report

PROFILES = {
    "quick": "the offline datasets (digits, 5,000 MNIST digits, MNIST-1D, synthetic), sized for a 2-core "
    "laptop",
    "standard": "5,000 real MNIST digits (mnist5k; the CNNs narrowed to 8 and 16 channels to fit) and "
    "synthetic data, offline, five seeds or more, budgets 1.5-5× the quick ones: about an hour, 2 CPU cores",
    "paper": "the papers' setups (MNIST, CIFAR-10), more steps and seeds: meant for a GPU",
}


def sweep_command(claim, profile: str, sweep_dir: Path, jobs: int, extra: list[str]) -> list[str]:
    """The claim's sweep in a profile: conf/experiment/<claim>.yaml (quick), or
    conf/experiment/<profile>/<claim>.yaml."""
    experiment = claim.name if profile == "quick" else f"{profile}/{claim.name}"
    cmd = ["bnexp", "-m", f"experiment={experiment}", f"hydra.sweep.dir={sweep_dir}"]
    # Runs that differ only in seeds, learning rates, init scales, ... train K at a time as one program;
    # the programs (and the runs that cannot be vectorized) `jobs` at a time, one process each.
    cmd += ["hydra/launcher=vectorized", f"hydra.launcher.n_jobs={jobs}"]
    return cmd + extra


def run_claim(claim, cmd: list[str], sweep_dir: Path) -> dict:
    """Run one claim's sweep; its finding.json, or an error entry if the sweep produced none."""
    print(f"\n=== {claim.name}\n+ {shlex.join(cmd)}", flush=True)
    proc = subprocess.run([sys.executable, "-m", "bnexp", *cmd[1:]])
    finding = sweep_dir / "finding.json"
    if finding.exists():
        return json.loads(finding.read_text())
    return failed(claim, f"The sweep ended with exit code {proc.returncode} and no report; see {sweep_dir}.")


def reanalyze(claim, sweep_dir: Path) -> dict:
    """A finished sweep's finding, its report rebuilt from its run folders by the current analysis."""
    print(f"\n=== {claim.name}: finished earlier; its report rebuilt from {sweep_dir}", flush=True)
    try:
        return report(sweep_dir)
    except UserError as e:
        return failed(claim, f"Its report could not be rebuilt: {e}")


def failed(claim, why: str) -> dict:
    return dict(claim=claim.name, title=claim.title, verdict="error", summary=why)


def write_report(
    out: Path, profile: str, results: list[dict], commands: dict, seconds: float, rebuilt: list[str] = ()
) -> Path:
    took = f"{seconds / 60:.1f} min in all"
    if rebuilt:  # a resumed reproduction: its time is this pass's, not the sweeps'
        took = (
            f"resumed: {len(rebuilt)} of {len(results)} claims' sweeps had run before and were re-analysed "
            f"(each claim's provenance names the code its runs came from), this pass {seconds / 60:.1f} min"
        )
    head = [
        f"# bnexp reproduction: {profile} profile",
        f"{datetime.now():%Y-%m-%d %H:%M}, {PROFILES[profile]}; {records.describe(records.provenance())}, "
        f"{platform.platform()}, {took}.",
        markdown_table(
            [
                {
                    "claim": f"[{r['title']}](#{r['claim']})",
                    "verdict and deciding effect [95 % interval]": headline(r),
                    "summary": r["summary"],
                }
                for r in results
            ]
        ),
    ]
    sections = []
    for r in results:
        body = (
            render(r, f"{r['claim']}/{r['figure']}", level=2)
            if "figure" in r
            else f"## {r['title']}\n\n{r['summary']}\n"
        )
        sections.append(
            f'<a id="{r["claim"]}"></a>\n\n{body}\n**Command.** `{shlex.join(commands[r["claim"]])}`\n'
        )
    path = out / "REPORT.md"
    path.write_text("\n\n".join(head) + "\n\n" + "\n".join(sections))
    return path


def update_experiments(folder: Path, out: Path, profile: str, results: list[dict], commands: dict) -> None:
    """The lab notebook: experiments/<claim>/README.md with the latest result and its figure, the whole
    REPORT.md when the reproduction covered every claim (its figure links hold there too), and the reproduced
    claims' rows of the "What the suite found" section of the README beside the folder."""
    # The code the runs were trained with: one commit, unless a reproduction spanned a change.
    made = {records.describe(p) for r in results for p in r.get("provenance", {}).get("runs", [])}
    stamp = (
        f"{datetime.now():%Y-%m-%d}, {profile} profile ({PROFILES[profile]}); runs: {'; '.join(sorted(made))}"
    )
    for r in results:
        if "figure" not in r:
            continue
        target = folder / r["claim"]
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / r["claim"] / r["figure"], target / r["figure"])
        (target / "README.md").write_text(
            f"{render(r, r['figure'])}\n*Latest result: {stamp}.*\n\n**Command.** "
            f"`{shlex.join(commands[r['claim']])}`\n"
        )
    folder.mkdir(parents=True, exist_ok=True)
    if {r["claim"] for r in results} == set(CLAIMS):  # a partial one would drop the others' sections
        shutil.copyfile(out / "REPORT.md", folder / "REPORT.md")
    readme = folder.resolve().parent / "README.md"
    if readme.exists():
        update_findings(readme, folder, results, stamp)


FINDINGS = ("<!-- findings:start -->", "<!-- findings:end -->")
KEY_FIGURES = ("lr_tolerance", "batch_size", "ics")


def update_findings(readme: Path, folder: Path, results: list[dict], stamp: str) -> None:
    """Rewrite the reproduced claims' rows of the README's table between the FINDINGS markers (the other
    claims keep theirs, each row saying which reproduction it comes from), and the key figures."""
    text = readme.read_text()
    if FINDINGS[0] not in text or FINDINGS[1] not in text:
        return
    start, end = text.index(FINDINGS[0]), text.index(FINDINGS[1]) + len(FINDINGS[1])
    rel = os.path.relpath(folder, readme.parent)
    rows = {}  # claim -> its table row, the earlier ones first
    for line in text[start:end].splitlines():
        for name in CLAIMS:
            if line.startswith("| [") and f"({rel}/{name}/README.md)" in line:
                rows[name] = line
    when = stamp.split(" profile", 1)[0]  # "<date>, <profile>"
    for r in results:
        setup = "; ".join(f"{k} {', '.join(map(str, r['setup'][k]))}" for k in ("data", "steps", "seeds"))
        rows[r["claim"]] = markdown_table(
            [
                {
                    "claim": f"[{r['title']}]({rel}/{r['claim']}/README.md)",
                    "verdict and deciding effect [95 % interval]": headline(r),
                    "setup": setup if "setup" in r else "",
                    "reproduced": when,
                }
            ]
        ).splitlines()[-1]
    header = markdown_table(
        [dict.fromkeys(("claim", "verdict and deciding effect [95 % interval]", "setup", "reproduced"), "")]
    ).splitlines()[:2]
    table = "\n".join(header + [rows[name] for name in CLAIMS if name in rows])
    figures = [
        f"![{name}]({rel}/{name}/{name}.png)"
        for name in KEY_FIGURES
        if (folder / name / f"{name}.png").exists()
    ]
    section = "\n\n".join([FINDINGS[0], f"*The latest reproduction: {stamp}.*", table, *figures, FINDINGS[1]])
    readme.write_text(text[:start] + section + text[end:])


SETTINGS = "reproduction.json"  # a reproduction's profile, claims and overrides, for --resume


def resume_settings(parser, args) -> None:
    """Take the profile, claims and overrides of the reproduction in args.resume; refuse others given."""
    path = args.resume / SETTINGS
    if not path.is_file():
        parser.error(
            f"--resume {args.resume}: no {SETTINGS} there, so it is not a folder that bnexp-reproduce "
            f"started; give the folder of an interrupted reproduction (reproduce/<profile>_<date_time>), "
            f"or start a new one without --resume"
        )
    saved = json.loads(path.read_text())
    given = dict(profile=args.profile, claims=args.claims.split(","), overrides=args.overrides)
    defaults = dict(profile="quick", claims=list(CLAIMS), overrides=[])
    clash = [k for k in saved if given[k] != defaults[k] and given[k] != saved[k]]
    if clash:
        parser.error(
            f"--resume {args.resume} continues that reproduction with its own {', '.join(clash)} "
            f"({'; '.join(f'{k}: {saved[k]}' for k in clash)}); leave {'it' if len(clash) == 1 else 'them'} "
            f"out, or start a new reproduction"
        )
    args.profile, args.claims, args.overrides = (
        saved["profile"],
        ",".join(saved["claims"]),
        saved["overrides"],
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="bnexp-reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, default="quick")
    parser.add_argument("--claims", default=",".join(CLAIMS), help="comma-separated claims (default: all)")
    parser.add_argument("--out", type=Path, help="output folder (default: reproduce/<profile>_<date_time>)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="programs trained in parallel by hydra/launcher=vectorized (default: one per core)",
    )
    parser.add_argument(
        "--update-experiments",
        nargs="?",
        const=Path("experiments"),
        type=Path,
        metavar="DIR",
        help="also rewrite DIR/<claim>/README.md (default DIR: experiments)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="finish the reproduction in DIR: run the claims whose sweep has no report yet (each training "
        "only its runs that did not finish), rebuild the others' reports from their runs, then REPORT.md; "
        "its profile, claims and overrides are DIR's",
    )
    parser.add_argument("overrides", nargs="*", help="extra overrides for every sweep, e.g. device=cuda")
    args = parser.parse_args(argv)
    if args.resume:
        resume_settings(parser, args)

    claims = [c.strip() for c in args.claims.split(",") if c.strip()]
    unknown = [c for c in claims if c not in CLAIMS]
    if unknown or not claims:
        parser.error(
            f"unknown claim(s) {', '.join(unknown)}; the claims are: {', '.join(CLAIMS)}"
            if unknown
            else f"--claims names no claim; choose from: {', '.join(CLAIMS)}"
        )
    jobs = args.jobs
    if jobs < 1:
        parser.error(f"--jobs {jobs}: the programs trained at once must be at least 1")
    if jobs > 1 and importlib.util.find_spec("joblib") is None:
        print(
            "bnexp-reproduce: joblib is not installed (pip install 'bnexp[joblib]'), so the programs go one "
            "at a "
            "time.",
            file=sys.stderr,
        )
        jobs = 1
    out = args.resume or args.out or Path("reproduce") / f"{args.profile}_{datetime.now():%Y-%m-%d_%H-%M-%S}"
    # A folder of its own: an earlier reproduction's run folders would join this one's analyses, and its
    # finding.json stand in for a sweep that fails.
    if not args.resume and out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(
            f"--out {out} already exists and is not an empty folder; a reproduction writes its sweeps and "
            f"REPORT.md into a new one: give another --out, delete {out} first, or finish it with "
            f"--resume {out}"
        )
    out.mkdir(parents=True, exist_ok=True)
    settings = dict(profile=args.profile, claims=claims, overrides=args.overrides)
    records.write_json(out / SETTINGS, settings)

    start, results, commands, rebuilt = time.perf_counter(), [], {}, []
    for name in claims:
        claim = CLAIMS[name]
        commands[name] = sweep_command(claim, args.profile, out / name, jobs, args.overrides)
        if args.resume and (out / name / "finding.json").exists():
            results.append(reanalyze(claim, out / name))
            rebuilt.append(name)
        else:
            results.append(run_claim(claim, commands[name], out / name))
    report_path = write_report(out, args.profile, results, commands, time.perf_counter() - start, rebuilt)
    if args.update_experiments:
        update_experiments(args.update_experiments, out, args.profile, results, commands)
    print("\n" + "\n".join(f"{r['claim']:>18}: {r['verdict']}" for r in results))
    if args.resume:
        print(
            f"\nresumed: {len(rebuilt)} claim(s) had finished and were not trained again"
            f"{' (' + ', '.join(rebuilt) + ')' if rebuilt else ''}; {len(claims) - len(rebuilt)} trained"
        )
    print(f"\nreport: {report_path}")
    if any(r["verdict"] == "error" for r in results):
        sys.exit(1)  # a sweep ended without a report: scripts and CI see it


if __name__ == "__main__":
    main()
