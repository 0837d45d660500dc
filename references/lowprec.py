"""The low-precision baseline of the tolerance rule.

FlashAttention's own acceptance rule: a kernel may be at most a small multiple worse
than a plain PyTorch implementation run in the input dtype. This is that implementation:
scores, softmax and P @ V all in the batch's dtype (as a naive engine computes them), the
log-sum-exp in float32 from the rounded scores. K and V in another dtype (an FP8 cache,
dequantized in float64 by the caller) are rounded to the queries' dtype first, as a naive
engine that dequantizes into its compute dtype does. Rows are blocked like the reference's
(:func:`references.batch.plan_blocks`), each block against its whole key span, which it
needs at once for a plain softmax.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefix_referee.references.batch import Batch, interval_mask, plan_blocks

# Rows per block at most, and scores (in the input dtype) held at once.
QUERY_BLOCK = 512
TILE_ELEMENTS = 1 << 26


def lowprec_attention(batch: Batch) -> tuple[Tensor, Tensor]:
    """``out`` (total_q, H, Dv) in the batch's dtype and ``lse`` (H, total_q) float32."""
    c = batch
    device, dtype = c.q.device, c.q.dtype
    heads, hkv, group, dv = c.num_heads, c.k.shape[1], c.group, c.v.shape[2]
    out = torch.zeros(c.q.shape[0], heads, dv, dtype=dtype, device=device)
    lse = torch.full((heads, c.q.shape[0]), -math.inf, dtype=torch.float32, device=device)
    longest = int(c.widths.max()) if c.q.shape[0] else 0
    rows_per_block = max(1, min(QUERY_BLOCK, TILE_ELEMENTS // max(1, heads * longest)))
    lo_dev, hi_dev = c.lo.to(device), c.hi.to(device)
    for b in plan_blocks(c.lo, c.hi, rows_per_block):
        rows = b.r1 - b.r0
        q = c.q[b.r0:b.r1].view(rows, hkv, group, -1).permute(1, 2, 0, 3).reshape(
            hkv, group * rows, -1)
        k = c.k[b.k0:b.k1].to(dtype).permute(1, 2, 0)
        s = (torch.bmm(q, k) * c.softmax_scale).view(hkv, group, rows, b.k1 - b.k0)
        if c.softcap is not None:
            s = c.softcap * torch.tanh(s / c.softcap)
        if c.bias is not None:
            inside = interval_mask(c.bias.lo[b.r0:b.r1].to(device),
                                   c.bias.hi[b.r0:b.r1].to(device), b.k0, b.k1)
            s = s + (inside.to(s.dtype) * c.bias.weight)
        mask = interval_mask(lo_dev[b.r0:b.r1], hi_dev[b.r0:b.r1], b.k0, b.k1)
        s = s.masked_fill(~mask, -math.inf)
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)
        o = torch.bmm(p.view(hkv, group * rows, -1), c.v[b.k0:b.k1].to(dtype).permute(1, 0, 2))
        out[b.r0:b.r1] = o.view(hkv, group, rows, dv).permute(2, 0, 1, 3).reshape(rows, heads, dv)
        row_lse = torch.logsumexp(s.float(), dim=-1)
        lse[:, b.r0:b.r1] = torch.where(mask.any(dim=-1), row_lse, -math.inf).view(heads, rows)
    return out, lse
