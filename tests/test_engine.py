"""The training engine: what a run records, divergence as a result, repeatability."""

import copy
import json
import platform
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bnexp import records, runtime
from bnexp.config import UserError
from bnexp.data import load_data
from bnexp.engine import train
from bnexp.models import build_model
from bnexp.monitor import percentiles
from bnexp.step import initialized_model, step_module

TINY = ["profile=tiny", "optim.lr=0.5"]  # 40 steps: statistics every 10, evaluations and histograms every 20


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_a_run_records_metrics_json_and_tensorboard_curves(make_cfg, tmp_path):
    metrics = train(make_cfg(*TINY), str(tmp_path))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final_test_acc"] == metrics["final_test_acc"] > 0.5  # 10 classes: chance is 0.1
    assert saved["steps"] == 40 and saved["diverged"] is False and saved["diverged_step"] is None
    assert saved["config"]["norm.name"] == "bn" and saved["config"]["optim.lr"] == 0.5
    assert [step for step, _ in saved["series"]["test/acc"]] == [20, 40]
    assert saved["best_test_acc"] == max(acc for _, acc in saved["series"]["test/acc"])
    # Every TensorBoard scalar is in metrics.json too, for analyses that do not parse event files.
    for tag in ("act/layer2/p50", "grad/layer1/norm", "test/loss"):
        logged = [[e.step, pytest.approx(e.value, rel=1e-6)] for e in events(tmp_path).Scalars(tag)]
        assert saved["series"][tag] == logged

    ev = events(tmp_path)
    scalars = set(ev.Tags()["scalars"])
    for tag in ["train/loss", "train/acc", "test/loss", "test/acc", "lr", "batch/loss"]:
        assert tag in scalars
    for layer in ["layer1", "layer2", "layer3"]:
        for stat in ["p15", "p50", "p85", "mean", "std", "linear_frac", "unit0/p50"]:
            assert [e.step for e in ev.Scalars(f"act/{layer}/{stat}")] == [10, 20, 30, 40]
        assert f"grad/{layer}/norm" in scalars
        assert [e.step for e in ev.Histograms(f"act/{layer}")] == [1, 20, 40]  # the first step's too
    assert ev.Scalars("test/acc")[-1].value == pytest.approx(metrics["final_test_acc"])
    assert [e.value for e in ev.Scalars("lr")] == pytest.approx([0.5] * 4)


def test_a_run_shorter_than_the_histogram_interval_has_its_first_and_last_steps_histograms(
    make_cfg, tmp_path
):
    train(make_cfg(*TINY, "log.hist_every=500", "train.steps=30"), str(tmp_path))
    assert [e.step for e in events(tmp_path).Histograms("act/layer1")] == [1, 30]


def test_percentiles_in_tensorboard_are_ordered_and_bn_keeps_units_standardized(make_cfg, tmp_path):
    train(make_cfg(*TINY, "optim.lr=0.01"), str(tmp_path))
    ev = events(tmp_path)
    for layer in ["layer1", "layer3"]:
        p15, p50, p85 = (ev.Scalars(f"act/{layer}/{p}")[-1].value for p in ("p15", "p50", "p85"))
        assert p15 < p50 < p85
        # BN's output in training mode has mean 0 and std 1 per unit (γ, β barely move at this learning rate).
        assert abs(ev.Scalars(f"act/{layer}/mean")[-1].value) < 0.1
        assert abs(ev.Scalars(f"act/{layer}/std")[-1].value - 1) < 0.1


@pytest.mark.parametrize("n", [1, 2, 7, 100, 6000])
def test_percentiles_are_the_nearest_rank_order_statistics(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)).view(-1, 1)
    ranked = x.flatten().sort().values
    expected = [ranked[round(p / 100 * (n - 1))] for p in (15, 50, 85)]
    assert percentiles(x).tolist() == [v.item() for v in expected]


