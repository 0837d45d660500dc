"""FlashAttention-4 (CuTe DSL, ``flash-attn-4``) with a ``mask_mod`` that encodes the exact mask.

FA4 ignores ``causal`` and ``window_size`` once a ``mask_mod`` is given, so the mask
function carries causality, the sliding window and the range clamp itself. It reads,
per query, the range bounds of ``query_ranges`` (aux tensor 0, at the query's packed
row) and the window and clamp flag from a two-int aux tensor (aux tensor 1). The window
is runtime data rather than a closure constant on purpose: FA4 compiles one kernel per
mask function hash, and a closure constant would compile one kernel per window value.
So one mask function serves every case (:func:`prefix_mask_mod` builds it once); what
still compiles separately is what FA4 keys on: dtype, head dims, GQA ratio, paged or
packed K/V (and TMA or cp.async pages), softcap value, and whether one query tile
covers the longest request.

Also here: :func:`fa4_causal` and :func:`fa4_dense`, plain FA4 varlen calls without a
mask_mod, as engines for the two-call family.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.gpu import fa4_unavailable_reason
from prefix_referee.verify.materialize import TORCH_DTYPES, MaterializedCase
from prefix_referee.verify.target import Target

# Stands in for "no window" in the runtime window slot: wider than any sequence, and
# p - j stays far from int32 overflow.
NO_WINDOW = 1 << 30
# FA4's documented SM90 head dims (8..256, 16-byte rows), used only where FA4 itself cannot
# be asked (no flash-attn-4 installed); with FA4 installed, its own validator decides.
MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_ALIGN = 8, 256, 8
# FA4's SM90 query tile (a mask_mod call is non-causal): a request longer than one tile
# (times the query heads packed per KV head) takes another kernel configuration.
SM90_TILE_M = 128
FINDING_TMA_TAIL_NAN = "fa4_tma_page_tail_nan"
# flash_attn.cute.interface asserts that q, k and v share one dtype (FP8 queries with an FP8
# cache, bf16 output) and that FP8 runs on SM100 only: an FP8 cache under bf16, fp16 or
# fp32 queries, the suite's contract, is not an FA4 call on any device.
FP8_SAME_DTYPE = "q, k, v, and qv must have the same dtype"
FP8_SM100 = "FP8 is only supported on SM100 (compute capability 10.x) for FA4 CuTe."


def sm90_tile_n(head_dim: int, head_dim_v: int) -> int:
    """FA4's SM90 key-tile width for a non-causal, non-local call (a mask_mod call is both).

    Mirrors ``flash_attn.cute.interface._tile_size_fwd_sm90``; the GPU tier checks the
    copy against FA4 itself. A page of exactly this size loads by TMA, whole pages at a time.
    """
    if head_dim <= 64:
        return 128
    if head_dim <= 96:
        return 144
    if head_dim <= 128:
        return 128
    if head_dim <= 192:
        return 128 if head_dim_v <= 128 else 112
    return 80


def _build_mask_mod(cutlass: ModuleType, cute: ModuleType) -> Callable[..., Any]:
    """The causal-OR-range mask as a CuTe DSL mask_mod (docs/semantics.md).

    ``cutlass`` and ``cute`` are parameters so that the CPU tests can run the very same
    body on Python stand-ins and compare it with :mod:`verify.mask` pair by pair.
    FA4 passes per-request indices: ``m_idx`` the query row, ``n_idx`` the key, both
    relative to the request. The absolute query position is ``m_idx + seqlen_k -
    seqlen_q``; the range row is clamped to the request because FA4 also evaluates
    the rows that pad the last query tile (an unclamped read runs past ``query_ranges``
    for the last request: docs/bugs.md class 8).
    """

    @cute.jit
    def prefix_mask(batch, head, m_idx, n_idx, seqlen_info, aux_tensors):
        query_ranges = aux_tensors[0]
        params = aux_tensors[1]
        q = m_idx[0]
        j = n_idx[0]
        row = seqlen_info.offset_q + cutlass.min(q, seqlen_info.seqlen_q - 1)
        p = q + seqlen_info.seqlen_k - seqlen_info.seqlen_q
        near = p - j < params[0]
        causal = (j <= p) & near
        in_range = (j >= query_ranges[row, 0]) & (j <= query_ranges[row, 1])
        in_range = in_range & (near | (params[1] == 0))
        visible = cute.make_rmem_tensor(1, cutlass.Boolean)
        visible[0] = causal | in_range
        return visible.load()

    return prefix_mask


@functools.cache
def prefix_mask_mod() -> Callable[..., Any]:
    """The one mask_mod every case uses; the same object each time, so FA4 hashes it once."""
    import cutlass
    import cutlass.cute as cute

    return _build_mask_mod(cutlass, cute)


def mask_params(case: MaterializedCase) -> Tensor:
    """Aux tensor 1: ``[window, clamp]`` (int32 on the case's device)."""
    window = NO_WINDOW if case.sliding_window is None else case.sliding_window
    return torch.tensor([window, int(case.clamp_ranges_to_window)], dtype=torch.int32,
                        device=case.device)


@functools.cache
def head_dim_reason(head_dim: int, head_dim_v: int, element_size: int) -> str | None:
    """Why FA4 rejects these head dims on this device, in FA4's own words, or None.

    Asks FA4's validator (``flash_attn.cute.interface._validate_head_dims``) for the
    device's architecture, so a release that takes head_dim 512 is used at 512 with no
    change here. Without flash-attn-4 (the CPU tests), FA4's documented SM90 limits.
    """
    try:
        from flash_attn.cute.interface import _get_device_arch, _validate_head_dims
    except ImportError:
        if all(MIN_HEAD_DIM <= d <= MAX_HEAD_DIM and d % HEAD_DIM_ALIGN == 0
               for d in (head_dim, head_dim_v)):
            return None
        return (f"unsupported: head_dim {head_dim}, head_dim_v {head_dim_v} (FA4 on SM90 takes "
                f"{MIN_HEAD_DIM}..{MAX_HEAD_DIM}, a multiple of {HEAD_DIM_ALIGN})")
    try:
        _validate_head_dims(head_dim, head_dim_v, _get_device_arch() // 10, 16 // element_size)
    except AssertionError as exc:
        return f"unsupported: head_dim {head_dim}, head_dim_v {head_dim_v}: FA4 says {exc}"
    return None


def spec_head_dim_reason(spec: CaseSpec) -> str | None:
    """:func:`head_dim_reason` for a case's head dims and dtype."""
    return head_dim_reason(spec.head_dim, spec.value_dim,
                           torch.finfo(TORCH_DTYPES[spec.dtype]).bits // 8)


def fp8_kv_reason(spec: CaseSpec) -> str | None:
    """Why FA4 declines an FP8 cache, in FA4's own words, or None for K/V in the query dtype."""
    if spec.kv_dtype is None:
        return None
    return (f"unsupported: kv_dtype {spec.kv_dtype} under {spec.dtype} queries: FA4 takes FP8 "
            f"K/V only with FP8 queries ('{FP8_SAME_DTYPE}') and only on SM100 "
            f"('{FP8_SM100}')")


def tma_tail_nan_reason(spec: CaseSpec) -> str | None:
    """Why ``spec`` is outside FA4's paged-KV contract, or None.

    With a page of exactly one key tile FA4 loads pages by TMA, including the slots past
    ``seqused_k`` in a request's last page; it masks their scores, but P = 0 times a NaN
    value row is NaN. Its docstring asks for those slots to be finite. The GPU tier keeps
    a reproducer of this (golden/findings/) and asserts the behaviour.
    """
    if spec.poison != "nan" or spec.page_size is None:
        return None
    if spec.page_size != sm90_tile_n(spec.head_dim, spec.value_dim):
        return None
    if all(r.seq_len % spec.page_size == 0 for r in spec.requests):
        return None
    return (f"out of FA4's contract (finding {FINDING_TMA_TAIL_NAN}): NaN in the tail of a "
            f"TMA-loaded last page (page_size {spec.page_size} = key tile)")


class FA4Target(Target):
    """``flash_attn.cute.flash_attn_varlen_func`` with :func:`prefix_mask_mod`."""

    def __init__(self) -> None:
        super().__init__(
            "fa4", "FlashAttention-4 varlen/paged, CuTe DSL mask_mod over aux tensors",
            Capabilities(devices=frozenset({"cuda"}),
                         dtypes=frozenset({"bfloat16", "float16"}),
                         value_dims="equal"))

    def unavailable_reason(self) -> str | None:
        return fa4_unavailable_reason()

    def unsupported_reason(self, spec: CaseSpec, device: str) -> str | None:
        return (fp8_kv_reason(spec)
                or super().unsupported_reason(spec, device)
                or spec_head_dim_reason(spec)
                or tma_tail_nan_reason(spec))

    def compile_key(self, spec: CaseSpec) -> tuple:
        """FA4 compiles per dtype, head dims, GQA ratio, K/V layout (packed, paged by cp.async,
        paged by TMA when a page is one key tile), softcap value, and whether the longest
        request (query heads packed per KV head) fits one query tile."""
        ratio = spec.num_heads // spec.num_kv_heads
        kv = "packed"
        if spec.page_size is not None:
            tile = sm90_tile_n(spec.head_dim, spec.value_dim)
            kv = "tma" if spec.page_size == tile else "cp.async"
        longest = max(r.query_len for r in spec.requests) * ratio
        return (spec.dtype, spec.head_dim, spec.value_dim, ratio, kv, spec.softcap,
                longest <= SM90_TILE_M)

    def mask_mod(self) -> Callable[..., Any]:
        """The mask function handed to FA4 (a planted-fault test overrides it)."""
        return prefix_mask_mod()

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        kv: dict[str, Any]
        if case.page_size is None:
            kv = {"k": case.k, "v": case.v, "cu_seqlens_k": case.cu_seqlens_k}
        else:
            kv = {"k": case.k_cache, "v": case.v_cache, "seqused_k": case.seqused_k,
                  "page_table": case.page_table}
        return _varlen(case.q, **kv, cu_seqlens_q=case.cu_seqlens_q,
                       max_seqlen_q=case.max_seqlen_q, max_seqlen_k=case.max_seqlen_k,
                       softmax_scale=case.softmax_scale, softcap=case.softcap,
                       mask_mod=self.mask_mod(),
                       aux_tensors=[case.query_ranges, mask_params(case)])


def _varlen(q: Tensor, k: Tensor, v: Tensor, *, softcap: float | None,
            **kwargs: Any) -> tuple[Tensor, Tensor]:
    """One forward call; FA4's LSE is already natural log, (H, total_q) float32."""
    from flash_attn.cute import flash_attn_varlen_func

    with torch.no_grad():
        out, lse = flash_attn_varlen_func(q, k, v, softcap=softcap or 0.0, return_lse=True,
                                          **kwargs)
    return out, lse


def fa4_causal(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor | None,
               max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, *,
               softcap: float | None = None, sliding_window: int | None = None,
               seqused_k: Tensor | None = None, page_table: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
    """Causal FA4 varlen attention: query i of a request sees keys ``j <= i + seqlen_k - seqlen_q``.

    ``sliding_window`` W (the suite's convention) also requires ``p - j < W``. Packed K/V
    take ``cu_seqlens_k``; a paged cache takes ``seqused_k`` and ``page_table`` with
    ``cu_seqlens_k=None``. Returns ``out`` like ``q`` and natural-log ``lse`` (H, total_q)
    float32 (-inf for a row with no key).
    """
    window = (None, None) if sliding_window is None else (sliding_window - 1, 0)
    return _varlen(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                   max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                   softmax_scale=softmax_scale, softcap=softcap, causal=True, window_size=window,
                   seqused_k=seqused_k, page_table=page_table)


def fa4_dense(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_k: Tensor | None,
              max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, *,
              softcap: float | None = None, sliding_window: int | None = None,
              seqused_k: Tensor | None = None, page_table: Tensor | None = None
              ) -> tuple[Tensor, Tensor]:
    """Non-causal FA4 varlen attention: every query of a request sees all its keys.

    ``sliding_window`` W keeps the keys with ``p - j < W`` (no bound to the right:
    FA4's ``window_size=(W - 1, None)``). Arguments and results as :func:`fa4_causal`.
    """
    window = (None, None) if sliding_window is None else (sliding_window - 1, None)
    return _varlen(q, k, v, cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                   max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k,
                   softmax_scale=softmax_scale, softcap=softcap, causal=False, window_size=window,
                   seqused_k=seqused_k, page_table=page_table)
