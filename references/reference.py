"""The float64 exact-mask reference: ground truth for every target.

Computed blockwise with an online softmax so memory stays bounded on long
sequences, and key blocks the mask hides entirely are skipped. Runs wherever
the case lives (CPU or CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from references.scores import ScoreBias, block_mask, expand_kv_heads, masked_scores
from verify.materialize import MaterializedCase

# Block edge of the (query, key) tiles: 1024 x 1024 x heads float64 scores stay well under
# a GiB for the head counts the suite uses.
BLOCK = 1024


def reference_attention(case: MaterializedCase, *, score_bias: ScoreBias | None = None,
                        block: int = BLOCK) -> tuple[Tensor, Tensor]:
    """Exact attention in float64 from the case's rounded inputs.

    Returns ``out`` (total_q, H, Dv) float64 and natural-log ``lse`` (H, total_q)
    float64; rows with no visible key give out 0 and lse -inf. ``score_bias`` adds a
    per-(query, key) log-weight (the two-call model uses ln 2 on the overlap keys).
    """
    device = case.device
    out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=torch.float64,
                      device=device)
    lse = torch.full((case.num_heads, case.q.shape[0]), float("-inf"), dtype=torch.float64,
                     device=device)
    for view in case.requests():
        q_all = case.q[view.q_slice].double()
        k_all = expand_kv_heads(case.k[view.k_slice].double(), case.num_heads)
        v_all = expand_kv_heads(case.v[view.k_slice].double(), case.num_heads)
        for q0 in range(0, view.query_len, block):
            q1 = min(q0 + block, view.query_len)
            q_pos = torch.arange(view.context_len + q0, view.context_len + q1, device=device)
            row_max = torch.full((case.num_heads, q1 - q0), float("-inf"), dtype=torch.float64,
                                 device=device)
            row_sum = torch.zeros_like(row_max)
            acc = torch.zeros(case.num_heads, q1 - q0, case.head_dim_v, dtype=torch.float64,
                              device=device)
            for k0 in range(0, view.seq_len, block):
                k1 = min(k0 + block, view.seq_len)
                k_pos = torch.arange(k0, k1, device=device)
                mask = block_mask(case, view, q_pos, k_pos)
                if not bool(mask.any()):
                    continue
                scores = masked_scores(case, view, q_all[q0:q1], k_all[k0:k1], q_pos, k_pos,
                                       mask, score_bias)
                new_max = torch.maximum(row_max, scores.amax(dim=-1))
                # A row with nothing visible yet keeps max -inf; shift by 0 to avoid inf - inf.
                shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                probs = torch.exp(scores - shift[..., None])
                rescale = torch.exp(row_max - shift)
                row_sum = row_sum * rescale + probs.sum(dim=-1)
                acc = acc * rescale[..., None] + torch.einsum("hqk,khd->hqd", probs, v_all[k0:k1])
                row_max = new_max
            seen = row_sum > 0
            normalized = torch.where(seen[..., None], acc / row_sum.clamp_min(1e-300)[..., None],
                                     torch.zeros_like(acc))
            out[view.q_start + q0:view.q_start + q1] = normalized.transpose(0, 1)
            lse[:, view.q_start + q0:view.q_start + q1] = torch.where(
                seen, row_max + torch.log(row_sum.clamp_min(1e-300)), float("-inf"))
    return out, lse
