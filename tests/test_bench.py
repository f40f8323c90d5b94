"""The benchmark code runs and reports what it promises; no timing is asserted here (a shared CI
machine decides nothing about speed). `python -m bnexp.bench` measures; these tests only smoke it."""

import json
import math

import pytest
import torch

from bnexp import bench


def test_interleaved_alternates_blocks_and_reports_one_time_per_round():
    blocks = []
    times = bench.interleaved(
        {"a": lambda: None, "b": lambda: None},
        rounds=4,
        block_s=0.0005,
        before_block={"a": lambda: blocks.append("a"), "b": lambda: blocks.append("b")},
    )
    # calibration (a, b), then one block of each per round, the order flipping every round
    assert blocks == ["a", "b"] + ["a", "b", "b", "a"] * 2
    assert set(times) == {"a", "b"} and all(len(t) == 4 for t in times.values())
    assert bench.median_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_interleaved_times_a_call_not_a_block():
    """A call doing four times the work takes about four times as long (CPU time: another job on the core does
    not count), however many calls each block was calibrated to."""

    def work(n):
        return sum(range(n))

    times = bench.interleaved(
        {"once": lambda: work(20_000), "four": lambda: work(80_000)}, rounds=5, block_s=0.004
    )
    assert 2 < bench.median_ratio(times["four"], times["once"]) < 8


def test_targets_are_judged_only_in_a_full_run():
    res = bench.Results()
    assert res.add("x.ratio", 1.3, "x", at_most=1.2).ok is False
    assert res.add("x.speedup", 7.0, "x", at_least=5).ok is True
    assert res.add("x.info", 1.0).ok is None
    quick = bench.Results(judge=False)
    row = quick.add("x.ratio", 1.3, "x", at_most=1.2)
    assert row.ok is None and row.target == "<= 1.2"
    assert "MISSED" in bench.format_table(res.rows) and "MISSED" not in bench.format_table(quick.rows)


def test_quick_run_prints_the_table_and_writes_flat_json(tmp_path, capsys):
    out = tmp_path / "figures.json"
    bench.main(["--quick", "--only", "norm,step,data,logging,vectorized,scaling", "--out", str(out)])

    figures = json.loads(out.read_text())
    # Flat: metric name -> number or string, machine info included.
    assert all(isinstance(v, (int, float, str)) for v in figures.values())
    for key in ("machine.cpu", "machine.torch", "machine.logical_cpus", "machine.torch_threads"):
        assert key in figures
    assert figures["machine.torch_threads"] == 1
    expected = [
        "norm.8x6.fast_ratio",
        "norm.4x6x3x3.textbook_ratio",
        "norm.8x6.empty_function_ratio",
        "step.mlp.ratio",
        "step.cnn.ratio",
        "step.mlp.textbook_ratio",
        "data.batch.speedup",
        "logging.overhead",
        "vectorized.mlp.k2.speedup",
        "scaling.steps.per_step_ms",
        "scaling.mlp.norm.bn_vs_torch_bn",
        "scaling.cnn.channels_last_speedup",
        "profile.mlp.forward_backward_ms",
        "profile.cnn.our_batchnorm",
    ]
    for key in expected:
        assert isinstance(figures[key], float) and math.isfinite(figures[key]), key
    assert figures["norm.8x6.torch_us"] > 0 and figures["data.batch.ours_us"] > 0
    assert 0 < figures["profile.cnn.our_batchnorm"] < 1  # our BatchNorm's kernel, found in the profile
    assert figures["targets.missed"] == ""  # --quick judges nothing: its sizes say nothing about the targets

    printed = capsys.readouterr().out
    for section in ("[norm]", "[step]", "[data]", "[logging]", "[vectorized]", "[scaling]"):
        assert section in printed
    assert "norm.8x6.fast_ratio" in printed and "step.mlp.ratio" in printed and str(out) in printed


@pytest.mark.slow
def test_quick_startup_section_times_a_real_bnexp_process(tmp_path):
    figures = bench.run(["startup"], quick=True, echo=lambda text: None)
    assert figures["startup.default_run_cpu_s"] >= figures["startup.before_first_step_s"] > 0
    assert 0 < figures["startup.training_share"] < 1
    assert figures["startup.loads_torchvision"] == 0  # the default run never imports torchvision


@pytest.mark.parametrize(
    "args,explained",
    [
        (["--only", "norm,speed"], "section(s) speed unknown"),
        (["--out", "no/such/folder/bench.json"], "cannot write a file there"),
        (["--out", "."], "cannot write a file there"),
    ],
)
def test_bad_arguments_are_refused_before_any_measuring(capsys, monkeypatch, args, explained):
    monkeypatch.setattr(bench, "run", lambda *a, **k: pytest.fail("measured before checking its arguments"))
    with pytest.raises(SystemExit) as error:
        bench.main(["--quick", *args])
    assert error.value.code == 2
    assert explained in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "gpu"])
def test_a_gpu_device_without_a_gpu_is_refused(capsys, device):
    with pytest.raises(SystemExit) as error:
        bench.main(["--device", device, "--quick"])
    assert error.value.code == 2
    assert f"--device {device}: no such GPU here" in capsys.readouterr().err
