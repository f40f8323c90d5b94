"""What one training step of one run computes: the `Eager` stepper, and the parts of a run it is built from.

A stepper (this one, or bnexp.vectorized.Folded for K runs at once) is what bnexp.engine's loop drives:

    forward_backward(idx, observe) -> StepOutput   the step's forward and backward on batch indices idx (K, B)
    grads(k)                        run k's gradients by parameter name (for the monitor's norms)
    update()                        the optimizer step
    model(k)                        run k's network as an ordinary module, for evaluation
    models                          the K runs' networks (their structure: layers, probes)
    keep(index)                     (several runs only) only the runs at `index` go on
    state(k), restore(states)       run k's state for a checkpoint, and the runs' back from theirs
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bnexp.config import UserError
from bnexp.data import InMemoryData
from bnexp.init import initialize
from bnexp.models import Network, build_model
from bnexp.monitor import captured


# ---- a run's parts, from its config --------------------------------------------------------------------
def initialized_model(cfg, data: InMemoryData, device: torch.device) -> Network:
    """The run's network, built and initialized from its seed."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.input_shape, data.num_classes)
    # Seeded again so an explicit init draws the same weights whatever else the model holds: networks
    # with and without the (redundant) bias before BN then start, and train, identically.
    torch.manual_seed(cfg.seed)
    return initialize(model, cfg.init).to(device)


def learning_rate(cfg) -> float:
    """optim.lr, scaled linearly with the batch size when optim.lr_batch_size is set."""
    if cfg.optim.lr_batch_size is None:
        return cfg.optim.lr
    return cfg.optim.lr * cfg.data.batch_size / cfg.optim.lr_batch_size


def make_optimizer(params, cfg, lr: float) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    raise UserError(
        f"optim={cfg.name!r} is not an optimizer; choose optim=sgd, optim=momentum or optim=adam."
    )


def step_module(cfg, model, input_shape) -> tuple[torch.nn.Module, torch.memory_format]:
    """What the training steps call, per the opt-in speed flags: `model` itself, or torch.compile's
    wrapper of it (train.compile; the same parameters), and the memory format of their batches
    (train.channels_last, which also converts the model's convolution weights, in place)."""
    memory_format = torch.contiguous_format
    if cfg.train.channels_last:
        if cfg.model.name != "cnn" or len(input_shape) != 3:
            raise UserError(
                f"train.channels_last stores images channels-last for 2-D convolutions: it needs "
                f"model=cnn and a dataset of images (C, H, W), but this run has model={cfg.model.name} "
                f"and examples of shape {tuple(input_shape)}. Leave train.channels_last=false."
            )
        memory_format = torch.channels_last
        model.to(memory_format=memory_format)
    return (torch.compile(model) if cfg.train.compile else model), memory_format


# ---- the step ---------------------------------------------------------------------------------------------
@dataclass
class StepOutput:
    """What a training step of K runs hands to the monitors."""

    loss: torch.Tensor  # (K,): each run's mean loss on its batch, before the update
    correct: torch.Tensor  # (K,): how many of each run's batch it classified right
    probes: list[dict[str, torch.Tensor]]  # observed steps: per run, its probe points' values, else empty
    batch: tuple[torch.Tensor, torch.Tensor] | None = None  # one run: its (x, y), for bnexp.measures


class Eager:
    """One run: its model and its torch.optim optimizer, a step as written in any PyTorch tutorial."""

    def __init__(self, cfg, data: InMemoryData, device: torch.device):
        self.data = data
        self.models = [initialized_model(cfg, data, device)]
        self.optimizer = make_optimizer(self.models[0].parameters(), cfg.optim, learning_rate(cfg))
        self.step_model, self.memory_format = step_module(cfg, self.models[0], data.input_shape)

    def forward_backward(self, idx: torch.Tensor, observe: bool) -> StepOutput:
        model = self.models[0]
        x, y = self.data.batch(idx[0])
        x = x.contiguous(memory_format=self.memory_format)
        model.train()
        with captured(model) if observe else nullcontext({}) as probes:
            # Observed steps run eagerly: the probes' hooks are Python, outside any compiled graph.
            logits = (model if observe else self.step_model)(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        correct = (logits.detach().argmax(1) == y).sum()
        return StepOutput(loss.detach()[None], correct[None], [probes], (x, y))

    def grads(self, k: int) -> dict[str, torch.Tensor]:
        return {name: p.grad for name, p in self.models[0].named_parameters() if p.grad is not None}

    def update(self) -> None:
        self.optimizer.step()

    def model(self, k: int) -> Network:
        return self.models[0]

    def state(self, k: int) -> dict:
        """The weights, BN buffers and optimizer state (torch's state_dicts); the run's random draws
        (dropout, noise) come from torch's global generator, which the checkpoint keeps."""
        return {"model": self.models[0].state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, states: list[dict]) -> None:
        (state,) = states
        self.models[0].load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
