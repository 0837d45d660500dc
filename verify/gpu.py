"""What the GPU tier needs, and the reason it is missing on this machine."""

from __future__ import annotations

import importlib.util

import torch

MIN_CAPABILITY = (9, 0)


def cuda_unavailable_reason() -> str | None:
    """Why no SM90+ CUDA device is usable here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return f"CUDA device is SM{capability[0]}{capability[1]}, below SM90"
    return None


def fa4_unavailable_reason() -> str | None:
    """Why FlashAttention-4 (an SM90+ device and flash-attn-4) cannot run here, or None."""
    reason = cuda_unavailable_reason()
    if reason is None and importlib.util.find_spec("flash_attn") is None:
        reason = "flash-attn-4 not installed (pip install flash-attn-4)"
    return reason
