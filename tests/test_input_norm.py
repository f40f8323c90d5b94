"""The input_norm claim: the Hessian computations on cases with known answers, the run measures, the verdict
logic on hand-made runs."""

import json
import pathlib

import pytest
import torch
import torch.nn.functional as F

from bnexp.claims import CLAIMS, INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED
from bnexp.claims import input_norm as claim
from bnexp.engine import train
from bnexp.records import Run, flat_config


# ---- curvature ----------------------------------------------------------------------------------------
def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    eig = torch.tensor([1e4, 30.0, 5.0, 1.0, 0.1, 0.0], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T  # ½θᵀAθ has Hessian A everywhere

    def loss(theta):
        return 0.5 * theta @ a @ theta

    theta = torch.randn(6, generator=g, dtype=torch.float64)
    assert claim.top_eigenvalue(loss, theta) == pytest.approx(1e4, rel=1e-8)
    close = torch.diag(torch.tensor([2.0, 1.9, 1.0], dtype=torch.float64))  # a slow case: ratio 0.95
    assert claim.top_eigenvalue(
        lambda t: 0.5 * t @ close @ t, torch.zeros(3, dtype=torch.float64)
    ) == pytest.approx(2.0, rel=1e-6)


def test_minimize_finds_the_minimum_of_an_ill_conditioned_quadratic():
    a = torch.diag(torch.tensor([1e4, 1.0], dtype=torch.float64))
    b = torch.tensor([3.0, -2.0], dtype=torch.float64)
    theta, value = claim.minimize(lambda t: 0.5 * t @ a @ t - b @ t, torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(theta, torch.linalg.solve(a, b))
    assert value == pytest.approx(-0.5 * float(b @ torch.linalg.solve(a, b)))


def linear_problem(normalize: bool, seed: int = 0):
    """The claim's linear classifier on the synthetic data, as a flat loss in float64."""
    from bnexp.config import DataConfig
    from bnexp.data import load_data

    data = load_data(DataConfig(name="synthetic", normalize=normalize))
    x, y = data.prepare(data.train_x).double(), data.train_y
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2, 2)).double()
    return x, y, *claim.flat_loss(model, x, y)


@pytest.mark.parametrize("normalize", [False, True])
def test_top_eigenvalue_of_a_linear_classifier_matches_its_explicit_hessian(normalize):
    x, y, loss, theta = linear_problem(normalize)
    explicit = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, theta))[-1]
    assert claim.top_eigenvalue(loss, theta) == pytest.approx(float(explicit), rel=1e-7)
    # At zero weights every p is 1/2: the Hessian is E[(diag(p) − ppᵀ) ⊗ x̃x̃ᵀ] with x̃ = (x, 1), and
    # diag(p) − ppᵀ has eigenvalue 1/2, so λ_max = λ_max(E[x̃x̃ᵀ]) / 2, in closed form.
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    closed = torch.linalg.eigvalsh(xt.T @ xt / len(x))[-1] / 2
    assert claim.top_eigenvalue(loss, torch.zeros_like(theta)) == pytest.approx(float(closed), rel=1e-7)


def test_raw_features_inflate_the_curvature_by_about_their_squared_scale():
    lam = {}
    for normalize in (False, True):
        _, _, loss, theta = linear_problem(normalize)
        lam[normalize] = claim.top_eigenvalue(loss, torch.zeros_like(theta))
    assert 1e3 < lam[False] / lam[True] < 1e5  # the feature of scale 100: ~100² larger


def test_the_analysis_rebuilds_each_runs_starting_point_exactly_as_training_does(make_cfg, tmp_path):
    cfg = make_cfg("experiment=input_norm", "train.steps=2", "seed=3", "optim.lr=0.0001", "device=cpu")
    metrics = train(cfg, str(tmp_path))
    run = Run(tmp_path, metrics_config(cfg), json.loads((tmp_path / "metrics.json").read_text()))
    from bnexp.data import load_data
    from bnexp.step import initialized_model

    rebuilt = claim.nested_config(run.config)  # as the analysis's curvature measurement rebuilds it
    data = load_data(rebuilt.data)
    model = initialized_model(rebuilt, data, torch.device("cpu"))
    start = F.cross_entropy(model(data.prepare(data.train_x)), data.train_y).item()
    assert start == pytest.approx(claim.losses(run)[0], rel=1e-6)  # the run's loss before its first update
    assert metrics["steps"] == 2 and len(claim.losses(run)) == 3


def test_a_run_recorded_before_a_setting_existed_is_rebuilt_with_its_default(make_cfg):
    flat = metrics_config(make_cfg("experiment=input_norm"))
    del flat["norm.fast"]  # recorded by a bnexp that had no such key
    rebuilt = claim.nested_config(flat)
    assert rebuilt.norm.fast is False and rebuilt.model.depth == 0  # the textbook kernel, for torch.func