def test_a_fixed_probe_batch_shows_the_eval_mode_network_on_held_out_examples(make_cfg, tmp_path):
    """log.probe_batch: the percentiles of the first N test examples through the network in eval mode, taken
    before the step's update: at step 1, the initial network's."""
    cfg = make_cfg(*TINY, "log.probe_batch=100", "log.stats_every=1", "train.steps=1", "seed=3")
    saved = json.loads((train(cfg, str(tmp_path)), tmp_path / "metrics.json")[1].read_text())
    data = load_data(cfg.data, torch.device("cpu"))
    model = initialized_model(cfg, data, torch.device("cpu")).eval()
    x = data.prepare(data.test_x[:100].flatten(1))
    with torch.no_grad():  # eval-mode BN at initialization: running mean 0, variance 1, γ = 1, β = 0
        layer1 = model.body.layer1
        pre = layer1.linear(x) / (1 + cfg.norm.eps) ** 0.5
    expected = percentiles(pre).tolist()
    logged = [saved["series"][f"act/layer1/{p}"][0][1] for p in ("p15", "p50", "p85")]
    assert logged == pytest.approx(expected, rel=1e-5)


def test_a_probe_batch_larger_than_the_test_split_is_a_users_mistake(make_cfg, tmp_path):
    with pytest.raises(UserError, match="log.probe_batch=100000 asks for more test examples"):
        train(make_cfg(*TINY, "log.probe_batch=100000"), str(tmp_path))


