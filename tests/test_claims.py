"""The claims' verdict logic and reports on hand-made runs; a claim's sweep end to end into its report, and a
reproduction."""

import dataclasses
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from bnexp import records, reproduce
from bnexp.claims import (
    CLAIMS,
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Effect,
    Finding,
    Revision,
    pool,
    t_interval,
)
from bnexp.config import UserError
from bnexp.records import Run
from bnexp.report import headline, report


def run(acc, diverged=False, train_acc=1.0, batch_stats=None, **config):
    config = {"claim": None, "seed": 0, "model.name": "mlp", "norm.name": "bn", **config}
    series = {"test/acc": [[100, acc / 2], [200, acc]]}
    metrics = dict(
        final_test_acc=acc,
        final_train_acc=train_acc,
        diverged=diverged,
        series=series,
        final_test_acc_batch_stats=acc if batch_stats is None else batch_stats,
    )
    return Run(pathlib.Path("."), config, metrics)


# ---- the verdict rule -----------------------------------------------------------------------------
def test_the_interval_is_students_t_over_the_seeds():
    # Reference quantiles from a printed t table: t(0.975, 2) = 4.303, t(0.975, 4) = 2.776.
    mean, low, high = t_interval([1.0, 2.0, 3.0])  # s = 1
    assert mean == 2.0 and low == pytest.approx(2 - 4.303 / 3**0.5, abs=1e-3)
    assert high == pytest.approx(2 + 4.303 / 3**0.5, abs=1e-3)
    mean, low, high = t_interval([0.1, 0.3, 0.2, 0.5, 0.4])  # s = 0.158
    assert mean == pytest.approx(0.3) and high - mean == pytest.approx(2.776 * 0.15811 / 5**0.5, abs=1e-4)
    assert t_interval([5.0, 5.0, 5.0]) == (5.0, 5.0, 5.0)  # no spread: the interval is the point


GAIN = Effect("gain", "arm A minus arm B", smallest=0.05, above=True)
LOSS = Effect("loss", "arm A minus arm B", smallest=0.05, above=False)


def seeds(*values):
    return {str(i): v for i, v in enumerate(values)}


def test_an_effect_is_supported_only_when_its_whole_interval_lies_beyond_the_smallest_effect():
    assert GAIN.judge(seeds(0.10, 0.11, 0.12)).verdict == SUPPORTED
    assert GAIN.judge(seeds(0.00, 0.01, 0.02)).verdict == NOT_SUPPORTED
    # Every seed beyond δ, but the interval reaches below it: three seeds cannot settle it.
    undecided = GAIN.judge(seeds(0.06, 0.10, 0.20))
    assert undecided.verdict == INCONCLUSIVE and "contains +5.0 points" in undecided.reason
    # The same values, for a claim that predicts the effect below δ.
    assert LOSS.judge(seeds(0.00, 0.01, 0.02)).verdict == SUPPORTED
    assert LOSS.judge(seeds(0.10, 0.11, 0.12)).verdict == NOT_SUPPORTED


def test_a_ratio_on_the_log_scale_is_judged_by_its_geometric_mean_and_a_t_interval_of_the_logs():
    ratios = {"0": 0.25, "1": 0.5, "2": 1.0}  # logs ln 2 apart: mean ln 0.5, s = ln 2
    effect = Effect("drift ratio", "BN's ÷ plain's", smallest=1.0, above=False, unit="×", log=True)
    part = effect.judge(ratios)
    half = 4.303 * math.log(2) / 3**0.5  # t(0.975, 2) from a printed table
    assert part.mean == pytest.approx(0.5)
    assert (part.low, part.high) == pytest.approx((0.5 * math.exp(-half), 0.5 * math.exp(half)), rel=1e-3)
    assert part.low > 0 and part.verdict == INCONCLUSIVE  # the interval, 0.15× to 1.6×, holds 1×
    assert effect.judge({"0": 0.2, "1": 0.25, "2": 0.3}).verdict == SUPPORTED
    undefined = effect.judge({"0": 0.2, "1": 0.0, "2": 0.3})
    assert undefined.verdict == INCONCLUSIVE and undefined.reason == "undefined in seed(s) 1"
    assert "log scale" in effect.text()


