"""A correct float32 online-softmax kernel, written the way GPU kernels compute: key tiles,
a running max, exp2 of scores pre-multiplied by log2(e), float32 throughout.

The tolerance policy must never fail it on rounding alone (docs/semantics.md: the float32
floor); tests/test_policy_floor.py holds it to that on peaky float32 cases.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefix_referee.verify.mask import block_mask
from prefix_referee.verify.materialize import MaterializedCase

TILE = 16
LOG2E = math.log2(math.e)


def online_softmax(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=case.dtype)
    lse = torch.full((case.num_heads, case.q.shape[0]), -math.inf)
    group = case.num_heads // case.num_kv_heads
    for view in case.requests():
        if not view.query_len:
            continue
        q = case.q[view.q_slice].float().transpose(0, 1)  # (H, n, D)
        k = case.k[view.k_slice].float().repeat_interleave(group, 1).transpose(0, 1)
        v = case.v[view.k_slice].float().repeat_interleave(group, 1).transpose(0, 1)
        q_pos = torch.arange(view.context_len, view.seq_len)
        m = torch.full((case.num_heads, view.query_len), -math.inf)
        total = torch.zeros_like(m)
        acc = torch.zeros(case.num_heads, view.query_len, case.head_dim_v)
        for k0 in range(0, view.seq_len, TILE):
            k_pos = torch.arange(k0, min(k0 + TILE, view.seq_len))
            s = q @ k[:, k_pos].transpose(1, 2) * case.softmax_scale
            if case.softcap is not None:
                s = case.softcap * torch.tanh(s / case.softcap)
            s = (s * LOG2E).masked_fill(~block_mask(case, view, q_pos, k_pos), -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(torch.isfinite(m_new), m_new, 0.0)
            p = torch.exp2(s - shift[..., None])
            alpha = torch.exp2(m - shift)
            total = total * alpha + p.sum(-1)
            acc = acc * alpha[..., None] + p @ v[:, k_pos]
            m = m_new
        seen = total > 0
        out[view.q_slice] = (acc / torch.where(seen, total, 1.0)[..., None]).transpose(0, 1).to(
            case.dtype)
        lse[:, view.q_slice] = torch.where(seen, (m + torch.log2(total)) / LOG2E, -math.inf)
    return out, lse
