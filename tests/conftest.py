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


@pytest.fixture
def reported(tmp_path):
    """A claim's report written into tmp_path from hand-made runs, which get the keys every run folder has
    that they leave out (the claim, data, budget): checks its files and returns finding.json's content."""
    from bnexp.claims import CLAIMS
    from bnexp.report import report

    def write(claim: str, runs):
        for r in runs:
            r.config.update(
                {
                    "claim": claim,
                    **{
                        k: v for k, v in (("data.name", "digits"), ("model.name", "mlp")) if k not in r.config
                    },
                }
            )
            if r.metrics is not None:
                r.metrics.setdefault("steps_planned", 100)
                r.metrics.setdefault("provenance", {"bnexp": "0.1.0", "torch": "2.5.0", "device": "cpu"})
        result = report(tmp_path, runs)
        text = (tmp_path / "report.md").read_text()
        assert f"**Verdict: {result['verdict']}** (decided by: {result['decided_by']})" in text
        assert CLAIMS[claim].criterion in text and CLAIMS[claim].revision in text
        assert all(
            f"| {p['name']}{' (control)' * p['control']}{' (reported, not deciding)' * (not p['decides'])} "
            f"| {p['estimate']} |" in text
            for p in result["parts"]
        )
        assert "**Provenance.** Runs: bnexp 0.1.0, torch 2.5.0, on cpu." in text
        assert (tmp_path / f"{claim}.png").stat().st_size > 10_000
        assert json.loads((tmp_path / "finding.json").read_text()) == result
        return result

    return write
