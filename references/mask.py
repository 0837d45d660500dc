"""The exact causal-OR-range mask (docs/semantics.md), on tensors, in one place.

Query ``p`` (an absolute position in its request's sequence) sees key ``j`` when
``j <= p`` (within the sliding window, if any) or when ``p`` and ``j`` lie in one image
range ``[s, e]`` (inclusive; within the window too under ``clamp_ranges_to_window``);
keys at or past ``seq_len`` do not exist. Both terms contain ``j = p``, so every query
sees one contiguous interval of keys: :func:`key_intervals` gives it, and the float64
reference works on those intervals alone. The tests audit these functions against a
literal double loop over the definition.
"""

from __future__ import annotations

import torch
from torch import Tensor


def range_bounds(q_pos: Tensor, starts: Tensor, ends: Tensor) -> tuple[Tensor, Tensor]:
    """Per query, the keys its image ranges open up: ``(start, end)``, or ``(-1, -1)``.

    ``starts``/``ends`` ``(len(q_pos), R)`` are the ranges of each query's request
    (padding ``(-1, -1)`` holds no position). A query inside several (overlapping)
    ranges sees their union: one interval from the smallest start to the largest end.
    """
    inside = (q_pos[:, None] >= starts) & (q_pos[:, None] <= ends)
    held = inside.any(dim=1)
    none = torch.full_like(q_pos, -1)
    if not starts.shape[1]:
        return none, none
    start = torch.where(inside, starts, torch.iinfo(starts.dtype).max).amin(dim=1)
    end = torch.where(inside, ends, -1).amax(dim=1)
    return torch.where(held, start, none), torch.where(held, end, none)


def visible_keys(q_pos: Tensor, k_pos: Tensor, range_start: Tensor, range_end: Tensor,
                 seq_len: int | Tensor, sliding_window: int | None = None,
                 clamp_ranges_to_window: bool = False) -> Tensor:
    """Boolean ``(len(q_pos), len(k_pos))``: may the query at ``p`` attend to key ``j``?

    ``range_start``/``range_end`` come from :func:`range_bounds`; ``seq_len`` is one
    length or one per query.
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
    limit = seq_len[:, None] if isinstance(seq_len, Tensor) else seq_len
    return (causal | in_range) & (j < limit)


def key_intervals(q_pos: Tensor, range_start: Tensor, range_end: Tensor, seq_len: int | Tensor,
                  sliding_window: int | None = None, clamp_ranges_to_window: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """Per query, its first and last visible key: the whole mask row is ``[lo, hi]``.

    The causal part ``[p - W + 1, p]`` (or ``[0, p]``) and the range part ``[s, e]``
    (clamped: ``[max(s, p - W + 1), e]``) both contain ``p``, so their union is one
    interval; keys past ``seq_len`` do not exist, so ``hi < lo`` means no key at all.
    """
    lo = q_pos - sliding_window + 1 if sliding_window is not None else torch.zeros_like(q_pos)
    inside = range_start >= 0
    range_lo = torch.maximum(range_start, lo) if clamp_ranges_to_window else range_start
    lo = torch.where(inside, torch.minimum(lo, range_lo), lo).clamp_min(0)
    hi = torch.minimum(torch.where(inside, torch.maximum(q_pos, range_end), q_pos),
                       torch.as_tensor(seq_len) - 1)
    return lo, hi


def overlap_intervals(q_pos: Tensor, range_start: Tensor, range_end: Tensor,
                      seq_len: int | Tensor, sliding_window: int | None = None
                      ) -> tuple[Tensor, Tensor]:
    """Per query, the keys both calls of the two-call path read: ``[lo, hi]`` (or empty).

    Call A is causal (windowed if the case has a window) and call B is the query's image
    range; they share the causal keys of the range, ``[max(s, p - W + 1), p]`` (``[s, p]``
    without a window; ``p`` itself always). The windowed range term under
    ``clamp_ranges_to_window`` adds nothing to this intersection.
    """
    causal_lo = (q_pos - sliding_window + 1).clamp_min(0) if sliding_window is not None else 0
    lo = torch.maximum(range_start, torch.as_tensor(causal_lo))
    hi = torch.minimum(q_pos, torch.as_tensor(seq_len) - 1)
    empty = range_start < 0
    return torch.where(empty, 0, lo), torch.where(empty, -1, hi)