def test_an_effect_is_inconclusive_with_one_seed_or_an_undefined_one():
    assert GAIN.judge(seeds(0.5)).reason == "fewer than two seeds"
    part = GAIN.judge(seeds(0.5, float("nan"), 0.6))
    assert part.verdict == INCONCLUSIVE and part.reason == "undefined in seed(s) 1"
    assert part.to_dict()["per_seed"] == {"0": 0.5, "1": None, "2": 0.6}  # JSON has no NaN


def test_a_bound_counts_only_where_it_settles_the_side_of_the_smallest_effect():
    # δ = 0.05: a value of at least 0.2 is beyond it, of at least 0.01 could be on either side
    assert GAIN.bounded(0.2, at_least=True) == 0.2 and math.isnan(GAIN.bounded(0.01, at_least=True))
    assert GAIN.bounded(0.01, at_most=True) == 0.01 and math.isnan(GAIN.bounded(0.2, at_most=True))
    assert math.isnan(GAIN.bounded(0.2, at_least=True, at_most=True)) and GAIN.bounded(0.01) == 0.01


def test_a_claim_is_decided_by_its_weakest_part():
    yes, maybe, no = (
        GAIN.judge(seeds(*v), w) for v, w in (((0.1, 0.1), "a"), ((0, 0.1), "b"), ((0, 0), "c"))
    )
    assert pool([yes, yes]) == (SUPPORTED, "every part")
    assert pool([yes, maybe]) == (INCONCLUSIVE, "gain (b)")
    assert pool([maybe, no, yes]) == (NOT_SUPPORTED, "gain (c)")


def test_a_revised_criterion_is_a_new_version_disclosed_newest_first_with_the_verdict_it_replaces():
    claim = dataclasses.replace(CLAIMS["input_norm"], revisions=())  # as at version 2
    three = Revision(
        3, "2026-12-05", "The stability check is now two-sided.", "supported (standard, 2026-12-03)"
    )
    four = Revision(4, "2026-12-06", "A finer grid.", "not supported (standard, 2026-12-05)")
    revised = dataclasses.replace(claim, revisions=(three, four))
    assert (claim.version, revised.version) == (claim.version, 4)
    history = revised.revision
    assert history.index("Criterion version 4 (2026-12-06), replacing version 3") < history.index(
        "Criterion version 3 (2026-12-05), replacing version 2"
    )
    assert "Version 3's verdict: not supported (standard, 2026-12-05)." in history
    assert "Version 2's verdict: supported (standard, 2026-12-03)." in history
    assert history.endswith(claim.revision)  # version 2's disclosure stays, last


def test_a_claim_whose_control_fails_is_inconclusive_whatever_its_other_parts_say():
    trains = Effect(
        "plain network's accuracy", "final test accuracy", 0.8, above=True, unit="%", control=True
    )
    smaller = Effect("drift ratio", "BN's ÷ plain's", 0.5, above=False, unit="×")
    effect = smaller.judge({"0": 0.1, "1": 0.12, "2": 0.11})
    assert effect.verdict == SUPPORTED
    assert pool([trains.judge({"0": 0.95, "1": 0.96, "2": 0.94}), effect]) == (SUPPORTED, "every part")
    failed = trains.judge({"0": 0.3, "1": 0.35, "2": 0.32})  # the plain network never trained
    assert pool([failed, effect]) == (INCONCLUSIVE, "control failed: plain network's accuracy")
    unsure = trains.judge({"0": 0.95, "1": 0.5, "2": 0.9})
    assert pool([unsure, smaller.judge({"0": 2.0, "1": 3.0, "2": 2.5})])[0] == INCONCLUSIVE
    assert "a control" in trains.text() and trains.format(0.8) == "80.0 %"


def test_a_control_of_some_parts_makes_only_those_inconclusive():
    harms = Effect("the noise harms the plain network", "plain − noisy plain", 0.05, True, control=True)
    harms = dataclasses.replace(harms, gates=("noisy BN trains like BN",))
    like = Effect("noisy BN trains like BN", "noisy BN − BN", -0.03, above=True)
    other = Effect("landscape ratio", "BN's ÷ plain's", 1.0, above=False, unit="×")
    held, failed = harms.judge({"0": 0.3, "1": 0.35, "2": 0.3}), harms.judge({"0": 0.0, "1": 0.01, "2": 0.0})
    parts = [like.judge({"0": 0.0, "1": 0.01, "2": -0.01}), other.judge({"0": 0.5, "1": 0.4, "2": 0.45})]
    assert pool([held, *parts]) == (SUPPORTED, "every part")
    assert pool([failed, *parts]) == (
        INCONCLUSIVE,
        "noisy BN trains like BN (control failed: the noise harms the plain network)",
    )
    worse = other.judge({"0": 2.0, "1": 2.5, "2": 3.0})
    assert pool([failed, parts[0], worse]) == (NOT_SUPPORTED, "landscape ratio")  # not gated: it decides
    assert "*noisy BN trains like BN* is inconclusive" in harms.text()


