"""Which cases to draw for a target: a named space (or a model preset's spaces), narrowed to
what the target declares it accepts.

Drawing only inside a target's declared capabilities keeps the budget on cases that test
something: ``--examples N`` judges N cases instead of skipping the ones the kernel never
promised to take (the Triton interpreter's token limit, a kernel without softcap, page
sizes that are multiples of 16, no range cut by the chunk end, no FP8 cache).
"""

from __future__ import annotations

from prefix_referee.fuzz.cases.strategies import (
    CPU_SPACE,
    EDGE_REACH,
    GPU_SPACE,
    INTERPRETER_SPACE,
    Space,
)
from prefix_referee.verify.capabilities import Capabilities

# The spaces ``--space`` names.
SPACES: dict[str, Space] = {"cpu": CPU_SPACE, "interpreter": INTERPRETER_SPACE,
                            "gpu": GPU_SPACE}


def default_space(device: str) -> str:
    """The name of the space a device gets when none is asked for."""
    return "gpu" if device.startswith("cuda") else "cpu"


def space_for(capabilities: Capabilities, base: Space) -> Space | None:
    """``base`` narrowed to what a target accepts, or None if nothing of it is left
    (a model preset's head dims the target does not take, say)."""
    max_requests, max_seq_len = base.max_requests, base.max_seq_len
    edges = tuple(base.tile_edges)
    limit = capabilities.max_total_tokens
    if limit is not None:
        max_seq_len = min(max_seq_len, limit)
        max_requests = max(1, min(max_requests, limit // max_seq_len))
        edges = tuple(e for e in edges if e + EDGE_REACH <= limit)
    head_dims = tuple(d for d in base.head_dims if capabilities.accepts_head_dim(d))
    page_sizes = tuple(p for p in base.page_sizes if capabilities.accepts_page_size(p))
    dtypes = tuple(d for d in base.dtypes if d in capabilities.dtypes)
    kv_dtypes = tuple(d for d in base.kv_dtypes if d in capabilities.kv_dtypes)
    if not head_dims or not page_sizes or not dtypes or not kv_dtypes:
        return None
    shared, window_range = _window_range(capabilities, base)
    windows = base.windows
    if windows is not None and capabilities.window_range is not None:
        windows = [w for w in windows if capabilities.accepts_window(w)]
        shared = shared and bool(windows)
    windowed = capabilities.sliding_window and shared
    max_ranges = base.max_ranges
    if capabilities.max_ranges_per_request is not None:
        max_ranges = min(max_ranges, capabilities.max_ranges_per_request)
    return base.narrowed(
        max_requests=max_requests,
        max_seq_len=max_seq_len,
        max_total_tokens=limit,
        max_ranges=max_ranges,
        tile_edges=edges,
        dtypes=dtypes,
        kv_dtypes=kv_dtypes,
        head_dims=head_dims,
        page_sizes=page_sizes,
        window=base.window and windowed,
        windows=windows if windowed else None,
        window_range=window_range,
        softcap=base.softcap and capabilities.softcap,
        value_dims=base.value_dims and capabilities.value_dims == "any",
        overlapping_ranges=base.overlapping_ranges and capabilities.overlapping_ranges,
        layout=base.layout | capabilities.layout,
    )


def _window_range(capabilities: Capabilities, base: Space
                  ) -> tuple[bool, tuple[int, int] | None]:
    """Whether the space and the target take any window in common, and the range of windows
    both take (None: any)."""
    ranges = [r for r in (base.window_range, capabilities.window_range) if r is not None]
    if not ranges:
        return True, None
    low, high = max(r[0] for r in ranges), min(r[1] for r in ranges)
    return low <= high, (low, high) if low <= high else None
