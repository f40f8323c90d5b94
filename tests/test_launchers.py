"""Sweeps on more than one core: the Hydra launchers of the `joblib` and `slurm` extras."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_runs_through_the_launcher_into_one_folder_per_run(launcher, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnexp",
            "-m",
            f"hydra/launcher={launcher}",
            "norm=none,bn",
            "profile=tiny",
            "train.steps=6",
            "train.eval_every=3",
            f"hydra.sweep.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert out.returncode == 0, out.stderr
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").exists())
    assert runs == ["norm=bn,train.eval_every=3,train.steps=6", "norm=none,train.eval_every=3,train.steps=6"]
    assert all(json.loads((tmp_path / r / "metrics.json").read_text())["steps"] == 6 for r in runs)


def test_the_vectorized_launcher_is_a_hydra_plugins_entry_point():
    # Hydra 1.4 discovers plugins by the "hydra.plugins" entry-point group, each entry a concrete plugin
    # class; it must load the very class that hydra/launcher=vectorized instantiates, whatever the install.
    import inspect
    from importlib.metadata import entry_points

    from hydra.plugins.launcher import Launcher

    from hydra_plugins.bnexp_vectorized.vectorized_launcher import VectorizedLauncher, VectorizedLauncherConf

    ours = [e for e in entry_points(group="hydra.plugins") if e.dist is not None and e.dist.name == "bnexp"]
    assert [e.load() for e in ours] == [VectorizedLauncher]
    assert issubclass(VectorizedLauncher, Launcher) and not inspect.isabstract(VectorizedLauncher)
    assert VectorizedLauncherConf._target_ == f"{VectorizedLauncher.__module__}.{VectorizedLauncher.__name__}"