def test_a_control_judged_for_one_setting_gates_only_that_settings_parts():
    trains = Effect("plain network's best accuracy", "best test accuracy", 0.85, above=True, control=True)
    gain = Effect("span gain", "BN's span − plain's", 1.0, above=True, unit="decades")
    parts = [
        trains.judge({"0": 0.5, "1": 0.55, "2": 0.5}, "sigmoid"),  # the plain sigmoid network never trains
        trains.judge({"0": 0.95, "1": 0.96, "2": 0.95}, "relu"),
        gain.judge({"0": 2.0, "1": 2.5, "2": 2.0}, "sigmoid"),
        gain.judge({"0": 0.0, "1": 0.5, "2": 0.0}, "relu"),
    ]
    assert pool(parts) == (NOT_SUPPORTED, "span gain (relu)")
    assert pool(parts[:3]) == (
        INCONCLUSIVE,
        "span gain (sigmoid) (control failed: plain network's best accuracy (sigmoid))",
    )


def test_a_mechanism_part_is_reported_but_does_not_decide_the_verdict():
    gain = Effect("BN against dropout", "BN − dropout", -0.01, above=True)
    noise = Effect("BN's noise", "BN − noise-free BN", 0.005, above=True, decides=False)
    held = gain.judge({"0": 0.0, "1": 0.01, "2": 0.005})
    against = noise.judge({"0": -0.02, "1": -0.03, "2": -0.025})  # the mechanism fails: not supported
    assert against.verdict == NOT_SUPPORTED and pool([held, against]) == (SUPPORTED, "every part")
    assert pool([against]) == (INCONCLUSIVE, "no part could be judged")
    assert "reported, not deciding the verdict" in noise.text() and against.to_dict()["decides"] is False


def test_a_mechanism_whose_control_failed_is_shown_inconclusive():
    noise = Effect("BN's noise", "BN − noise-free BN", 0.005, above=True, decides=False)
    fits = Effect("fits", "loss ratio", 2.0, above=False, log=True, control=True, gates=(noise.name,))
    held = Effect("BN against dropout", "BN − dropout", -0.01, above=True).judge({"0": 0.0, "1": 0.001})
    mechanism = noise.judge({"0": 0.02, "1": 0.03})  # supported, as judged alone
    fit, unfit = (fits.judge({"0": ratio, "1": ratio}) for ratio in (1.5, 3.0))  # below 2, above
    assert Finding([fit, held, mechanism], "").parts[2] is mechanism
    shown = Finding([unfit, held, mechanism], "")
    assert (shown.parts[2].verdict, shown.parts[2].reason) == (INCONCLUSIVE, "control failed: fits")
    assert shown.parts[2].mean == mechanism.mean  # its numbers are still reported
    assert shown.verdict == SUPPORTED  # the mechanism never decided it


def test_the_summary_tables_show_a_supported_claims_effects_not_its_controls():
    control = dict(name="plain network trains", estimate="0.95", control=True)
    effect = dict(name="span gain", estimate="+1.5 decades", control=False)
    result = dict(verdict="supported", decided_by="every part", parts=[control, effect])
    assert headline(result) == "**supported** — span gain: +1.5 decades"


def test_a_failed_run_counts_as_no_classifier():
    failed = Run(pathlib.Path("."), {"seed": 0}, None)
    assert failed.diverged and failed.test_acc == 0.0


# ---- an lr_tolerance sweep, for the reports and refusals below (its verdicts: test_lr_tolerance.py) --
LRS = [0.01, 0.1, 1, 10, 100]


