"""Exact single-pass Triton kernel for prefix attention over a paged KV cache.

Query position ``p`` sees key ``j`` when ``j`` is causal (optionally inside a sliding window)
or when ``p`` and ``j`` share an image range. Both terms contain ``j == p``, so every query
row sees one contiguous interval of keys ``[lo, hi]``. That makes the mask two comparisons
per score and lets a query tile visit only the key tiles between the smallest ``lo`` and the
largest ``hi`` of its rows; key tiles inside every row's interval run with no mask at all.
Everything that varies per batch (lengths, ranges, page tables, page size) is runtime data,
so a new batch never recompiles the kernel.

An FP8 cache (``float8_e4m3fn`` or ``float8_e5m2`` K/V with float32 ``k_descale`` /
``v_descale`` of shape ``(B, Hkv)``) is read as stored: each tile of codes converts to the
query dtype exactly (every FP8 value is a bf16, fp16 and fp32 value), the K descale joins
the softmax scale (one multiply per score) and the V descale the final normalization (one
per output element), so no dequantized value is ever rounded.

The launcher splits a batch into short requests (at most ``SHORT_QUERY_LEN`` query tokens:
decode steps, speculative drafts) and the rest, and launches the same kernel once per
non-empty group with that group's tile shape: a decode row in a 128-row query tile would
waste 127/128 of the tile's MMA work. Each program reads its request from the group's
``request_ids``; the grouping is runtime data, so only the two tile shapes are compiled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from prefix_referee.verify.kernels.interpreter import interpreter_enabled, patch_interpreter_dot
from prefix_referee.verify.mask import visible_intervals

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Head dims (q/k and v each): multiples of 16 (tl.dot's least K) up to 512 (Gemma 4's global
# layers); non-powers of two are padded to the next power of two and masked.
HEAD_DIM_MULTIPLE, MAX_HEAD_DIM = 16, 512
# Requests with at most this many query tokens run in 16-row query tiles (tl.dot's minimum).
SHORT_QUERY_LEN = 16


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch knobs; the only compile-time choices besides dtype and flags."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def _tile_width(head_dim: int, head_dim_v: int | None) -> int:
    """The wider padded head dim (q/k or v): what registers and shared memory scale with."""
    return triton.next_power_of_2(max(head_dim, head_dim_v or head_dim))


# (fp32?, widest padded head dim up to) -> (long-request config, short-request config).
# fp32 runs exact FMA dots (for checking, not speed), which only fit in small tiles. At 512 a
# 64-row bf16 tile spills (its fp32 accumulator alone takes 128 registers a thread), so long
# tiles drop to 32 rows (mma.sync instead of wgmma). Key tiles are equally wide in both
# configs of a row, so ``kv_tiles_visited`` counts the same tiles for either group. Where
# two configs fit the equal head dims, the one ptxas keeps spill-free for unequal ones too.
_CONFIGS: dict[tuple[bool, int], tuple[KernelConfig, KernelConfig]] = {
    (False, 128): (KernelConfig(128, 64, 8, 3), KernelConfig(16, 64, 4, 3)),
    (False, 256): (KernelConfig(64, 32, 8, 2), KernelConfig(16, 32, 4, 3)),
    (False, 512): (KernelConfig(32, 32, 8, 3), KernelConfig(16, 32, 8, 3)),
    (True, 128): (KernelConfig(32, 32, 4, 2), KernelConfig(16, 32, 4, 2)),
    (True, 256): (KernelConfig(32, 32, 8, 2), KernelConfig(16, 32, 4, 2)),
    (True, 512): (KernelConfig(16, 16, 4, 2), KernelConfig(16, 16, 4, 2)),
}


def _configs(head_dim: int, dtype: torch.dtype, head_dim_v: int | None
             ) -> tuple[KernelConfig, KernelConfig]:
    width, fp32 = _tile_width(head_dim, head_dim_v), dtype == torch.float32
    return next(configs for (is_fp32, up_to), configs in _CONFIGS.items()
                if is_fp32 == fp32 and width <= up_to)


def default_config(head_dim: int, dtype: torch.dtype, head_dim_v: int | None = None
                   ) -> KernelConfig:
    """sm90 (H100/H200) tiles for requests of more than ``SHORT_QUERY_LEN`` query tokens.

    Chosen per dtype and widest padded head dim so that every variant compiles for sm90
    within shared memory, with all three key loops pipelined and no register spills
    (:func:`sm90_resources` checks it; ``python -m benchmarks.prefix_kernels --sm90``
    prints the table). ``head_dim_v`` defaults to ``head_dim``.
    """
    return _configs(head_dim, dtype, head_dim_v)[0]


def default_short_config(head_dim: int, dtype: torch.dtype, head_dim_v: int | None = None
                         ) -> KernelConfig:
    """Tiles for requests of at most ``SHORT_QUERY_LEN`` query tokens (decode steps).

    16 query rows, the least tl.dot takes, and key tiles as wide as :func:`default_config`'s.
    Same compile guarantees.
    """
    return _configs(head_dim, dtype, head_dim_v)[1]


def split_requests(
    query_lens: Sequence[int], short_len: int = SHORT_QUERY_LEN
) -> tuple[list[int], list[int]]:
    """Request indices with ``1..short_len`` query tokens, and those with more.

    Requests with no query token are in neither group: they have no row to compute.
    """
    short = [b for b, n in enumerate(query_lens) if 0 < n <= short_len]
    long = [b for b, n in enumerate(query_lens) if n > short_len]
    return short, long


@triton.jit
def _tanh(x):
    # tl has no tanh that both the interpreter and triton 3.6 accept. The exp2 form
    # (1 - t) / (1 + t) cancels for small |x| (relative error ~ u / |x|: 38 ulp of the
    # LSE at softcap 30), so below 0.3 the odd Taylor series to x^9 is used (its
    # truncation is under half an ulp there).
    ax = tl.abs(x)
    t = tl.exp2(ax * (-2.0 * _LOG2E))
    large = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = x * (1.0 + x2 * (-1.0 / 3 + x2 * (2.0 / 15 + x2 * (-17.0 / 315 + x2 * (62.0 / 2835)))))
    return tl.where(ax < 0.3, small, tl.where(x < 0, -large, large))


@triton.jit
def _columns(BLOCK: tl.constexpr, DIM: tl.constexpr):
    """Column offsets of a head dim padded to a power of two, and which are real."""
    offs = tl.arange(0, BLOCK)
    if BLOCK == DIM:
        ok = tl.full([BLOCK], True, tl.int1)  # no mask: loads stay vectorized
    else:
        ok = offs < DIM
    return offs, ok


@triton.jit
def _attend_tiles(
    acc,
    l_i,
    m_i,
    q,
    k_head_ptr,
    v_head_ptr,
    page_row_ptr,
    stride_kp,
    stride_ks,
    stride_vp,
    stride_vs,
    page_size,
    seq_len,
    row_lo,
    row_hi,
    tile_begin,
    tile_end,
    sm_scale,
    softcap,
    offs_d,
    d_ok,
    offs_dv,
    dv_ok,
    BLOCK_N: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    MASKED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update over key tiles [tile_begin, tile_end); MASKED applies [lo, hi]."""
    # Count from 0: triton's pipeliner left loops whose lower bound came out of another loop
    # (the ranges loop) unpipelined on sm90.
    for i in range(0, tile_end - tile_begin):
        offs_n = (tile_begin + i) * BLOCK_N + tl.arange(0, BLOCK_N)
        if MASKED:
            # Keys past seq_len may sit in poisoned pages or slots: never load them.
            kv_ok = offs_n < seq_len
        else:
            kv_ok = tl.full([BLOCK_N], True, tl.int1)
        page = tl.load(page_row_ptr + offs_n // page_size, mask=kv_ok, other=0).to(tl.int64)
        slot = offs_n % page_size
        k = tl.load(
            k_head_ptr + (page * stride_kp + slot * stride_ks)[:, None] + offs_d[None, :],
            mask=kv_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        v = tl.load(
            v_head_ptr + (page * stride_vp + slot * stride_vs)[:, None] + offs_dv[None, :],
            mask=kv_ok[:, None] & dv_ok[None, :],
            other=0.0,
        )
        # An FP8 tile converts exactly (its descales are applied outside the dots).
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if HAS_SOFTCAP:
            s = softcap * _tanh(s * (sm_scale / softcap)) * _LOG2E
        else:
            s = s * (sm_scale * _LOG2E)
        if MASKED:
            visible = (offs_n[None, :] >= row_lo[:, None]) & (offs_n[None, :] <= row_hi[:, None])
            s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        if MASKED:
            # A row may see nothing in this tile: keep exp2 away from (-inf) - (-inf).
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_ref = m_new
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


# Arguments that change from batch to batch must not be specialized (== 1, % 16), or a new
# batch could compile a new kernel.
@triton.jit(
    do_not_specialize=["stride_lh", "stride_pt", "stride_rb", "stride_db", "stride_dh",
                       "max_ranges", "page_size", "window"]
)
def _prefix_attention_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    page_table_ptr,
    cu_seqlens_q_ptr,
    seqused_k_ptr,
    ranges_ptr,
    request_ids_ptr,
    k_descale_ptr,
    v_descale_ptr,
    stride_qt,
    stride_qh,
    stride_kp,
    stride_ks,
    stride_kh,
    stride_vp,
    stride_vs,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lh,
    stride_pt,
    stride_rb,
    stride_rr,
    stride_db,
    stride_dh,
    max_ranges,
    page_size,
    heads_per_kv,
    sm_scale,
    window,
    softcap,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    CLAMP_RANGES: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    KV_DESCALE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile_m = tl.program_id(0)
    head = tl.program_id(1)
    # The launch covers one group of requests: everything per request is indexed by the
    # real request index, never by the position in the group.
    batch = tl.load(request_ids_ptr + tl.program_id(2))
    q_begin = tl.load(cu_seqlens_q_ptr + batch)
    q_len = tl.load(cu_seqlens_q_ptr + batch + 1) - q_begin
    if tile_m * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seqused_k_ptr + batch)
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < q_len
    pos = seq_len - q_len + offs_m

    # Union of the ranges containing each row (padding (-1, -1) never contains a position).
    span_lo = pos
    span_hi = pos
    range_row_ptr = ranges_ptr + batch * stride_rb
    for r in range(0, max_ranges):
        start = tl.load(range_row_ptr + r * stride_rr)
        end = tl.load(range_row_ptr + r * stride_rr + 1)
        inside = (start <= pos) & (pos <= end)
        span_lo = tl.where(inside, tl.minimum(span_lo, start), span_lo)
        span_hi = tl.where(inside, tl.maximum(span_hi, end), span_hi)

    # Each row sees the interval [row_lo, row_hi]; rows past q_len see nothing.
    row_hi = tl.minimum(span_hi, seq_len - 1)
    if HAS_WINDOW:
        row_lo = tl.maximum(pos - window + 1, 0)
        if not CLAMP_RANGES:
            row_lo = tl.minimum(row_lo, tl.maximum(span_lo, 0))
    else:
        row_lo = tl.zeros([BLOCK_M], tl.int32)
    row_lo = tl.where(row_ok, row_lo, seq_len)
    row_hi = tl.where(row_ok, row_hi, -1)

    # Key tiles holding a key some row sees, and the sub-run every row sees in full.
    tile_begin = tl.min(row_lo, 0) // BLOCK_N
    tile_end = tl.max(row_hi, 0) // BLOCK_N + 1
    full_begin = tl.cdiv(tl.max(tl.where(row_ok, row_lo, 0), 0), BLOCK_N)
    full_end = (tl.min(tl.where(row_ok, row_hi, seq_len), 0) + 1) // BLOCK_N
    no_full = full_begin >= full_end
    full_begin = tl.where(no_full, tile_end, full_begin)
    full_end = tl.where(no_full, tile_end, full_end)

    offs_d, d_ok = _columns(BLOCK_D, HEAD_DIM)
    offs_dv, dv_ok = _columns(BLOCK_DV, HEAD_DIM_V)
    q_rows = (q_begin + offs_m).to(tl.int64)
    q = tl.load(
        q_ptr + q_rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    kv_head = head // heads_per_kv
    k_head_ptr = k_ptr + kv_head * stride_kh
    v_head_ptr = v_ptr + kv_head * stride_vh
    page_row_ptr = page_table_ptr + batch * stride_pt
    if KV_DESCALE:
        # This program's request and KV head: one descale each for all its keys.
        descale_at = batch * stride_db + kv_head * stride_dh
        qk_scale = sm_scale * tl.load(k_descale_ptr + descale_at)
        v_scale = tl.load(v_descale_ptr + descale_at)
    else:
        qk_scale = sm_scale

    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    # Masked tiles before the fully visible run, the run itself, masked tiles after it.
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_head_ptr, v_head_ptr, page_row_ptr,
        stride_kp, stride_ks, stride_vp, stride_vs, page_size, seq_len, row_lo, row_hi,
        tile_begin, full_begin, qk_scale, softcap, offs_d, d_ok, offs_dv, dv_ok,
        BLOCK_N, HAS_SOFTCAP, True, DOT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_head_ptr, v_head_ptr, page_row_ptr,
        stride_kp, stride_ks, stride_vp, stride_vs, page_size, seq_len, row_lo, row_hi,
        full_begin, full_end, qk_scale, softcap, offs_d, d_ok, offs_dv, dv_ok,
        BLOCK_N, HAS_SOFTCAP, False, DOT_PRECISION,
    )  # fmt: skip
    acc, l_i, m_i = _attend_tiles(
        acc, l_i, m_i, q, k_head_ptr, v_head_ptr, page_row_ptr,
        stride_kp, stride_ks, stride_vp, stride_vs, page_size, seq_len, row_lo, row_hi,
        full_end, tile_end, qk_scale, softcap, offs_d, d_ok, offs_dv, dv_ok,
        BLOCK_N, HAS_SOFTCAP, True, DOT_PRECISION,
    )  # fmt: skip

    has_keys = l_i > 0.0
    l_safe = tl.where(has_keys, l_i, 1.0)
    if KV_DESCALE:
        out = acc * (v_scale / l_safe)[:, None]
    else:
        out = acc / l_safe[:, None]
    lse = tl.where(has_keys, (m_i + tl.log2(l_safe)) * _LN2, float("-inf"))
    tl.store(
        out_ptr + q_rows[:, None] * stride_ot + head * stride_oh + offs_dv[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dv_ok[None, :],
    )
    tl.store(lse_ptr + head.to(tl.int64) * stride_lh + q_rows, lse, mask=row_ok)


def _constexprs(head_dim: int, head_dim_v: int, dtype: torch.dtype, config: KernelConfig,
                has_window: bool, clamp_ranges: bool, has_softcap: bool,
                kv_descale: bool = False) -> dict[str, object]:
    """The kernel's compile-time arguments: what one variant is compiled for."""
    return {
        "HEAD_DIM": head_dim, "BLOCK_D": triton.next_power_of_2(head_dim),
        "HEAD_DIM_V": head_dim_v, "BLOCK_DV": triton.next_power_of_2(head_dim_v),
        "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
        "HAS_WINDOW": has_window, "CLAMP_RANGES": clamp_ranges, "HAS_SOFTCAP": has_softcap,
        "KV_DESCALE": kv_descale,
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
    }


def _check_inputs(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqused_k: torch.Tensor,
    seq_ranges: torch.Tensor,
    sliding_window: int | None,
    softcap: float | None,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> None:
    """Reject malformed inputs with one-line errors before they become wrong numbers."""
    if q.dim() != 3:
        raise ValueError(f"q must be (total_q, H, D), got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or v_cache.dim() != 4 or v_cache.shape[:3] != k_cache.shape[:3]:
        raise ValueError(
            f"k_cache and v_cache must be (num_pages, page_size, Hkv, D) and (..., Dv) with "
            f"the same first three sizes, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}"
        )
    heads, head_dim = q.shape[1], q.shape[2]
    kv_heads = k_cache.shape[2]
    if k_cache.shape[3] != head_dim:
        raise ValueError(f"kv head dim {k_cache.shape[3]} != q head dim {head_dim}")
    for name, dim in (("head dim", head_dim), ("value head dim", v_cache.shape[3])):
        if dim % HEAD_DIM_MULTIPLE or not HEAD_DIM_MULTIPLE <= dim <= MAX_HEAD_DIM:
            raise ValueError(f"{name} must be a multiple of {HEAD_DIM_MULTIPLE} in "
                             f"[{HEAD_DIM_MULTIPLE}, {MAX_HEAD_DIM}], got {dim}")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"query heads {heads} must be a multiple of kv heads {kv_heads}")
    fp8 = k_cache.dtype in _FP8_DTYPES
    kv_dtype = k_cache.dtype if fp8 else q.dtype
    if q.dtype not in _DTYPES or k_cache.dtype != kv_dtype or v_cache.dtype != kv_dtype:
        raise ValueError(
            f"q must be one of {_DTYPES} and k_cache, v_cache share q's dtype or one of "
            f"{_FP8_DTYPES}, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}"
        )
    if fp8 != (k_descale is not None) or fp8 != (v_descale is not None):
        raise ValueError("k_descale and v_descale go with an FP8 k_cache / v_cache, and only "
                         "with one")
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache)):
        raise ValueError("q, k_cache and v_cache must be contiguous in the head dim")
    if seqused_k.dim() != 1:
        raise ValueError(f"seqused_k must be (B,), got shape {tuple(seqused_k.shape)}")
    batch = seqused_k.shape[0]
    metadata = {
        "page_table": (page_table, 2, (batch,)),
        "cu_seqlens_q": (cu_seqlens_q, 1, (batch + 1,)),
        "seqused_k": (seqused_k, 1, (batch,)),
        "seq_ranges": (seq_ranges, 3, (batch,)),
    }
    for name, (tensor, ndim, lead) in metadata.items():
        if tensor.dtype != torch.int32 or tensor.dim() != ndim or tuple(tensor.shape[:1]) != lead:
            raise ValueError(
                f"{name} must be int32 with {ndim} dims and leading size {lead[0]}, "
                f"got {tensor.dtype} {tuple(tensor.shape)}"
            )
    if seq_ranges.shape[2] != 2:
        raise ValueError(f"seq_ranges must be (B, max_ranges, 2), got {tuple(seq_ranges.shape)}")
    descales = tuple(t for t in (k_descale, v_descale) if t is not None)
    for name, t in zip(("k_descale", "v_descale"), descales, strict=False):
        if t.dtype != torch.float32 or tuple(t.shape) != (batch, kv_heads):
            raise ValueError(f"{name} must be float32 of shape (B, Hkv) = {(batch, kv_heads)}, "
                             f"got {t.dtype} {tuple(t.shape)}")
    tensors = (q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, seq_ranges, *descales)
    if len({t.device for t in tensors}) != 1:
        raise ValueError("all tensors must be on one device")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")


def _group_ids(groups: Sequence[Sequence[int]], device: torch.device) -> list[torch.Tensor]:
    """The groups' request indices on ``device`` in one host->device copy.

    Each group starts at a multiple of 4 int32s, so every view is 16-byte aligned as a
    fresh tensor is: Triton specializes pointers on alignment, and an unaligned view would
    compile another kernel for some batch compositions.
    """
    flat: list[int] = []
    starts = []
    for ids in groups:
        flat += [0] * (-len(flat) % 4)
        starts.append(len(flat))
        flat += ids
    ids_dev = torch.tensor(flat, dtype=torch.int32).to(device, non_blocking=True)
    return [ids_dev[s : s + len(ids)] for s, ids in zip(starts, groups, strict=True)]


def prefix_attention_paged(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    page_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqused_k: torch.Tensor,
    seq_ranges: torch.Tensor,
    softmax_scale: float,
    sliding_window: int | None = None,
    clamp_ranges_to_window: bool = False,
    softcap: float | None = None,
    *,
    max_seqlen_q: int | None = None,
    config: KernelConfig | None = None,
    short_config: KernelConfig | None = None,
    query_lens_host: Sequence[int] | None = None,
    short_query_len: int = SHORT_QUERY_LEN,
    k_descale: torch.Tensor | None = None,
    v_descale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of packed varlen queries over a paged KV cache with causal-OR-range masking.

    ``k_cache`` is (num_pages, page_size, Hkv, D) and ``v_cache`` (num_pages, page_size, Hkv,
    Dv): the value head dim may differ from the query/key one. Returns ``out`` (total_q, H, Dv)
    in q's dtype and ``lse`` (H, total_q) float32, natural log. An FP8 cache comes with
    ``k_descale`` and ``v_descale``, float32 (B, Hkv): key ``j`` of request ``b``, KV head
    ``h``, is ``k_cache[...] * k_descale[b, h]`` (values likewise).

    Requests of at most ``short_query_len`` query tokens run in one launch with
    ``short_config`` (default: :func:`default_short_config`), the others in one launch with
    ``config`` (default: :func:`default_config`); ``config`` alone applies to both groups.
    The split needs every request's query length on the host: pass ``query_lens_host``
    (the lengths cu_seqlens_q encodes) to launch without waiting for the device; otherwise
    cu_seqlens_q is read back once (one device->host copy, a stream sync on CUDA, whether or
    not ``max_seqlen_q`` is given). ``max_seqlen_q`` is accepted for compatibility; when
    it is at most ``short_query_len`` every request is short and nothing is read back.
    """
    _check_inputs(
        q, k_cache, v_cache, page_table, cu_seqlens_q, seqused_k, seq_ranges,
        sliding_window, softcap, k_descale, v_descale,
    )  # fmt: skip
    total_q, heads, head_dim = q.shape
    head_dim_v = v_cache.shape[3]
    batch = seqused_k.shape[0]
    if query_lens_host is not None:
        query_lens = [int(n) for n in query_lens_host]
        if len(query_lens) != batch or min(query_lens, default=0) < 0:
            raise ValueError(
                f"query_lens_host must hold {batch} lengths >= 0, got {len(query_lens)}"
            )
        groups = list(split_requests(query_lens, short_query_len))
        group_max = [max((query_lens[b] for b in ids), default=0) for ids in groups]
    elif batch and max_seqlen_q is not None and max_seqlen_q <= short_query_len:
        # Every request is short (or empty): one short launch over the whole batch.
        groups, group_max = [list(range(batch)), []], [max_seqlen_q, 0]
    elif batch:
        cu = cu_seqlens_q.tolist()  # the one device->host copy
        query_lens = [cu[b + 1] - cu[b] for b in range(batch)]
        groups = list(split_requests(query_lens, short_query_len))
        group_max = [max((query_lens[b] for b in ids), default=0) for ids in groups]
    else:
        groups, group_max = [[], []], [0, 0]
    if total_q == 0 or max(group_max) == 0:
        lse = torch.full((heads, total_q), float("-inf"), dtype=torch.float32, device=q.device)
        return q.new_zeros(total_q, heads, head_dim_v), lse
    out = q.new_empty(total_q, heads, head_dim_v)
    lse = torch.empty((heads, total_q), dtype=torch.float32, device=q.device)
    if seq_ranges.shape[1] == 0:
        seq_ranges = torch.full((batch, 1, 2), -1, dtype=torch.int32, device=q.device)
    configs = (
        short_config or config or default_short_config(head_dim, q.dtype, head_dim_v),
        config or default_config(head_dim, q.dtype, head_dim_v),
    )
    if interpreter_enabled():
        patch_interpreter_dot()  # the interpreter's bf16 dot multiplies bit patterns
    launches = [
        (ids, rows, cfg)
        for ids, rows, cfg in zip(groups, group_max, configs, strict=True)
        if ids and rows
    ]
    request_ids = _group_ids([ids for ids, _, _ in launches], q.device)
    # One pair of strides serves both descales (a broadcast view becomes a copy). Without
    # descales the kernel never reads them: lse stands in for both pointers.
    k_scales, v_scales = ((k_descale.contiguous(), v_descale.contiguous())
                          if k_descale is not None else (lse, lse))
    for (ids, rows, cfg), ids_dev in zip(launches, request_ids, strict=True):
        grid = (triton.cdiv(rows, cfg.block_m), heads, len(ids))
        _prefix_attention_kernel[grid](
            q, k_cache, v_cache, out, lse, page_table, cu_seqlens_q, seqused_k, seq_ranges,
            ids_dev, k_scales, v_scales,
            q.stride(0), q.stride(1),
            k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
            v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
            out.stride(0), out.stride(1), lse.stride(0),
            page_table.stride(0), seq_ranges.stride(0), seq_ranges.stride(1),
            k_scales.stride(0), k_scales.stride(1),
            seq_ranges.shape[1],
            k_cache.shape[1], heads // k_cache.shape[2],
            float(softmax_scale), sliding_window or 0, float(softcap or 0.0),
            **_constexprs(head_dim, head_dim_v, q.dtype, cfg, sliding_window is not None,
                          clamp_ranges_to_window, softcap is not None, k_descale is not None),
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )  # fmt: skip
    return out, lse


# H100/H200: the most shared memory one block can opt into (227 KiB).
SM90_MAX_SHARED_BYTES = 227 * 1024
_TRITON_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
                 torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5"}
# Arguments the launch sees as multiples of 16 (head dims are), which Triton specializes on:
# the K/V gathers only vectorize and pipeline (cp.async) with them.
_DIVISIBLE_BY_16 = ("stride_qt", "stride_qh", "stride_kp", "stride_ks", "stride_kh",
                    "stride_vp", "stride_vs", "stride_vh", "stride_ot", "stride_oh")


class Sm90Resources(NamedTuple):
    """What one kernel variant needs on an sm90 SM, read from an offline compile."""

    shared_bytes: int
    registers: int  # per thread
    spill_bytes: int  # stack frame per thread: spilled registers (no calls, no local arrays)
    pipelined_loops: int  # key-tile loops that load through cp.async ahead of use (3 is all)

    def problem(self) -> str | None:
        """Why this variant is not fit for an H100/H200, or None."""
        if self.shared_bytes > SM90_MAX_SHARED_BYTES:
            return f"{self.shared_bytes} B of shared memory > {SM90_MAX_SHARED_BYTES}"
        if self.spill_bytes:
            return f"{self.spill_bytes} B of register spills"
        if self.pipelined_loops < 3:
            return f"only {self.pipelined_loops} of 3 key loops pipelined"
        return None


def _signature(dtype: torch.dtype, kv_dtype: torch.dtype | None = None) -> dict[str, str]:
    """Triton's type string for each kernel argument, as a launch on ``dtype`` (and K/V in
    ``kv_dtype``, default ``dtype``) sees them."""
    data, kv = "*" + _TRITON_TYPES[dtype], "*" + _TRITON_TYPES[kv_dtype or dtype]
    types = {"q_ptr": data, "k_ptr": kv, "v_ptr": kv, "out_ptr": data, "lse_ptr": "*fp32",
             "k_descale_ptr": "*fp32", "v_descale_ptr": "*fp32",
             "sm_scale": "fp32", "softcap": "fp32"}
    kernel = _prefix_attention_kernel
    return {name: types.get(name, "constexpr" if name.isupper()
                            else "*i32" if name.endswith("_ptr") else "i32")
            for name in kernel.arg_names}


def sm90_unavailable_reason() -> str | None:
    """Why :func:`sm90_resources` cannot compile here, or None."""
    if not isinstance(_prefix_attention_kernel, triton.runtime.JITFunction):
        return ("the kernel was decorated under TRITON_INTERPRET=1: compile in a process "
                "without it")
    try:
        ptxas = _ptxas()
    except Exception as exc:  # no NVIDIA backend in this Triton build, whatever the error
        return f"Triton's NVIDIA backend is not usable here ({type(exc).__name__}: {exc})"
    for tool in (ptxas, _cuobjdump()):
        if not os.path.isfile(tool):
            return f"no {os.path.basename(tool)} at {tool}"
    return None


def sm90_resources(head_dim: int, head_dim_v: int, dtype: torch.dtype, config: KernelConfig,
                   *, has_window: bool = True, clamp_ranges: bool = True,
                   has_softcap: bool = True, kv_dtype: torch.dtype | None = None
                   ) -> Sm90Resources:
    """Compile one variant for sm90 on this machine (no GPU needed) and read what it needs.

    Uses Triton's NVIDIA backend and its bundled ptxas and cuobjdump
    (:func:`sm90_unavailable_reason` says whether they are here). Registers and spills are
    read from the cubin Triton built, so they are what a launch gets: a ptxas run of our own
    would miss the flags Triton passes (Triton 3.9 adds ``--regAllocOptLevel=2``, without
    which its ptxas 13 spills the fp32 short config at 96 registers; Triton's build takes
    108 and spills nothing). The flags default to all on, the variant with the most code;
    ``kv_dtype`` an FP8 dtype compiles the variant that reads an FP8 cache.
    """
    import subprocess
    import tempfile
    from pathlib import Path

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _prefix_attention_kernel
    aligned = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]]
               for name in kernel.arg_names if name.endswith("_ptr") or name in _DIVISIBLE_BY_16}
    source = ASTSource(fn=kernel, signature=_signature(dtype, kv_dtype), attrs=aligned,
                       constexprs=_constexprs(head_dim, head_dim_v, dtype, config, has_window,
                                              clamp_ranges, has_softcap,
                                              kv_dtype in _FP8_DTYPES))
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": config.num_warps,
                                       "num_stages": config.num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp, "kernel.cubin")
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)],
                               capture_output=True, text=True, check=True).stdout
    registers = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    if registers is None or stack is None:
        raise RuntimeError(f"unexpected cuobjdump -res-usage output: {usage!r}")
    loops = compiled.asm["ttgir"].split("scf.for")[1:]
    return Sm90Resources(
        shared_bytes=compiled.metadata.shared,
        registers=int(registers.group(1)),
        spill_bytes=int(stack.group(1)),
        pipelined_loops=sum("async_wait" in loop.split("scf.yield")[0] for loop in loops),
    )


def _ptxas() -> str:
    """Triton's bundled ptxas (its location moved between Triton versions)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(90).path
    except (ImportError, TypeError):
        from triton import knobs

        return knobs.nvidia.ptxas.path


def _cuobjdump() -> str:
    """The cuobjdump Triton bundles beside its ptxas."""
    return os.path.join(os.path.dirname(_ptxas()), "cuobjdump")


class TileCounts(NamedTuple):
    """KV tiles loaded for one request, summed over its query tiles."""

    visited: int  # by this kernel
    causal: int  # by a causal(-window) loop that ignores the ranges, up to the diagonal
    dense: int  # by a loop over every key tile, as a mask_mod without block sparsity does


def kv_tiles_visited(
    context_len: int,
    query_len: int,
    ranges: Sequence[tuple[int, int]],
    block_m: int,
    block_n: int,
    sliding_window: int | None = None,
    clamp_ranges_to_window: bool = False,
) -> TileCounts:
    """Mirror of the kernel's tile loop for one request, to report how much it skips."""
    seq_len = context_len + query_len
    lo, hi = visible_intervals(torch.arange(context_len, seq_len), tuple(ranges), seq_len,
                               sliding_window, clamp_ranges_to_window)
    visited = causal = dense = 0
    for m0 in range(0, query_len, block_m):
        positions = range(context_len + m0, context_len + min(m0 + block_m, query_len))
        rows = slice(m0, m0 + block_m)
        visited += int(hi[rows].max()) // block_n - int(lo[rows].min()) // block_n + 1
        causal_lo = 0 if sliding_window is None else max(positions[0] - sliding_window + 1, 0)
        causal += positions[-1] // block_n - causal_lo // block_n + 1
        dense += triton.cdiv(seq_len, block_n)
    return TileCounts(visited, causal, dense)
