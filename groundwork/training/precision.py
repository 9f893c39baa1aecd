"""Training arithmetic: bf16 mixed precision (autocast) where the device computes in bf16 natively, else fp32.

Only training steps run under autocast: weights, optimizer state and gradients stay fp32, and every evaluation,
export and reported score runs in fp32, so a model trained either way is scored the same way.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def bf16_native(device: torch.device) -> bool:
    """Whether `device` runs bf16 matrix maths in hardware (CUDA with bf16, or a CPU with AVX-512 BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The dtype training steps autocast to for the `precision` param: None means plain fp32. 'auto' takes bf16
    only where it is native (emulated bf16 is slower than fp32); 'bf16' takes it anyway, as asked."""
    if name == "fp32" or (name == "auto" and not bf16_native(device)):
        return None
    return torch.bfloat16


def precision_used(name: str, device: torch.device) -> str:
    """What training steps compute in for the `precision` param on `device`: "bf16" or "fp32". Stages that train
    record it in their metrics and MLflow run params, since `auto` gives different arithmetic on different
    hardware for the same params."""
    return "fp32" if autocast_dtype(name, device) is None else "bf16"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    """The forward pass of a training step under `dtype` (no-op for None)."""
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