def lr_sweep(bn_good, plain_good, seeds=(0, 1, 2)):
    """BN and the plain MLP, good (acc 0.95) at the given learning rates, else diverged (acc 0.1)."""
    return [
        run(
            0.95 if lr in good else 0.1,
            diverged=lr not in good,
            seed=s,
            **{"norm.name": norm, "optim.lr": lr},
        )
        for s in seeds
        for norm, good in (("bn", bn_good(s)), ("none", plain_good(s)))
        for lr in LRS
    ]


# ---- sweeps that lack what a claim compares --------------------------------------------------------
def without(runs, key, value):
    return [r for r in runs if r[key] != value]


@pytest.mark.parametrize(
    "claim,runs,missing",
    [
        (
            "lr_tolerance",
            without(lr_sweep(lambda s: [0.1, 1], lambda s: [0.1]), "norm.name", "none"),
            "norm.name=none",
        ),
        (
            "lr_tolerance",
            without(lr_sweep(lambda s: [0.1, 1], lambda s: [0.1]), "norm.name", "bn"),
            "norm.name=bn",
        ),
    ],
)
def test_an_analysis_refuses_a_sweep_without_a_comparison_it_makes(claim, runs, missing):
    """Rather than a verdict on a comparison never made (e.g. BN's learning-rate range against nothing)."""
    with pytest.raises(ValueError, match=missing):
        CLAIMS[claim].analyze(runs)


