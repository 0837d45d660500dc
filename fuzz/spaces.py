"""Which cases to draw for a target: a named profile, narrowed to what the target accepts.

A case the target declines is skipped, not judged; drawing only cases inside its
declared capabilities keeps the budget on cases that test something (the Triton
interpreter's token limit, a kernel without softcap, a fixed set of head dims).
"""

from __future__ import annotations

from fuzz.strategies import CPU_SPACE, GPU_SPACE, INTERPRETER_SPACE, Space
from verify.targets import Capabilities

PROFILES: dict[str, Space] = {"cpu": CPU_SPACE, "interpreter": INTERPRETER_SPACE,
                              "gpu": GPU_SPACE}


def default_profile(device: str) -> str:
    """The profile a device gets when none is asked for."""
    return "gpu" if device == "cuda" else "cpu"


def _within(wanted: tuple, allowed: frozenset | None) -> tuple:
    """``wanted`` restricted to ``allowed``; the target's own set if they share nothing."""
    if allowed is None:
        return wanted
    return tuple(x for x in wanted if x in allowed) or tuple(sorted(allowed))


def space_for(capabilities: Capabilities, base: Space) -> Space:
    """``base`` narrowed to the dtypes, head dims, features and token limit of a target."""
    max_requests, max_seq_len = base.max_requests, base.max_seq_len
    limit = capabilities.max_total_tokens
    if limit is not None and max_requests * max_seq_len > limit:
        max_seq_len = min(max_seq_len, limit)
        max_requests = max(1, min(max_requests, limit // max_seq_len))
    return base.narrowed(
        max_requests=max_requests,
        max_seq_len=max_seq_len,
        dtypes=_within(tuple(base.dtypes), capabilities.dtypes),
        head_dims=tuple(d for d in base.head_dims if capabilities.accepts_head_dim(d))
        or tuple(sorted(capabilities.head_dims or ())),
        page_sizes=tuple(p for p in base.page_sizes if capabilities.accepts_page_size(p)),
        window=base.window and capabilities.sliding_window,
        softcap=base.softcap and capabilities.softcap,
        value_dims=base.value_dims and capabilities.value_dims == "any",
        overlapping_ranges=base.overlapping_ranges and capabilities.overlapping_ranges,
    )
