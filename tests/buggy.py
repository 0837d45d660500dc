"""Wrong kernels with more than one bug, as ``tests.buggy:<name>`` targets."""

from __future__ import annotations

import math

from torch import Tensor

from verify.materialize import MaterializedCase
from verify.targets import get_target

_chunk_local = get_target("fault:chunk_local_position")


def two_bugs(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Chunk-local query positions (wrong ``out`` with cached context), and a base-2 LSE on
    windowed layers: two distinct bugs one run must both report."""
    out, lse = _chunk_local.run(case)
    if case.sliding_window is not None:
        lse = lse / math.log(2)
    return out, lse
