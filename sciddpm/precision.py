"""The device the network runs on, and where it runs in bf16: one policy for training and sampling.

``resolve_device`` turns what a user asked for (``auto``, ``cpu``, ``cuda``, ``cuda:N``) into a
device, or an error that says what is available.

bf16 autocast pays only where the hardware multiplies bf16 natively: CUDA GPUs that support it
(Ampere and later) and x86 CPUs with AVX512-BF16 or AMX-BF16 (AMD Zen 4 and later, Intel Cooper
Lake, Sapphire Rapids and later). There the DDPM CIFAR-10 net trains 1.9x faster than in float32
on 2 CPU cores (docs/performance.md). Elsewhere bf16 is emulated and slower than float32, so the
network runs in float32. Either way only the network runs in bf16: noise levels, sampler
arithmetic, losses and optimiser state stay float32 or wider (house rule 1 in docs/architecture.md).
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

# /proc/cpuinfo flags of CPUs with native bf16 dot products (Linux names)
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when this CPU multiplies bf16 natively (read from the Linux CPU flags; False where
    they cannot be read, e.g. macOS, so those machines keep float32)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith("flags")), [])
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_device(requested: str, *, flag: str = "--device", local_rank: int | None = None) -> torch.device:
    """``auto`` is CUDA where visible (GPU ``local_rank`` under torchrun), else the CPU; ``flag``
    names the setting in errors (``--device``, ``trainer.device``)."""
    requested = str(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"{flag}={requested} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{flag}={requested}: sciddpm runs on auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{flag}={requested} but no CUDA device is visible; use {flag}=cpu (or auto)")
        index = local_rank if device.index is None and local_rank is not None else device.index
        index = torch.cuda.current_device() if index is None else index
        if index >= torch.cuda.device_count():
            raise ValueError(f"{flag}={requested} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", index)
    return device


def network_dtype(device: torch.device, bf16: bool = True) -> torch.dtype:
    """The dtype the network computes in on ``device``: bf16 where asked for and native, else
    float32."""
    if not bf16:
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def network_dtype_name(device: torch.device, bf16: bool = True) -> str:
    """:func:`network_dtype` as recorded in metrics, sample attrs and ensemble stores: "bfloat16" or
    "float32"."""
    return str(network_dtype(device, bf16)).removeprefix("torch.")


def network_autocast(device: torch.device, bf16: bool = True):
    """Context manager to wrap network calls in: bf16 autocast where :func:`network_dtype` says so,
    else nothing."""
    if network_dtype(device, bf16) == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
