"""The versions a verdict depends on: the suite's, torch's, Triton's, FlashAttention-4's.

A reproducer replays bit for bit only with the same suite (the value generator, the
policy) and the same kernels, so report.json and every reproducer record these.
"""

from __future__ import annotations

import importlib.metadata
import platform

import torch

DISTRIBUTION = "prefix-attention-referee"
# Distributions whose versions matter to a verdict, by the name reports use.
PACKAGES = {"suite": DISTRIBUTION, "torch": "torch", "triton": "triton",
            "flash-attn-4": "flash-attn-4", "nvidia-cutlass-dsl": "nvidia-cutlass-dsl"}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def suite_version() -> str:
    return _version(DISTRIBUTION) or "unknown (not installed)"


def versions() -> dict[str, str | None]:
    """Python and every package of :data:`PACKAGES` (None: not installed)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    found.update({name: _version(dist) for name, dist in PACKAGES.items()})
    found["suite"] = suite_version()
    return found


def device_description(device: str) -> str:
    """'cpu (x86_64)' or the GPU's name and compute capability."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or 0)
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm{major}{minor})"
    return f"cpu ({platform.machine()})"
