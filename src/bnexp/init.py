"""Weight initialization schemes (the `init=` group).

Only the weights of linear and conv maps differ between schemes. Every explicit scheme starts
biases at 0; norm layers keep their own start (γ = 1, β = 0). `default` leaves PyTorch's own
initialization of every layer untouched, biases included.

`init.layers` says which maps a scheme initializes: all of them, or only the hidden layers' (the maps a
norm follows, whose scale BN removes: BN(aWu) = BN(Wu)). With `hidden` the head, which no norm follows,
keeps PyTorch's default init, so a sweep over init.std leaves it alone.
"""

import math

import torch
from torch import nn

from bnexp.config import InitLayers, UserError

SCHEMES = {
    "normal": lambda w, cfg: nn.init.normal_(w, std=cfg.std),
    # U(-a, a) has variance a^2 / 3: a = sqrt(3) std gives init=normal's variance.
    "uniform": lambda w, cfg: nn.init.uniform_(w, -math.sqrt(3) * cfg.std, math.sqrt(3) * cfg.std),
    "xavier": lambda w, cfg: nn.init.xavier_normal_(w, gain=cfg.gain),
    # He et al.: std = sqrt(2 / fan_in), the ReLU gain; init.gain scales it further.
    "kaiming": lambda w, cfg: nn.init.kaiming_normal_(w, nonlinearity="relu").mul_(cfg.gain),
    "orthogonal": lambda w, cfg: nn.init.orthogonal_(w, gain=cfg.gain),
}


def initialize(model: nn.Module, cfg) -> nn.Module:
    """Apply the scheme named by `cfg.name` (an `InitConfig` node) to `model` in place."""
    if cfg.name == "default":
        return model
    if cfg.name not in SCHEMES:
        raise UserError(
            f"init={cfg.name!r} is not an initialization; choose one of default, {', '.join(SCHEMES)}."
        )
    with torch.no_grad():
        _apply(model, cfg)
    return model


def _apply(model: nn.Module, cfg) -> None:
    if InitLayers(cfg.layers) is InitLayers.hidden:
        # Drawn first, from the seed bnexp.step sets right before: the head then starts the same for every
        # norm and init.std of a seed, whatever the maps drawn after it hold.
        model.head.reset_parameters()
        maps = [layer.linear for layer in model.layers().values()]
    else:
        maps = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    for m in maps:
        SCHEMES[cfg.name](m.weight, cfg)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
