"""The exact causal-OR-prefix mask (DESIGN.md section 2), in one place.

Everything that needs the mask (the float64 reference, the dense SDPA target,
FlexAttention's mask_mod, the diagnosis) derives it from these functions; the
tests audit them against a literal double loop over the definition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from verify.case import CaseSpec, Request


def query_range_bounds(q_pos: Tensor, ranges: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
    """Per query, the keys its image ranges open up: ``(start, end)`` or ``(-1, -1)``.

    A query inside several (overlapping) ranges sees their union, which is the single
    interval from the smallest start to the largest end of the ranges that hold it.
    """
    start = torch.full_like(q_pos, -1)
    end = torch.full_like(q_pos, -1)
    for s, e in ranges:
        inside = (q_pos >= s) & (q_pos <= e)
        start = torch.where(inside & ((start < 0) | (start > s)), s, start)
        end = torch.where(inside & (end < e), e, end)
    return start, end


def visible_keys(
    q_pos: Tensor,
    k_pos: Tensor,
    range_start: Tensor,
    range_end: Tensor,
    seq_len: int,
    sliding_window: int | None = None,
    clamp_ranges_to_window: bool = False,
) -> Tensor:
    """Boolean ``(len(q_pos), len(k_pos))``: may the query at ``p`` attend to key ``j``?

    ``range_start``/``range_end`` come from :func:`query_range_bounds`.
    """
    p = q_pos[:, None]
    j = k_pos[None, :]
    causal = j <= p
    in_range = (j >= range_start[:, None]) & (j <= range_end[:, None])
    if sliding_window is not None:
        inside_window = (p - j) < sliding_window
        causal = causal & inside_window
        if clamp_ranges_to_window:
            in_range = in_range & inside_window
    return (causal | in_range) & (j < seq_len)


def visible_intervals(
    q_pos: Tensor,
    ranges: tuple[tuple[int, int], ...],
    seq_len: int,
    sliding_window: int | None = None,
    clamp_ranges_to_window: bool = False,
) -> tuple[Tensor, Tensor]:
    """Per query, the first and last visible key: its whole mask row is ``[lo, hi]``.

    The causal part ``[p - W + 1, p]`` (or ``[0, p]``) and the range part ``[s, e]``
    (clamped: ``[max(s, p - W + 1), e]``) both contain ``p``, so their union is one
    interval; keys past ``seq_len`` do not exist. Kernels use this to bound their key
    loops; tests/test_mask.py checks it against :func:`visible_keys`.
    """
    lo = q_pos - sliding_window + 1 if sliding_window is not None else torch.zeros_like(q_pos)
    start, end = query_range_bounds(q_pos, ranges)
    inside = start >= 0
    range_lo = torch.maximum(start, lo) if clamp_ranges_to_window else start
    lo = torch.where(inside, torch.minimum(lo, range_lo), lo).clamp_min(0)
    hi = torch.where(inside, torch.maximum(q_pos, end), q_pos).clamp_max(seq_len - 1)
    return lo, hi


def request_mask(spec: CaseSpec, request: Request, device: torch.device | str = "cpu",
                 query_rows: slice = slice(None), key_cols: slice = slice(None)) -> Tensor:
    """The mask of one request, ``(query_len, seq_len)``, optionally a sub-block of it."""
    q_pos = torch.arange(request.context_len, request.seq_len, device=device)[query_rows]
    k_pos = torch.arange(request.seq_len, device=device)[key_cols]
    start, end = query_range_bounds(q_pos, request.ranges)
    return visible_keys(q_pos, k_pos, start, end, request.seq_len,
                        spec.sliding_window, spec.clamp_ranges_to_window)


def causal_only(spec: CaseSpec) -> CaseSpec:
    """The same case with every image range removed (non-vacuity baselines)."""
    bare = [{"context_len": r.context_len, "query_len": r.query_len} for r in spec.requests]
    return spec.with_changes(requests=bare)


def mask_differs_from_causal(spec: CaseSpec) -> bool:
    """Does any image range make a key visible that plain (windowed) causal would not?"""
    for request in spec.requests:
        if request.query_len and request.ranges:
            with_ranges = request_mask(spec, request)
            bare = request_mask(spec, Request(request.context_len, request.query_len))
            if bool((with_ranges != bare).any()):
                return True
    return False
