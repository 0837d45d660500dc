"""The exact causal-OR-prefix mask (docs/semantics.md) for cases and requests.

The semantics live in :mod:`references.mask` (on tensors); this module applies them to the
case model: one request's mask, a block of it, the intervals a kernel's key loop needs,
and the non-vacuity helpers the tests use. The tests audit all of it against a literal
double loop over the definition.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefix_referee.references import LogWeight
from prefix_referee.references.mask import (
    key_intervals,
    overlap_intervals,
    range_bounds,
    visible_keys,
)
from prefix_referee.verify.case import CaseSpec, Request
from prefix_referee.verify.materialize import MaterializedCase, RequestView


def query_range_bounds(q_pos: Tensor, ranges: tuple[tuple[int, int], ...]) -> tuple[Tensor, Tensor]:
    """Per query, the union of the image ranges holding it: ``(start, end)`` or ``(-1, -1)``."""
    table = torch.tensor(ranges or [(-1, -1)], dtype=q_pos.dtype, device=q_pos.device)
    rows = table[None].expand(len(q_pos), -1, -1)
    return range_bounds(q_pos, rows[..., 0], rows[..., 1])


def visible_intervals(q_pos: Tensor, ranges: tuple[tuple[int, int], ...], seq_len: int,
                      sliding_window: int | None = None, clamp_ranges_to_window: bool = False
                      ) -> tuple[Tensor, Tensor]:
    """Per query, the first and last visible key of one request: its mask row is ``[lo, hi]``.

    Kernels use this to bound their key loops; tests/test_mask.py checks it against
    :func:`request_mask`.
    """
    start, end = query_range_bounds(q_pos, ranges)
    return key_intervals(q_pos, start, end, seq_len, sliding_window, clamp_ranges_to_window)


def block_mask(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """The exact mask of a (queries, keys) block of one request."""
    start, end = query_range_bounds(q_pos, view.ranges)
    return visible_keys(q_pos, k_pos, start, end, view.seq_len,
                        case.sliding_window, case.clamp_ranges_to_window)


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


def overlap_weight(case: MaterializedCase) -> LogWeight:
    """The two-call approximation: ``ln 2`` on the keys both calls read (the causal keys of
    the query's range, :func:`references.mask.overlap_intervals`), in packed key rows."""
    layout = case.layout
    lo, hi = overlap_intervals(layout.q_positions, layout.range_start, layout.range_end,
                               layout.seq_lens[layout.q_request], case.sliding_window)
    offset = layout.k_starts[layout.q_request]
    return LogWeight(lo + offset, hi + offset, math.log(2.0))
