"""How big a case may be: checked before anything is allocated.

A case is input from anywhere (a reproducer, a CI job, a typo), so its sizes are bounded
here and every value the kernels index with stays inside int32 arithmetic. The bounds
are data: a run that needs bigger cases passes its own :class:`Limits`. ``max_bytes``
is set from the device a run uses (``memory_limit``) and compared with
``CaseSpec.estimated_bytes``, so a case that would exhaust memory fails in one line instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Positions, lengths, range ends, windows and total keys feed int32 index arithmetic.
MAX_INT32 = 2**31 - 1
# Seeds are stored as signed 64-bit integers.
MAX_SEED = 2**63 - 1
# Above this a softmax scale or softcap only makes scores overflow (float32 max ~3e38).
MAX_MAGNITUDE = 1e4
# What a case may use of a device's memory, and what the suite's own tiles need on top.
MEMORY_SHARE = 0.8
WORKING_BYTES = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Upper bounds a case must respect (``max_bytes`` None: memory not checked)."""

    max_total_tokens: int = 1 << 21
    max_requests: int = 1 << 14
    max_heads: int = 256
    max_head_dim: int = 1024
    max_ranges_per_request: int = 1 << 12
    max_page_size: int = 1 << 16
    max_page_table_slack: int = 1 << 10
    max_bytes: int | None = None


DEFAULT_LIMITS = Limits()


def memory_limit(device: str) -> int:
    """The bytes a case may use on ``device`` ("cpu", "cuda" or "cuda:N")."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        total = torch.cuda.get_device_properties(index).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * MEMORY_SHARE)
