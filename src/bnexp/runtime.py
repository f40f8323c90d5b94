"""Where a run computes: its device, its CPU threads, and the process settings that keep it exact."""

import torch

from bnexp.config import UserError


def device_name(name) -> str:
    """cpu, cuda or mps: `device=` as named, auto made the accelerator when there is one (else cpu)."""
    name = getattr(name, "value", name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return name


def prepare(cfg) -> torch.device:
    """Set the process up for the run `cfg` (its `device` and `threads` keys) and return its device: the
    device if PyTorch sees it, its threads, cuDNN held exact on CUDA."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    return resolve_device(cfg.device)


def resolve_device(name) -> torch.device:
    """The device `device=` names, if PyTorch sees it. For CUDA, cuDNN is also set to full float32 precision
    and deterministic algorithms (exact_cuda)."""
    name = device_name(name)
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available[name]:
        raise UserError(
            f"device={name} was asked for, but PyTorch sees no {name} device here. "
            f"Use device=auto (the accelerator when there is one) or device=cpu."
        )
    if name == "cuda":
        exact_cuda()
    return torch.device(name)


def exact_cuda() -> None:
    """cuDNN's float32 convolutions in full precision and its deterministic algorithms. By default it takes
    TF32 (10-bit mantissas) on Ampere and later GPUs and picks algorithms by speed: the numbers would differ
    from the CPU's beyond round-off, and one seed's runs from each other."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if hasattr(conv, "fp32_precision"):  # torch >= 2.9's setting
        conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
