"""Where a run computes: its device, its CPU threads, and the process settings that make both exact or
fast."""

import ctypes
import ctypes.util
import functools
import sys

import torch

from bnexp.config import UserError


def in_sweep() -> bool:
    """Whether this process runs jobs of a Hydra sweep (-m), any launcher."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def device_name(name) -> str:
    """cpu, cuda or mps: `device=` as named, auto made the accelerator when there is one (else cpu)."""
    name = getattr(name, "value", name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return name


def prepare(cfg) -> torch.device:
    """Set the process up for the run `cfg` (its `device` and `threads` keys) and return its device: the
    device if PyTorch sees it, its threads, cuDNN held exact on CUDA, and freed memory kept
    (keep_freed_memory)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    keep_freed_memory()
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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP = 1 << 30  # bytes


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep the memory the process frees for its next allocations (Linux only; elsewhere
    nothing). A training step allocates and frees the same MB-sized tensors every time; by default glibc
    serves them from fresh pages (mmap) and gives freed ones back to the system, so every step pays for page
    faults, which on virtual machines can cost more than the arithmetic on the memory. Kept, the process's
    memory stays at its peak instead. Returns whether the setting took. `python -m bnexp.bench --only step`
    measures what it does to a training step."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)) and bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
