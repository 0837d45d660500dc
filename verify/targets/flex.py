"""FlexAttention with a mask_mod over the packed varlen batch (a peer exact engine).

The whole batch is one long sequence of ``total_q`` queries against ``total_k``
keys; the mask_mod ANDs "same request" with the causal-OR-range test, all read
from per-token aux tensors, the way engines feed FlexAttention varlen batches.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from verify.materialize import MaterializedCase
from verify.target import Target


def _token_tables(case: MaterializedCase) -> dict[str, Tensor]:
    """Per query: request and absolute position; per key: request and position."""
    device = case.device
    q_req = torch.repeat_interleave(torch.arange(len(case.spec.requests), device=device),
                                    case.query_lens.long())
    k_req = torch.repeat_interleave(torch.arange(len(case.spec.requests), device=device),
                                    case.seqused_k.long())
    q_pos = (torch.arange(case.q.shape[0], device=device) - case.cu_seqlens_q[q_req]
             + case.context_lens[q_req])
    k_pos = torch.arange(case.k.shape[0], device=device) - case.cu_seqlens_k[k_req]
    return {"q_req": q_req, "k_req": k_req, "q_pos": q_pos, "k_pos": k_pos}


class FlexTarget(Target):
    def __init__(self) -> None:
        super().__init__("flex", "torch FlexAttention, varlen mask_mod with aux tensors")

    def unavailable_reason(self) -> str | None:
        try:
            from torch.nn.attention import flex_attention  # noqa: F401
        except ImportError as exc:
            return f"torch.nn.attention.flex_attention not importable ({exc})"
        return None

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        from torch.nn.attention.flex_attention import AuxRequest, create_block_mask, flex_attention

        if case.q.shape[0] == 0:
            return case.q.new_zeros(0, case.num_heads, case.head_dim_v), torch.zeros(
                case.num_heads, 0, device=case.device)
        t = _token_tables(case)
        qs, qe = case.query_ranges[:, 0], case.query_ranges[:, 1]
        window, clamp, softcap = case.sliding_window, case.clamp_ranges_to_window, case.softcap

        def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
            p, j = t["q_pos"][q_idx], t["k_pos"][kv_idx]
            causal = j <= p
            in_range = (j >= qs[q_idx]) & (j <= qe[q_idx])
            if window is not None:
                causal = causal & (p - j < window)
                if clamp:
                    in_range = in_range & (p - j < window)
            return (t["q_req"][q_idx] == t["k_req"][kv_idx]) & (causal | in_range)

        def score_mod(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
                      ) -> Tensor:
            return softcap * torch.tanh(score / softcap)

        block_mask = create_block_mask(mask_mod, 1, 1, case.q.shape[0], case.k.shape[0],
                                       device=case.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention.*")
            out, aux = flex_attention(
                case.q.transpose(0, 1)[None], case.k.transpose(0, 1)[None],
                case.v.transpose(0, 1)[None], block_mask=block_mask,
                score_mod=score_mod if softcap is not None else None,
                scale=case.softmax_scale, enable_gqa=case.num_heads != case.num_kv_heads,
                return_aux=AuxRequest(lse=True))
        return out[0].transpose(0, 1).contiguous(), aux.lse[0].float()
