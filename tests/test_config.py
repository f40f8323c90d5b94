"""The config schema: every option composes, and mistakes fail at start-up with Hydra's message (or, for a
value out of its range, with one paragraph naming each)."""

import pathlib
import re

import bnexp.conf
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from bnexp.config import RANGES, UserError, check_ranges

CONF = pathlib.Path(bnexp.conf.__file__).parent
GROUPS = ["model", "norm", "init", "data", "optim"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_names_itself(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    assert cfg[group].name == option


def test_the_keys_users_type_exist(make_cfg):
    cfg = make_cfg(
        "model.depth=4",
        "model.width=50",
        "model.activation=relu",
        "model.dropout=0.2",
        "norm=gn",
        "norm.groups=4",
        "init=normal",
        "init.std=0.1",
        "optim=adam",
        "optim.lr=0.01",
        "data=mnist1d",
        "data.batch_size=32",
        "train.steps=7",
        "seed=3",
        "device=cpu",
    )
    assert (cfg.model.depth, cfg.model.width, cfg.model.activation.value) == (4, 50, "relu")
    assert (cfg.norm.groups, cfg.init.std, cfg.optim.lr, cfg.data.batch_size) == (4, 0.1, 0.01, 32)
    assert (cfg.train.steps, cfg.seed, cfg.device.value) == (7, 3, "cpu")


def test_the_default_run_is_the_bn_papers_mlp_on_digits(make_cfg):
    cfg = make_cfg()
    assert (cfg.model.name, cfg.model.depth, cfg.model.width, cfg.model.activation.value) == (
        "mlp",
        3,
        100,
        "sigmoid",
    )
    assert (cfg.norm.name, cfg.data.name, cfg.data.batch_size) == ("bn", "digits", 60)


@pytest.mark.parametrize("override", ["model.dept=4", "optim.learning_rate=0.1", "nrom=bn"])
def test_a_mistyped_key_is_rejected(make_cfg, override):
    with pytest.raises(ConfigCompositionException, match="Could not override|Key .* is not in struct"):
        make_cfg(override)


@pytest.mark.parametrize(
    "override",
    ["model.depth=three", "optim.lr=fast", "model.activation=softplus", "device=tpu", "data.normalize=maybe"],
)
def test_a_value_of_the_wrong_type_is_rejected(make_cfg, override):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(override)
    assert isinstance(e.value.__cause__, ValidationError)


def test_a_nonexistent_option_is_rejected(make_cfg):
    with pytest.raises(ConfigCompositionException, match="Could not find 'norm/batchnorm'"):
        make_cfg("norm=batchnorm")


def experiments(profile: str = "") -> list[str]:
    folder = CONF / "experiment" / profile
    return sorted(f"{profile}/{p.stem}".lstrip("/") for p in folder.glob("*.yaml"))


def test_the_default_config_and_every_experiment_are_within_range(make_cfg):
    check_ranges(make_cfg())
    for experiment in experiments() + experiments("standard") + experiments("paper"):
        check_ranges(make_cfg(f"experiment={experiment}"))


def test_every_claim_has_its_quick_experiment_and_its_other_profiles_as_diffs_of_it(make_cfg):
    from bnexp.claims import CLAIMS

    assert experiments() == sorted(CLAIMS)
    for profile in ("standard", "paper"):
        assert experiments(profile) == sorted(f"{profile}/{c}" for c in CLAIMS)
    for claim in CLAIMS:
        quick = make_cfg(f"experiment={claim}")
        for profile in ("standard", "paper"):
            longer = make_cfg(f"experiment={profile}/{claim}")
            assert longer.claim == claim
            assert longer.train.steps > quick.train.steps or (longer.train.epochs or 0) > (
                quick.train.epochs or 0
            )


# What each claim's standard sweep trains on: real MNIST digits, except where the claim needs other data.
STANDARD_DATA = {"input_norm": "synthetic"}


def test_the_standard_profile_trains_five_seeds_or_more_on_real_digits(make_cfg):
    from bnexp.claims import CLAIMS

    for claim in CLAIMS:
        sweep = OmegaConf.load(CONF / "experiment" / "standard" / f"{claim}.yaml").hydra.sweeper.params
        assert len(str(sweep.seed).split(",")) >= 5, claim
        assert make_cfg(f"experiment=standard/{claim}").data.name == STANDARD_DATA.get(claim, "mnist5k")


def test_the_tiny_profile_shortens_any_run_or_sweep_and_keeps_every_logging_path(make_cfg):
    for cfg in (make_cfg("profile=tiny"), make_cfg("experiment=batch_size", "profile=tiny")):
        assert (cfg.train.steps, cfg.train.epochs, cfg.train.eval_every) == (40, None, 20)
        assert (cfg.log.stats_every, cfg.log.hist_every, cfg.device.value) == (10, 20, "cpu")
    assert (
        make_cfg("experiment=batch_size", "profile=tiny").model.name == "cnn"
    )  # the experiment otherwise stands


def test_values_out_of_range_are_all_named_in_one_users_mistake(make_cfg):
    cfg = make_cfg(
        "model.width=-1", "model.channels=[16,0]", "optim.lr=-0.1", "norm.momentum=2", "model.dropout=1"
    )
    with pytest.raises(UserError) as e:
        check_ranges(cfg)
    message = str(e.value)
    for wrong in [
        "model.width=-1 (must be at least 1)",
        "model.channels=[16, 0] (must be at least 1)",
        "optim.lr=-0.1 (must be at least 0)",
        "norm.momentum=2.0 (must be in [0, 1] (or null))",
        "model.dropout=1.0 (must be in [0, 1))",
    ]:
        assert wrong in message
    assert "model.depth" not in message  # values within range are not named


# For each range, in its words: values at its edges (allowed) and just beyond each edge (refused).
EDGES = {
    "at least 0": ([0], [-1]),
    "at least 1": ([1], [0]),
    "at least 2": ([2], [1]),
    "positive": ([1e-12], [0]),
    "in [0, 1)": ([0, 0.99], [-0.01, 1]),
    "in [0, 1] (or null)": ([0, 1], [-0.01, 1.01]),
}


@pytest.mark.parametrize("key", sorted(RANGES))
def test_every_range_refuses_a_value_just_outside_it(make_cfg, key):
    """Each entry's test is the range its words say: the values at its edges pass, one step beyond either
    fails."""
    allowed, ok = RANGES[key]
    edges, beyond = EDGES[allowed]
    default = OmegaConf.select(make_cfg(), key)

    def override(value):  # a list's or a dict's element, or the value
        if OmegaConf.is_dict(default):
            return f"+{key}.mlp={value}"
        return f"{key}={[value] if OmegaConf.is_list(default) else value}"

    for value in edges:
        assert ok(value)
        check_ranges(make_cfg(override(value)))
    for value in beyond:
        assert not ok(value)
        with pytest.raises(UserError, match=re.escape(f"{key}=")):
            check_ranges(make_cfg(override(value)))
