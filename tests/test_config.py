"""The config schema: every option composes, and mistakes fail at start-up with Hydra's message."""
import pathlib

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

import bnexp.conf

CONF = pathlib.Path(bnexp.conf.__file__).parent
GROUPS = ["model", "norm", "init", "data", "optim"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_names_itself(make_cfg, group, option):
    cfg = make_cfg(f"{group}={option}")
    assert cfg[group].name == option


def test_the_keys_users_type_exist(make_cfg):
    cfg = make_cfg("model.depth=4", "model.width=50", "model.activation=relu", "model.dropout=0.2", "norm=gn",
                   "norm.groups=4", "init=normal", "init.std=0.1", "optim=adam", "optim.lr=0.01", "data=mnist1d",
                   "data.batch_size=32", "train.steps=7", "seed=3", "device=cpu")
    assert (cfg.model.depth, cfg.model.width, cfg.model.activation.value) == (4, 50, "relu")
    assert (cfg.norm.groups, cfg.init.std, cfg.optim.lr, cfg.data.batch_size) == (4, 0.1, 0.01, 32)
    assert (cfg.train.steps, cfg.seed, cfg.device.value) == (7, 3, "cpu")


def test_the_default_run_is_the_bn_papers_mlp_on_digits(make_cfg):
    cfg = make_cfg()
    assert (cfg.model.name, cfg.model.depth, cfg.model.width, cfg.model.activation.value) == ("mlp", 3, 100, "sigmoid")
    assert (cfg.norm.name, cfg.data.name, cfg.data.batch_size) == ("bn", "digits", 60)


@pytest.mark.parametrize("override", ["model.dept=4", "optim.learning_rate=0.1", "nrom=bn"])
def test_a_mistyped_key_is_rejected(make_cfg, override):
    with pytest.raises(ConfigCompositionException, match="Could not override|Key .* is not in struct"):
        make_cfg(override)


@pytest.mark.parametrize("override", ["model.depth=three", "optim.lr=fast", "model.activation=softplus",
                                      "device=tpu", "data.normalize=maybe"])
def test_a_value_of_the_wrong_type_is_rejected(make_cfg, override):
    with pytest.raises(ConfigCompositionException) as e:
        make_cfg(override)
    assert isinstance(e.value.__cause__, ValidationError)


def test_a_nonexistent_option_is_rejected(make_cfg):
    with pytest.raises(ConfigCompositionException, match="Could not find 'norm/batchnorm'"):
        make_cfg("norm=batchnorm")