def metrics_config(cfg) -> dict:
    return {**flat_config(cfg), "claim": "input_norm"}


# ---- what a run did ---------------------------------------------------------------------------------------
def fake_run(config: dict, values: list, diverged: bool = False) -> Run:
    """A finished run whose full-batch loss after 0, 1, ... updates was `values`."""
    steps = len(values) - 1
    series = {
        "batch/loss": [[t + 1, v] for t, v in enumerate(values[:-1])],
        "train/loss": [[steps, values[-1]]],
    }
    return Run(
        pathlib.Path("."),
        config,
        dict(series=series, steps=steps, steps_planned=steps, diverged=diverged, final_test_acc=0.9),
    )


def test_stability_and_steps_to_target_read_the_loss_curve():
    ok = fake_run({}, [1.0, 0.5, 0.3, 0.2, 0.2])
    assert claim.stable(ok) and claim.steps_to(ok, 0.3) == 2 and claim.steps_to(ok, 0.1) is None
    bumpy = fake_run({}, [1.0, 0.5, 0.6, 0.2, 0.2])
    assert not claim.stable(bumpy) and claim.steps_to(bumpy, 0.3) == 3
    # the criterion's "reaches": the first time, even if the loss leaves the target again (as an unstable
    # run's may)
    assert claim.steps_to(fake_run({}, [1.0, 0.2, 0.5]), 0.3) == 1
    assert claim.stable(fake_run({}, [1.0, 0.5, 0.5 * (1 + 1e-7)]))  # rounding is not a rise
    assert not claim.stable(fake_run({}, [1.0, 0.5, 0.4], diverged=True))


def test_a_loss_logged_at_fewer_steps_than_every_one_is_refused():
    # with log.stats_every=2 a list position would be two steps, and stability judged on every other step
    sparse = fake_run({}, [1.0, 0.5, 0.3])
    sparse.metrics["series"]["batch/loss"] = [[1, 1.0], [3, 0.3]]
    with pytest.raises(ValueError, match="log.stats_every=1"):
        claim.analyze([sparse])


# ---- verdict logic ----------------------------------------------------------------------------------------
# The quadratic model's limits 2/λ_max at zero weights: 3.41e-4 on raw inputs, 3.09 on standardized ones
# (test_the_limits_the_verdict_tests_assume checks them), so the predicted gain is 3.09 / 3.41e-4 = 9.06e3;
# the implementation check asks each largest stable rate to be at least a third of its limit.
LRS = [1e-4, 3.16e-4, 1e-3, 1, 3.16, 10, 100]
BUDGET = 40


@pytest.fixture(scope="module")
def configs():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):

        def cfg(normalize, lr, seed):
            c = compose(
                config_name="config",
                overrides=[
                    "experiment=input_norm",
                    f"data.normalize={normalize}",
                    f"optim.lr={lr}",
                    f"seed={seed}",
                ],
            )
            return {**flat_config(c), "claim": "input_norm"}

        return {(n, lr, s): cfg(n, lr, s) for n in (False, True) for lr in LRS for s in (0, 1)}


def curve(start, target, reach_at, stable=True):
    """A loss curve over BUDGET steps that reaches `target` at step reach_at (None: never), rising once if not
    stable."""
    values = []
    for t in range(BUDGET + 1):
        if reach_at is None:
            v = target + 0.5 + (start - target - 0.5) / (1 + t)
        else:
            v = target - 1e-3 if t >= reach_at else target + (start - target) * (1 - t / reach_at) + 1e-3
        values.append(v)
    if not stable:
        values[2] = values[1] * 1.5
    return values


def sweep(configs, std_stable, std_reach, raw_stable, raw_reach, seeds=(0, 1)):
    """Hand-made runs: per input, the largest stable lr and {lr: step at which the target is reached}."""
    min_loss = claim.curvature([Run(pathlib.Path("."), configs[True, 1, 0], None)])["min_loss"]
    target = min_loss + claim.TARGET_GAP
    runs = []
    for s in seeds:
        for normalize, largest, reach in (
            (True, std_stable(s), std_reach(s)),
            (False, raw_stable(s), raw_reach(s)),
        ):
            for lr in LRS:
                values = curve(0.7, target, reach.get(lr), stable=lr <= largest)
                runs.append(fake_run(configs[normalize, lr, s], values))
    return runs


def test_the_limits_the_verdict_tests_assume(configs):
    for normalize, limit in ((False, 3.41e-4), (True, 3.09)):
        lam = claim.curvature([Run(pathlib.Path("."), configs[normalize, 1, 0], None)])["zero"]
        assert 2 / lam == pytest.approx(limit, rel=0.01)


