"""Device, mixed precision and memory format: the settings that make GPU training fast.

CUDA gets autocast (bf16 where the GPU supports it: no loss scaling needed; fp16 with a
GradScaler otherwise) and channels_last tensors (what cuDNN's fastest conv kernels want).
CPU runs in float32: CPU autocast is slower than float32 on most CPUs.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager

import torch

from qdeploy.errors import QDeployError


@dataclass(frozen=True)
class Precision:
    """The autocast dtype (None: full precision) and whether gradients need loss scaling."""

    dtype: torch.dtype | None
    scaled: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def resolve_device(preference: str, local_rank: int) -> torch.device:
    """'auto' picks this process's GPU when CUDA is present, else the CPU."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise QDeployError("--device cuda but no CUDA GPU is visible; use --device cpu or auto")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def resolve_precision(device: torch.device, amp: str) -> Precision:
    """'auto' is bf16 on GPUs that support it, fp16 with scaling on older GPUs, fp32 on CPU."""
    if device.type != "cuda":
        if amp in ("bf16", "fp16"):
            raise QDeployError(f"--amp {amp} needs a CUDA device; CPU training runs in fp32 (--amp off)")
        return Precision(None, False)
    if amp == "off":
        return Precision(None, False)
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return Precision(torch.bfloat16, False)
    return Precision(torch.float16, True)


def autocast(device: torch.device, precision: Precision) -> ContextManager:
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=precision.dtype)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor-core conv kernels), the default layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format
