import json
import sys

import pytest
from hydra import compose, initialize_config_module

from bnexp.config import register

register()


@pytest.fixture(autouse=True)
def data_root(tmp_path_factory, monkeypatch):
    """Datasets generated or cached by a test go to a temporary folder, never the home directory."""
    root = tmp_path_factory.getbasetemp() / "data"
    monkeypatch.setenv("BNEXP_DATA", str(root))
    return root


@pytest.fixture(autouse=True)
def close_figures():
    """Analyses called directly (not through a report) leave their figures open."""
    yield
    plt = sys.modules.get("matplotlib.pyplot")  # only if some test drew: importing it costs every test
    if plt is not None:
        plt.close("all")


@pytest.fixture
def sgd_steps():
    """Train `net` a few SGD steps on a random batch of 6; every step: logits of the right shape, a finite
    loss; and every parameter learns (a nonzero gradient: no layer is cut off from the loss)."""
    import torch

    def run(net, input_shape, steps: int = 3, num_classes: int = 10):
        x, y = torch.randn(6, *input_shape), torch.randint(0, num_classes, (6,))
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(steps):
            logits = net(x)
            assert logits.shape == (6, num_classes)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert torch.isfinite(loss)
        for name, p in net.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name

    return run


@pytest.fixture
def same_series():
    """Assert that two run folders' metrics.json curves are equal up to float round-off (another kernel,
    another summation order, another program): the same tags, steps and, but for round-off, values."""

    def check(a, b, rel=1e-4, abs=1e-5):
        sa, sb = (json.loads((folder / "metrics.json").read_text())["series"] for folder in (a, b))
        assert sa.keys() == sb.keys()
        for tag, points in sa.items():
            assert [s for s, _ in sb[tag]] == [s for s, _ in points], tag
            assert [v for _, v in sb[tag]] == [
                v if v is None else pytest.approx(v, rel=rel, abs=abs) for _, v in points
            ], tag

    return check


@pytest.fixture
def make_cfg():
    """Compose the real config (conf/ through Hydra, typed schema included) with overrides."""

    def make(*overrides: str):
        with initialize_config_module(config_module="bnexp.conf", version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return make