def judged(finding) -> dict:
    return {p.name: p for p in finding.parts}


def test_input_norm_is_supported_when_stable_near_2_over_lambda_and_much_faster(configs):
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 3.16, lambda s: {3.16: 3, 1: 20}, lambda s: 3.16e-4, lambda s: {})
    )
    assert finding.verdict == SUPPORTED
    parts = judged(finding)
    # the raw runs never reached the target: the speed-up is at least the budget ÷ 3 steps, beyond δ = 10
    assert parts["speed-up"].mean == pytest.approx(BUDGET / 3)
    # the gain 3.16 / 3.16e-4 = 1e4 against the predicted 9.06e3
    assert parts["stable-rate gain ÷ predicted"].mean == pytest.approx(1e4 / 9.06e3, rel=0.01)
    # the check: the smaller of 3.16e-4 / 3.41e-4 (raw) and 3.16 / 3.09 (standardized)
    assert parts["stable rate ÷ 2/λ_max (implementation check)"].mean == pytest.approx(0.927, rel=0.01)
    assert finding.figure is not None and len(finding.table) == 2


def test_input_norm_is_not_supported_when_standardized_inputs_are_no_faster(configs):
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 3.16, lambda s: {3.16: 20}, lambda s: 3.16e-4, lambda s: {3.16e-4: 30})
    )
    assert finding.verdict == NOT_SUPPORTED and finding.decided_by == "speed-up"


def test_a_speed_up_bounded_by_the_budget_below_its_threshold_is_inconclusive(configs):
    # raw inputs never reached the target in 40 steps, standardized ones in 20: at least 2×, perhaps 100×
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 3.16, lambda s: {3.16: 20}, lambda s: 3.16e-4, lambda s: {})
    )
    assert judged(finding)["speed-up"].verdict == INCONCLUSIVE and finding.verdict == INCONCLUSIVE


def test_stable_rates_far_above_2_over_lambda_are_reported_not_judged(configs):
    # standardized inputs stable up to 100, the grid's largest rate (32× its limit): logistic regression's
    # curvature falls as it saturates, so the quadratic model's limit is a bound, not a prediction
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 100, lambda s: {3.16: 3}, lambda s: 3.16e-4, lambda s: {})
    )
    assert finding.verdict == SUPPORTED
    assert finding.table[1]["÷ 2/λ_max at zero weights"] == "32.3"  # 100 ÷ 3.09(2)


def test_input_norm_is_not_supported_when_raw_inputs_are_as_stable_as_standardized_ones(configs):
    # raw inputs stable up to 1 (2,900× their limit): a gain of 3.16 against the predicted 9.06e3
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 3.16, lambda s: {3.16: 3}, lambda s: 1, lambda s: {})
    )
    assert finding.decided_by == "stable-rate gain ÷ predicted" and finding.verdict == NOT_SUPPORTED


def test_a_stability_test_that_fails_below_2_over_lambda_leaves_the_gain_inconclusive(configs):
    # raw inputs stable only up to 1e-4, 0.29× their limit, where gradient descent must descend: the
    # stability test, not the inputs, set that limit (version 2's whole-decade grid did exactly this)
    finding = CLAIMS["input_norm"].analyze(
        sweep(configs, lambda s: 3.16, lambda s: {3.16: 3}, lambda s: 1e-4, lambda s: {})
    )
    assert finding.verdict == INCONCLUSIVE
    assert finding.decided_by == (
        "stable-rate gain ÷ predicted (control failed: stable rate ÷ 2/λ_max (implementation check))"
    )
    assert judged(finding)["speed-up"].verdict == SUPPORTED


def test_input_norm_is_inconclusive_when_starting_points_disagree(configs):
    # raw inputs reach the target in 30 steps; standardized ones in 1 from one start (30×), 20 from the other
    finding = CLAIMS["input_norm"].analyze(
        sweep(
            configs,
            lambda s: 3.16,
            lambda s: {3.16: 1} if s == 0 else {3.16: 20},
            lambda s: 3.16e-4,
            lambda s: {3.16e-4: 30},
        )
    )
    speed_up = judged(finding)["speed-up"]
    assert speed_up.per_seed == {"0": 30.0, "1": 1.5} and speed_up.reason == "the interval contains 10×"


def test_the_input_norm_report(configs, reported):
    runs = sweep(configs, lambda s: 3.16, lambda s: {3.16: 3, 1: 20}, lambda s: 3.16e-4, lambda s: {})
    assert reported("input_norm", runs)["verdict"] == SUPPORTED