def test_hparams_go_into_the_runs_own_event_file(make_cfg, tmp_path):
    train(make_cfg(*TINY), str(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no stray sub-run folder
    ev = events(tmp_path)
    plugins = ev.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(
        plugins
    )
    assert "hparam/final_test_acc" in ev.Tags()["scalars"]


def test_a_diverging_run_is_a_result_not_a_crash(make_cfg, tmp_path):
    overrides = [
        "norm=none",
        "model.activation=relu",
        "optim.lr=1e3",
        "log.stats_every=5",
        "log.hist_every=1",
    ]
    metrics = train(make_cfg(*TINY, *overrides), str(tmp_path))
    # flagged on the device at the step it diverged, seen and stopped at the next logging step
    assert (
        metrics["diverged"]
        and 1 <= metrics["diverged_step"] < metrics["steps"] == 5 < metrics["steps_planned"]
    )
    saved = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: NaN becomes null
    assert saved["diverged"] and saved["final_test_loss"] is None
    # histograms of the finite values, while there are any: the first step's, at least
    assert events(tmp_path).Histograms("act/layer1")[0].step == 1


def test_a_seed_makes_a_run_repeatable_bit_for_bit(make_cfg, tmp_path):
    cfg = make_cfg(*TINY, "model.dropout=0.1", "seed=7")
    a, b = train(cfg, str(tmp_path / "a")), train(cfg, str(tmp_path / "b"))
    ha = json.loads((tmp_path / "a" / "metrics.json").read_text())["series"]
    hb = json.loads((tmp_path / "b" / "metrics.json").read_text())["series"]
    assert ha == hb and a["final_test_acc"] == b["final_test_acc"]
    train(make_cfg(*TINY, "model.dropout=0.1", "seed=8"), str(tmp_path / "c"))
    assert json.loads((tmp_path / "c" / "metrics.json").read_text())["series"] != ha


def test_epochs_replace_steps(make_cfg, tmp_path):
    # digits: 1347 training images, batch 60 -> 22 full batches per epoch.
    metrics = train(make_cfg(*TINY, "train.epochs=1"), str(tmp_path))
    assert metrics["steps"] == 22


def test_evals_space_that_many_evaluations_over_a_run_of_any_length(make_cfg, tmp_path):
    # digits, 1 epoch: 22 steps at batch 60, 84 at batch 16; 4 evaluations: every 22 // 4 = 5 steps (and
    # the last), every 84 // 4 = 21.
    for batch_size, steps in ((60, [5, 10, 15, 20, 22]), (16, [21, 42, 63, 84])):
        cfg = make_cfg(*TINY, "train.epochs=1", "train.evals=4", f"data.batch_size={batch_size}")
        train(cfg, str(tmp_path / str(batch_size)))
        series = json.loads((tmp_path / str(batch_size) / "metrics.json").read_text())["series"]
        assert [s for s, _ in series["test/acc"]] == steps


def test_a_models_own_step_budget_replaces_steps_for_that_model_only(make_cfg, tmp_path):
    short = ["device=cpu", "train.steps=5", "train.eval_every=5", "+train.steps_by_model.cnn=3"]
    assert train(make_cfg(*short, "model=cnn"), str(tmp_path / "cnn"))["steps"] == 3
    assert train(make_cfg(*short), str(tmp_path / "mlp"))["steps"] == 5  # a model not named: train.steps


def test_bn_runs_also_record_test_accuracy_with_batch_statistics(make_cfg, tmp_path, monkeypatch):
    import bnexp.engine as runner

    calls, evaluate = [], runner.evaluate

    def recorded(*args, **kwargs):
        calls.append((kwargs, evaluate(*args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(runner, "evaluate", recorded)
    bn = train(make_cfg(*TINY), str(tmp_path / "bn"))
    with_batch_statistics = [result for kw, result in calls if kw.get("batch_statistics")]
    assert len(with_batch_statistics) == 1  # once, at the end: the test split at the training batch size
    assert bn["final_test_acc_batch_stats"] == with_batch_statistics[0][1] > 0.5  # 10 classes: chance is 0.1
    assert "final_test_acc_batch_stats" not in train(make_cfg(*TINY, "norm=gn"), str(tmp_path / "gn"))


def test_testing_with_batch_statistics_normalizes_each_batch_by_its_own(make_cfg):
    from bnexp.data import BatchOrder, load_data
    from bnexp.engine import evaluate
    from bnexp.norm import BatchNorm
    from bnexp.step import initialized_model

    cfg = make_cfg("device=cpu")
    data = load_data(cfg.data)
    model = initialized_model(cfg, data, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    order = BatchOrder(data, 60, [0])
    for _ in range(30):
        x, y = data.batch(order.next()[0])
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BatchNorm):
                m.running_mean.add_(5.0)  # running statistics far from any batch's
    state = {k: v.clone() for k, v in model.state_dict().items()}

    _, acc = evaluate(model, data, "test", batch_size=64, batch_statistics=True)
    reference, correct, n = copy.deepcopy(model).train(), 0, 0  # train mode: BN takes each batch's statistics
    with torch.no_grad():
        for x, y in data.eval_batches("test", 64):  # 450 examples: 7 batches of 64 and a last one of 2
            correct, n = correct + int((reference(x).argmax(1) == y).sum()), n + len(y)
    assert (
        acc == correct / n > evaluate(model, data, "test")[1] + 0.2
    )  # far better than with the running ones
    for key, value in model.state_dict().items():  # the model itself is untouched
        assert torch.equal(value, state[key]), key


def test_lr_batch_size_scales_the_learning_rate_linearly(make_cfg, tmp_path):
    train(make_cfg(*TINY, "optim.lr=0.1", "optim.lr_batch_size=30", "data.batch_size=60"), str(tmp_path))
    ev = events(tmp_path)
    assert ev.Scalars("lr")[0].value == pytest.approx(0.2)


def test_a_batch_of_one_is_refused_only_where_a_norm_needs_batch_statistics(make_cfg, tmp_path):
    from bnexp.config import UserError

    for norm in ("bn", "torch_bn", "noisy_bn"):
        with pytest.raises(UserError, match="set data.batch_size to 2 or more"):
            train(make_cfg(*TINY, f"norm={norm}", "data.batch_size=1"), str(tmp_path / norm))
    assert train(make_cfg(*TINY, "norm=gn", "data.batch_size=1"), str(tmp_path / "gn"))["steps"] == 40


@pytest.mark.skipif(
    not hasattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision"),
    reason="torch < 2.9 has only the older allow_tf32 switch",
)
def test_a_cuda_run_asks_cudnn_for_full_float32_precision_and_deterministic_algorithms(monkeypatch):
    from bnexp.runtime import resolve_device

    cudnn = torch.backends.cudnn
    before = (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device's view of a GPU machine
    try:
        cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark = (
            "tf32",
            False,
            True,
        )  # cuDNN's own choices
        assert resolve_device("auto") == torch.device("cuda")
        assert (cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark) == ("ieee", True, False)
    finally:
        cudnn.conv.fp32_precision, cudnn.deterministic, cudnn.benchmark = before


def test_bad_step_counts_are_a_users_mistake(make_cfg, tmp_path):
    from bnexp.config import UserError

    with pytest.raises(UserError, match="at least 1"):
        train(make_cfg(*TINY, "train.eval_every=0"), str(tmp_path))


def test_channels_last_trains_the_cnn_as_the_default_layout_does(make_cfg, same_series, tmp_path):
    cnn = [*TINY, "model=cnn", "model.channels=[4,8]", "model.width=16", "train.steps=20", "optim.lr=0.1"]
    train(make_cfg(*cnn), str(tmp_path / "default"))
    train(make_cfg(*cnn, "train.channels_last=true"), str(tmp_path / "channels_last"))
    same_series(tmp_path / "default", tmp_path / "channels_last")
    # ... and the flag does take effect: NHWC weights, and batches made NHWC
    cfg = make_cfg(*cnn, "train.channels_last=true")
    model = build_model(cfg, (1, 8, 8), 10)
    step_model, memory_format = step_module(cfg, model, (1, 8, 8))
    assert step_model is model and memory_format == torch.channels_last
    assert model.body.layer2.linear.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_without_images_is_a_users_mistake(make_cfg, tmp_path):
    from bnexp.config import UserError

    with pytest.raises(UserError, match="model=cnn and a dataset of images"):
        train(make_cfg(*TINY, "train.channels_last=true"), str(tmp_path))
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.slow  # compiling takes long and needs a C++ compiler
def test_a_compiled_run_trains_as_the_eager_one(make_cfg, same_series, tmp_path):
    train(make_cfg(*TINY, "train.steps=20"), str(tmp_path / "eager"))
    train(make_cfg(*TINY, "train.steps=20", "train.compile=true"), str(tmp_path / "compiled"))
    same_series(tmp_path / "eager", tmp_path / "compiled")


@pytest.mark.parametrize(
    "model", [[], ["model=cnn", "model.channels=[4,8]", "model.width=16", "optim.lr=0.1"]], ids=["mlp", "cnn"]
)
def test_the_textbook_kernel_trains_as_the_fast_one(make_cfg, same_series, tmp_path, model):
    """norm.fast=false trains through bnexp.norm's textbook function: the same run, up to round-off."""
    train(make_cfg(*TINY, *model), str(tmp_path / "fast"))
    train(make_cfg(*TINY, *model, "norm.fast=false"), str(tmp_path / "textbook"))
    same_series(tmp_path / "fast", tmp_path / "textbook")
    textbook = json.loads((tmp_path / "textbook" / records.METRICS_FILE).read_text())
    assert textbook["config"]["norm.fast"] is False


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)
def test_a_run_keeps_the_memory_it_frees_where_glibc_lets_it():
    assert runtime.keep_freed_memory()


def test_every_run_lays_out_the_bn_papers_percentile_panels_and_loss_with_accuracy(make_cfg, tmp_path):
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    train(make_cfg(*TINY, "measure.sharpness_every=20", "measure.sharpness_batch=50"), str(tmp_path))
    (event,) = events(tmp_path).Tensors(metadata.CONFIG_SUMMARY_TAG)
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for category in layout.category for c in category.chart}
    for layer in ("layer1", "layer2", "layer3"):
        assert charts[layer] == [f"act/{layer}/p15", f"act/{layer}/p50", f"act/{layer}/p85"]
    assert charts["loss"][:2] == ["train/loss", "test/loss"]
    assert charts["λ_max and the stability limit 2/η"] == ["sharpness/lambda_max", "sharpness/limit"]
    logged = set(events(tmp_path).Tags()["scalars"])
    assert {tag for tags in charts.values() for tag in tags} - logged == {"test/acc_precise_bn"}
