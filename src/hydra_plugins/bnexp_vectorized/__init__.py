"""`hydra/launcher=vectorized`: bnexp sweeps whose runs differ only in shape-free settings (seeds,
learning rates, init scales, ...) are trained K at a time as one vectorized program
(bnexp.vectorized); everything else runs one job after another, as Hydra's basic launcher does."""


def register() -> None:
    """Make `hydra/launcher=vectorized` known to Hydra without its plugin scan.

    Hydra 1.3 finds plugins by listing the `hydra_plugins` namespace package, which fails for
    setuptools' default editable installs (`pip install -e .`: importable, not listable). Calling
    this before Hydra starts (bnexp's command does) registers the launcher and its config directly;
    where the scan works, it is harmless. Never call it from this package's import: the scan imports it.
    """
    from hydra.core.plugins import Plugins

    from .vectorized_launcher import VectorizedLauncher  # importing it stores hydra/launcher=vectorized

    Plugins.instance().register(VectorizedLauncher)
