"""The low-precision baseline of the tolerance rule.

FlashAttention's own acceptance rule: a kernel may be at most a small multiple
worse than a plain PyTorch implementation run in the input dtype. This is that
implementation: scores, softmax and P @ V all in the case dtype (as a naive
engine would compute them), the log-sum-exp in float32 from the rounded scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from references.scores import ScoreBias, block_mask, expand_kv_heads, masked_scores
from verify.materialize import MaterializedCase

# Query rows per block; a block holds (H, rows, seq_len) scores in the input dtype.
QUERY_BLOCK = 512


def lowprec_attention(case: MaterializedCase, *, score_bias: ScoreBias | None = None,
                      query_block: int = QUERY_BLOCK) -> tuple[Tensor, Tensor]:
    """``out`` (total_q, H, Dv) in the case dtype and ``lse`` (H, total_q) float32."""
    device = case.device
    out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=case.dtype,
                      device=device)
    lse = torch.full((case.num_heads, case.q.shape[0]), float("-inf"), dtype=torch.float32,
                     device=device)
    for view in case.requests():
        k = expand_kv_heads(case.k[view.k_slice], case.num_heads)
        v = expand_kv_heads(case.v[view.k_slice], case.num_heads)
        k_pos = torch.arange(view.seq_len, device=device)
        for q0 in range(0, view.query_len, query_block):
            q1 = min(q0 + query_block, view.query_len)
            q_pos = torch.arange(view.context_len + q0, view.context_len + q1, device=device)
            mask = block_mask(case, view, q_pos, k_pos)
            scores = masked_scores(case, view, case.q[view.q_slice][q0:q1], k, q_pos, k_pos,
                                   mask, score_bias)
            seen = mask.any(dim=-1)
            probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
            rows = slice(view.q_start + q0, view.q_start + q1)
            out[rows] = torch.einsum("hqk,khd->qhd", probs, v)
            lse[:, rows] = torch.where(seen, torch.logsumexp(scores.float(), dim=-1),
                                       float("-inf"))
    return out, lse
