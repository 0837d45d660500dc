"""An outside kernel that reads an FP8 KV cache, written from docs/contract.md alone, as
``tests.fp8_kernels:<name>`` targets.

It takes the contract at its word and nothing else of the suite's: key ``j`` of request
``r``, KV head ``h`` is ``k[row] * k_descale[r, h]`` (``v`` likewise), where ``row`` is the
packed row ``cu_seqlens_k[r] + j``; query ``i`` of request ``r`` sits at position
``context_lens[r] + i`` and sees key ``j <= p`` (within the window), or any key of the
ranges holding ``p`` (``query_ranges``, windowed too under clamp), below ``seq_len``.
:func:`dequantize_into_query_dtype` holds the dequantized K and V in the query dtype, as
engines that feed their dots in that dtype do; :func:`forgets_v_descale` is the same kernel
with one bug: V's descale is never applied.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.targets import prefix_kernel

TAKES_FP8 = Capabilities(kv_dtypes=frozenset({None, "float8_e4m3fn", "float8_e5m2"}))


def _values(case: MaterializedCase, apply_v_descale: bool, held: torch.dtype
            ) -> tuple[Tensor, Tensor]:
    """Packed K and V as float32 values (an FP8 cache's codes times their descales), as
    held in ``held``."""
    k, v = case.k.float(), case.v.float()
    if case.k_descale is None:
        return k, v
    lengths = case.cu_seqlens_k[1:] - case.cu_seqlens_k[:-1]
    request = torch.repeat_interleave(torch.arange(len(lengths), device=case.device),
                                      lengths.long())
    k = k * case.k_descale[request][:, :, None]
    if apply_v_descale:
        v = v * case.v_descale[request][:, :, None]
    return k.to(held).float(), v.to(held).float()


def _attend(case: MaterializedCase, apply_v_descale: bool = True,
            held: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    k_all, v_all = _values(case, apply_v_descale, held)
    total_q, heads = case.q.shape[0], case.q.shape[1]
    group = heads // k_all.shape[1]
    out = torch.zeros(total_q, heads, v_all.shape[2], dtype=case.dtype, device=case.device)
    lse = torch.full((heads, total_q), -math.inf, device=case.device)
    window = case.sliding_window
    for r in range(case.cu_seqlens_q.shape[0] - 1):
        q0, q1 = int(case.cu_seqlens_q[r]), int(case.cu_seqlens_q[r + 1])
        k0, k1 = int(case.cu_seqlens_k[r]), int(case.cu_seqlens_k[r + 1])
        if q1 == q0:
            continue
        p = int(case.context_lens[r]) + torch.arange(q1 - q0, device=case.device)
        j = torch.arange(k1 - k0, device=case.device)
        near = (p[:, None] - j[None, :] < window) if window is not None else torch.ones(
            q1 - q0, k1 - k0, dtype=torch.bool, device=case.device)
        start, end = case.query_ranges[q0:q1, 0].long(), case.query_ranges[q0:q1, 1].long()
        in_range = (j[None, :] >= start[:, None]) & (j[None, :] <= end[:, None])
        if case.clamp_ranges_to_window:
            in_range &= near
        visible = ((j[None, :] <= p[:, None]) & near) | in_range
        k = k_all[k0:k1].repeat_interleave(group, dim=1)
        v = v_all[k0:k1].repeat_interleave(group, dim=1)
        s = torch.einsum("qhd,khd->hqk", case.q[q0:q1].float(), k) * case.softmax_scale
        if case.softcap is not None:
            s = case.softcap * torch.tanh(s / case.softcap)
        s = s.masked_fill(~visible, -math.inf)
        row_lse = torch.logsumexp(s, dim=-1)
        p_attn = torch.exp(s - row_lse[..., None]).nan_to_num(0.0)
        out[q0:q1] = torch.einsum("hqk,khd->qhd", p_attn, v).to(case.dtype)
        lse[:, q0:q1] = row_lse
    return out, lse


@prefix_kernel(TAKES_FP8)
def dequantize_then_attend(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Dequantize K and V with their descales, then exact attention in float32."""
    return _attend(case)


@prefix_kernel(TAKES_FP8)
def dequantize_into_query_dtype(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Dequantize K and V into the query dtype, then exact attention in float32."""
    return _attend(case, held=case.dtype)


@prefix_kernel(TAKES_FP8)
def forgets_v_descale(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """The same kernel, with V's codes taken as its values."""
    return _attend(case, apply_v_descale=False)
