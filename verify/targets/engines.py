"""Plain varlen attention engines that return an LSE: what decompositions are built from.

An engine is the pair of calls a FlashAttention-style library offers, both on packed
varlen inputs and with the same signature (:class:`AttentionCall`):

* ``causal``: query ``i`` of a sequence sits at key position ``i + seqlen_k -
  seqlen_q`` (bottom-right alignment, FlashAttention's convention for varlen) and sees
  the keys at or before it;
* ``dense``: every key of its sequence (non-causal).

``sliding_window=W`` keeps the keys with ``position - j < W`` (in FlashAttention terms
``window_size=(W - 1, 0)`` causal and ``(W - 1, -1)`` dense); it is passed only when a
window applies, and a dense call that cannot window need not take it (its engine says
``dense_window=False``, and cases that need one are skipped). ``softcap=c`` maps scores
to ``c * tanh(score / c)``. Both return ``out`` ``(total_q, H, Dv)`` and a natural-log
``lse`` ``(H, total_q)``, ``-inf`` for a row with no visible key.

The reference engine computes in float64 (and returns float64, so a decomposition built
on it is exact up to float64 rounding); the SDPA engine is torch's CPU flash kernel in
the input dtype. FlashAttention-4 plugs in through ``verify.targets.fa4``'s
``fa4_causal`` / ``fa4_dense``, imported on first call.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
from torch import Tensor

from prefix_referee.references import expand_kv_heads
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import DTYPES, CaseSpec
from prefix_referee.verify.gpu import fa4_unavailable_reason


class AttentionCall(Protocol):
    def __call__(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor,
                 cu_seqlens_k: Tensor, max_seqlen_q: int, max_seqlen_k: int,
                 softmax_scale: float, *, sliding_window: int | None = None,
                 softcap: float | None = None) -> tuple[Tensor, Tensor]:
        """``out`` (total_q, H, Dv), natural-log ``lse`` (H, total_q)."""


@dataclass(frozen=True)
class Engine:
    """A named pair of varlen calls, what they accept, and whether they can run here."""

    name: str
    causal: AttentionCall
    dense: AttentionCall
    capabilities: Capabilities
    unavailable_reason: Callable[[], str | None] = lambda: None
    dense_window: bool = True  # the dense call takes sliding_window (left only)
    compiles: bool = False  # builds a kernel per configuration (FA4): see compile_key
    # Why the engine's own calls reject a case's head dims (asked of the library), or None.
    head_dim_reason: Callable[[CaseSpec], str | None] = lambda spec: None


def varlen_mask(nq: int, nk: int, causal: bool, sliding_window: int | None,
                device: torch.device) -> Tensor:
    """Boolean ``(nq, nk)``: the keys a plain engine lets each query of one sequence see."""
    position = torch.arange(nk - nq, nk, device=device)[:, None]
    j = torch.arange(nk, device=device)[None, :]
    mask = j <= position if causal else torch.ones(nq, nk, dtype=torch.bool, device=device)
    if sliding_window is not None:
        mask = mask & (position - j < sliding_window)
    return mask


def _sequences(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor) -> Iterator[tuple[slice, slice]]:
    """Packed row slices of each sequence's queries and keys (skipping query-less ones)."""
    bounds_q, bounds_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    for b in range(len(bounds_q) - 1):
        if bounds_q[b + 1] > bounds_q[b]:
            yield slice(bounds_q[b], bounds_q[b + 1]), slice(bounds_k[b], bounds_k[b + 1])


def reference_call(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
                   max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, *,
                   causal: bool, sliding_window: int | None = None,
                   softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """Float64 attention of one varlen call; ``out`` and ``lse`` are float64."""
    h = q.shape[1]
    out = torch.zeros(q.shape[0], h, v.shape[2], dtype=torch.float64, device=q.device)
    lse = torch.full((h, q.shape[0]), -math.inf, dtype=torch.float64, device=q.device)
    for rows, keys in _sequences(cu_seqlens_q, cu_seqlens_k):
        k_seq = expand_kv_heads(k[keys].double(), h)
        v_seq = expand_kv_heads(v[keys].double(), h)
        scores = torch.einsum("qhd,khd->hqk", q[rows].double(), k_seq) * softmax_scale
        if softcap is not None:
            scores = softcap * torch.tanh(scores / softcap)
        mask = varlen_mask(scores.shape[1], scores.shape[2], causal, sliding_window, q.device)
        scores = scores.masked_fill(~mask, -math.inf)
        lse[:, rows] = torch.logsumexp(scores, dim=-1)
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        out[rows] = torch.einsum("hqk,khd->qhd", probs, v_seq)
    return out, lse


def sdpa_call(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor,
              max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, *,
              causal: bool, sliding_window: int | None = None,
              softcap: float | None = None) -> tuple[Tensor, Tensor]:
    """torch's CPU flash-attention kernel, which returns its float32 natural-log LSE.

    Its ``is_causal`` is top-left aligned, so causality comes in the additive mask.
    The kernel reports LSE 0 for a row with no visible key; that is set to -inf here.
    """
    if softcap is not None:
        raise ValueError("sdpa engine: SDPA has no softcap")
    h = q.shape[1]
    out = torch.zeros(q.shape[0], h, v.shape[2], dtype=q.dtype, device=q.device)
    lse = torch.full((h, q.shape[0]), -math.inf, dtype=torch.float32, device=q.device)
    for rows, keys in _sequences(cu_seqlens_q, cu_seqlens_k):
        mask = varlen_mask(rows.stop - rows.start, keys.stop - keys.start, causal,
                           sliding_window, q.device)
        additive = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~mask, -math.inf)
        seq_out, seq_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q[rows].transpose(0, 1)[None],
            expand_kv_heads(k[keys], h).transpose(0, 1)[None],
            expand_kv_heads(v[keys], h).transpose(0, 1)[None],
            0.0, False, attn_mask=additive, scale=softmax_scale)
        out[rows] = seq_out[0].transpose(0, 1)
        lse[:, rows] = seq_lse[0].masked_fill(~mask.any(dim=-1), -math.inf)
    return out, lse


def _imported(module: str, name: str) -> AttentionCall:
    """``module.name``, imported when first called (optional packages stay optional)."""

    def call(*args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    return call


REFERENCE_ENGINE = Engine(
    "reference", partial(reference_call, causal=True), partial(reference_call, causal=False),
    Capabilities())
SDPA_ENGINE = Engine(
    "sdpa", partial(sdpa_call, causal=True), partial(sdpa_call, causal=False),
    Capabilities(devices=frozenset({"cpu"}), softcap=False, value_dims="equal"))
FA4_ENGINE = Engine(
    "fa4", _imported("prefix_referee.verify.targets.fa4", "fa4_causal"),
    _imported("prefix_referee.verify.targets.fa4", "fa4_dense"),
    Capabilities(devices=frozenset({"cuda"}), dtypes=frozenset(DTYPES) - {"float32"},
                 value_dims="equal"),
    fa4_unavailable_reason, compiles=True,
    head_dim_reason=lambda spec: importlib.import_module("prefix_referee.verify.targets.fa4")
    .spec_head_dim_reason(spec))
ENGINES: dict[str, Engine] = {e.name: e for e in (REFERENCE_ENGINE, SDPA_ENGINE, FA4_ENGINE)}
