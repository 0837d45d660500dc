"""The exact model of the two-call path (DESIGN.md section 3): ln 2 on the overlap keys.

Call A (causal, windowed if the case has a window) and call B (the query's image range,
windowed too under ``clamp_ranges_to_window``) are merged as if their key sets were
disjoint, so every key both calls read is counted twice. Their union is exactly the
visible set, so the merge equals exact-mask attention with a log-weight ``ln 2`` on
the intersection: the causal keys ``[max(s, p - W + 1), p]`` of the query's range
(``[s, p]`` without a window; ``p`` itself is always in it). The windowed range term
under ``clamp_ranges_to_window`` adds nothing to this intersection, so one formula
covers every window setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from verify.mask import query_range_bounds, visible_keys
from verify.materialize import RequestView


def overlap_keys(q_pos: Tensor, k_pos: Tensor, ranges: tuple[tuple[int, int], ...],
                 seq_len: int, sliding_window: int | None) -> Tensor:
    """Boolean ``(len(q_pos), len(k_pos))``: keys that both call A and call B read."""
    start, end = query_range_bounds(q_pos, ranges)
    no_range = torch.full_like(q_pos, -1)
    causal = visible_keys(q_pos, k_pos, no_range, no_range, seq_len, sliding_window)
    in_range = (k_pos[None, :] >= start[:, None]) & (k_pos[None, :] <= end[:, None])
    return causal & in_range


@dataclass(frozen=True)
class OverlapBias:
    """The two-call model as a :data:`references.scores.ScoreBias` (ln 2 on overlap keys).

    Frozen with a readable repr: the runner caches reference results per bias repr.
    """

    sliding_window: int | None

    def __call__(self, view: RequestView, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        overlap = overlap_keys(q_pos, k_pos, view.ranges, view.seq_len, self.sliding_window)
        return overlap.to(torch.float64) * math.log(2.0)