# ---- end to end ----------------------------------------------------------------------------------
def test_a_claim_sweep_reports_at_its_end_and_the_report_is_rebuilt_from_its_run_folders_alone(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnexp",
            "-m",
            "experiment=lr_tolerance",
            "profile=tiny",
            f"hydra.sweep.dir={tmp_path}",
            "seed=0",
            "model=mlp",
            "optim.lr=0.1,10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    finding = json.loads((tmp_path / "finding.json").read_text())  # written by the end-of-sweep callback
    assert (
        finding["claim"] == "lr_tolerance"
        and finding["setup"]["runs"] == 4
        and finding["setup"]["failed runs"] == 0
    )
    assert finding["provenance"]["runs"][0]["device"] == "cpu"
    assert (tmp_path / "lr_tolerance.png").stat().st_size > 10_000
    text = (tmp_path / "report.md").read_text()
    assert f"**Verdict: {finding['verdict']}**" in text and CLAIMS["lr_tolerance"].criterion in text
    assert list((tmp_path / "report").glob("events.out.tfevents.*"))  # the figure, in TensorBoard too
    assert f"lr_tolerance: {finding['verdict']}." in out.stdout + out.stderr
    (tmp_path / "finding.json").unlink()
    rebuilt = report(tmp_path)
    assert {k: v for k, v in rebuilt.items() if k != "provenance"} == {
        k: v for k, v in finding.items() if k != "provenance"
    }

    bn_run = next(tmp_path.glob("*norm=bn*/"))
    shutil.copytree(bn_run, tmp_path / "again")  # the same run twice: one would hide the other
    with pytest.raises(
        UserError, match=f"again and {bn_run.name} in {tmp_path} are runs with the same settings"
    ):
        report(tmp_path)
    shutil.rmtree(tmp_path / "again")
    damaged = next(tmp_path.glob("*norm=none*lr=0.1*/metrics.json"))
    damaged.write_text('{"config": ')  # cut short
    assert report(tmp_path)["setup"]["failed runs"] == 1
    for folder in tmp_path.glob("*norm=none*/"):
        shutil.rmtree(folder)  # now no plain network to compare BN with
    (tmp_path / "finding.json").unlink()
    with pytest.raises(UserError, match="The lr_tolerance analysis could not use the runs"):
        report(tmp_path)
    assert not (tmp_path / "finding.json").exists()


def test_reports_of_lr_tolerance_and_regularization(reported, tmp_path):
    assert (
        reported("lr_tolerance", lr_sweep(lambda s: [0.1, 1, 10, 100], lambda s: [0.1]))["verdict"]
        == SUPPORTED
    )


# ---- a reproduction --------------------------------------------------------------------------------
def test_reproduce_writes_one_report_and_refreshes_the_lab_notebook(tmp_path, monkeypatch):
    earlier = "| [BN in RNNs](experiments/rnn/README.md) | **supported** | data x | 2026-12-01, standard |"
    (tmp_path / "README.md").write_text(
        f"intro\n<!-- findings:start -->\nold\n{earlier}\n<!-- findings:end -->\nrest\n"
    )
    reproduce.main(
        [
            "--claims",
            "regularization",
            "--jobs",
            "1",
            "--out",
            str(tmp_path / "repro"),
            "--update-experiments",
            str(tmp_path / "experiments"),
            "profile=tiny",
            "seed=0",
            "data.subset=120",
        ]
    )
    report_md = (tmp_path / "repro" / "REPORT.md").read_text()
    finding = json.loads((tmp_path / "repro" / "regularization" / "finding.json").read_text())
    assert f"**{finding['verdict']}**" in report_md and "`bnexp -m experiment=regularization" in report_md
    assert "hydra/launcher=vectorized" in report_md  # seeds and the like trained together
    assert f"{reproduce.PROFILES['quick']}; bnexp 0.1.0" in report_md.splitlines()[2]  # what produced it
    notebook = tmp_path / "experiments" / "regularization"
    assert (notebook / "regularization.png").exists()
    assert CLAIMS["regularization"].criterion in (notebook / "README.md").read_text()
    assert not (tmp_path / "experiments" / "REPORT.md").exists()  # a partial reproduction: the others' stay
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("rest\n") and "\nold\n" not in readme
    assert "experiments/regularization/README.md" in readme
    # The claim it did not reproduce keeps its row, which says where it comes from; in the claims' order.
    assert earlier in readme and readme.index("regularization/README.md") < readme.index(earlier)
    # The table shows the deciding effect with its interval, stamped with profile, date and the runs' code.
    assert any(f"{p['name']}: {p['estimate']}" in readme for p in finding["parts"])
    runs = records.describe(finding["provenance"]["runs"][0])
    assert f"quick profile ({reproduce.PROFILES['quick']}); runs: {runs}" in readme


def test_a_resumed_reproduction_trains_only_the_claims_that_had_not_finished(tmp_path, capsys):
    out = tmp_path / "repro"
    reproduce.main(
        ["--claims", "ics,ics_gradient", "--jobs", "1", "--out", str(out), "profile=tiny", "seed=0"]
    )
    finished = {p: p.stat().st_mtime_ns for p in (out / "ics").glob("*/metrics.json")}
    assert finished
    (out / "ics_gradient" / "finding.json").unlink()  # as if killed before its sweep ended
    (out / "REPORT.md").unlink()
    capsys.readouterr()
    reproduce.main(["--resume", str(out)])  # the profile, claims and overrides are the folder's
    printed = capsys.readouterr().out
    assert "resumed: 1 claim(s) had finished and were not trained again (ics); 1 trained" in printed
    assert {p: p.stat().st_mtime_ns for p in (out / "ics").glob("*/metrics.json")} == finished
    assert (out / "ics_gradient" / "finding.json").exists()
    report_md = (out / "REPORT.md").read_text()
    assert "(#ics)" in report_md and "(#ics_gradient)" in report_md
    assert "resumed: 1 of 2 claims' sweeps had run before and were re-analysed" in report_md
    with pytest.raises(SystemExit):  # another profile would mix two reproductions in one report
        reproduce.main(["--resume", str(out), "--profile", "standard"])
    assert "continues that reproduction with its own profile" in capsys.readouterr().err


def test_each_profile_runs_each_claims_config_of_that_profile():
    command = reproduce.sweep_command(CLAIMS["ics"], "paper", pathlib.Path("out"), 2, ["device=cuda"])
    assert command[:3] == ["bnexp", "-m", "experiment=paper/ics"] and command[-1] == "device=cuda"
    assert reproduce.sweep_command(CLAIMS["ics"], "standard", pathlib.Path("out"), 2, [])[2] == (
        "experiment=standard/ics"
    )
    assert reproduce.sweep_command(CLAIMS["ics"], "quick", pathlib.Path("out"), 2, [])[2] == "experiment=ics"


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_each_claims_paper_config_trains_a_step_on_files_in_the_real_formats(claim, tmp_path, make_cfg):
    # The papers' datasets are not here: tiny MNIST and CIFAR-10 files in their real formats stand in, so that
    # the paper config's network, data path and measurements run for real, for one step.
    from bnexp.bench import write_mnist_files
    from bnexp.engine import train
    from test_data import make_cifar_files

    # regularization keeps a subset of 5,000 training examples; ics observes a probe batch of 500 test ones
    write_mnist_files(tmp_path, n_train=5000, n_test=500)
    make_cifar_files(tmp_path, per_batch=60, n_test=20)
    cfg = make_cfg(
        f"experiment=paper/{claim}",
        f"data.root={tmp_path}",
        "train.steps=1",
        "train.epochs=null",
        "device=cpu",
    )
    metrics = train(cfg, str(tmp_path / "run"))
    assert metrics["steps"] == 1 and (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize(
    "args,explained",
    [
        (["--claims", "nope"], "unknown claim(s) nope"),
        (["--claims", ","], "--claims names no claim"),
        (["--jobs", "0"], "--jobs 0"),
        (["--out", "earlier"], "is not an empty folder"),
        (["--out", "earlier/REPORT.md"], "is not an empty folder"),
        (["--resume", "earlier"], "no reproduction.json there"),
    ],
)
def test_reproduce_refuses_bad_arguments_before_any_sweep(tmp_path, monkeypatch, capsys, args, explained):
    """Nothing is trained or written, and an earlier reproduction's folder is left as it was."""
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "REPORT.md").write_text("an earlier reproduction")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(reproduce, "run_claim", lambda *a: pytest.fail("a sweep ran"))
    with pytest.raises(SystemExit) as error:
        reproduce.main(["--out", "new", *args])
    assert error.value.code == 2 and explained in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["earlier"]
    assert [p.name for p in (tmp_path / "earlier").iterdir()] == ["REPORT.md"]
    assert (tmp_path / "earlier" / "REPORT.md").read_text() == "an earlier reproduction"


def test_reproduce_exits_non_zero_when_a_sweep_ends_without_a_report(tmp_path, capfd):
    with pytest.raises(SystemExit) as error:
        reproduce.main(
            ["--claims", "affine", "--jobs", "1", "--out", str(tmp_path / "repro"), "seed=0", "optim.lr=-1"]
        )
    assert error.value.code == 1
    assert "| **error** |" in (tmp_path / "repro" / "REPORT.md").read_text()
    # the sweep itself said why: every run refused its learning rate, in one paragraph each
    log = capfd.readouterr()
    log = log.out + log.err
    assert (
        "8 of 8 runs failed" in log
        and "no report for this sweep: Every run" in log
        and "Traceback" not in log
    )


# ---- has every run's training flattened? -------------------------------------------------------------
def curve_run(accs, diverged=False, name="norm=bn,seed=0"):
    r = run(accs[-1], diverged=diverged)
    r.metrics["series"] = {"test/acc": [[100 * (i + 1), a] for i, a in enumerate(accs)]}
    return Run(pathlib.Path(name), r.config, r.metrics)


def test_a_run_has_flattened_when_its_last_fifth_adds_less_than_a_point():
    from bnexp.report import flatness, flattened

    plateau = curve_run([0.5, 0.7, 0.8, 0.85, 0.9, 0.9, 0.91, 0.905, 0.91, 0.908])
    rising = curve_run([0.1 * i for i in range(1, 11)], name="norm=none,seed=1")
    assert flattened(plateau) is True and flattened(rising) is False
    assert flattened(curve_run([0.9] * 10, diverged=True)) is None  # nothing to tell
    assert flattened(curve_run([0.5, 0.9])) is None  # too few evaluations to tell
    summary = flatness([plateau, rising])
    assert summary.startswith("1 of 2 runs") and summary.endswith("still moving: norm=none (1 seed)")


def test_the_citation_file_cites_every_paper_whose_claim_the_suite_tests():
    import re

    import yaml

    tomllib = pytest.importorskip("tomllib")  # Python 3.11 on
    root = pathlib.Path(__file__).resolve().parent.parent
    citation = yaml.safe_load((root / "CITATION.cff").read_text())
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert citation["version"] == project["version"] and citation["license"] == project["license"]["text"]
    cited = {(ref["authors"][0]["family-names"], ref["year"]) for ref in citation["references"]}
    for claim in CLAIMS.values():
        for author, year in re.findall(
            r"\b([A-Z][A-Za-z]+)(?: et al\.| & [A-Z][a-z]+) \(?(\d{4})", claim.hypothesis
        ):
            assert (author, int(year)) in cited, f"{claim.name} cites {author} {year}"
