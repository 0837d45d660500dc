"""torch SDPA with an explicit dense boolean mask: the simplest exact engine.

An FP8 cache is dequantized first (codes times descales, rounded once to the query dtype),
as an engine without FP8 attention does before it calls SDPA.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.mask import block_mask
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.target import Target

# Query rows per SDPA call; bounds the dense (rows, seq_len) mask.
QUERY_BLOCK = 1024


class SdpaTarget(Target):
    def __init__(self) -> None:
        super().__init__("sdpa", "torch scaled_dot_product_attention, dense boolean mask",
                         Capabilities(softcap=False, lse=False,
                                      kv_dtypes=frozenset({None, *KV_DTYPES}),
                                      deterministic=True, batch_invariant=True,
                                      placement_invariant=True, claimed_on=frozenset({"cpu"})))

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=case.dtype,
                          device=case.device)
        keys, values = case.dequantized(case.dtype)
        for view in case.requests():
            k = keys[view.k_slice].transpose(0, 1)[None]
            v = values[view.k_slice].transpose(0, 1)[None]
            k_pos = torch.arange(view.seq_len, device=case.device)
            for q0 in range(0, view.query_len, QUERY_BLOCK):
                q1 = min(q0 + QUERY_BLOCK, view.query_len)
                q_pos = torch.arange(view.context_len + q0, view.context_len + q1,
                                     device=case.device)
                q = case.q[view.q_slice][q0:q1].transpose(0, 1)[None]
                result = torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=block_mask(case, view, q_pos, k_pos),
                    scale=case.softmax_scale, enable_gqa=case.num_heads != case.num_kv_heads)
                out[view.q_start + q0:view.q_start + q1] = result[0].transpose(0, 1)
        return out, None
