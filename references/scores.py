"""Masked attention scores for one block of one request, in any dtype.

Shared by the float64 reference and the low-precision baseline so that the two
differ only in the precision they compute in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from verify.mask import query_range_bounds, visible_keys
from verify.materialize import MaterializedCase, RequestView

# Extra log-weight per (query, key) of one request, added to the scores after softcap:
# (request, absolute query positions, key positions) -> (len(q_pos), len(k_pos)) float64.
ScoreBias = Callable[[RequestView, Tensor, Tensor], Tensor]


def expand_kv_heads(t: Tensor, num_heads: int) -> Tensor:
    """(tokens, Hkv, D) -> (tokens, H, D): query head h reads kv head h // (H // Hkv)."""
    return t.repeat_interleave(num_heads // t.shape[1], dim=1)


def block_mask(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """The exact mask of a (queries, keys) block of one request."""
    start, end = query_range_bounds(q_pos, view.ranges)
    return visible_keys(q_pos, k_pos, start, end, view.seq_len,
                        case.sliding_window, case.clamp_ranges_to_window)


def masked_scores(case: MaterializedCase, view: RequestView, q: Tensor, k: Tensor,
                  q_pos: Tensor, k_pos: Tensor, mask: Tensor,
                  score_bias: ScoreBias | None) -> Tensor:
    """Scores (H, nq, nk) in the dtype of ``q``/``k``; masked entries are -inf.

    ``q`` is (nq, H, D) and ``k`` already expanded to (nk, H, D).
    """
    scores = torch.einsum("qhd,khd->hqk", q, k) * case.softmax_scale
    if case.softcap is not None:
        scores = case.softcap * torch.tanh(scores / case.softcap)
    if score_bias is not None:
        scores = scores + score_bias(view, q_pos, k_pos).to(scores.dtype)
    return scores.masked_fill(~mask, float("-inf"))
