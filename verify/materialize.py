"""Turn a case into the tensors of the target contract (docs/contract.md).

Values come from :mod:`verify.values` (counter-based: the same bits on every device, and a
request's values do not depend on the batch around it), drawn in float32 on the target
device and rounded once to the case dtype; every target and the float64 reference read
the same rounded values. With an FP8 ``kv_dtype``, K and V are stored as FP8 codes with
float32 descales per KV head (:func:`kv_descales`), and the references read the codes
times their descales, exactly, in float64. The layout (lengths, ranges, page tables, each
query row's visible key interval) is built on the host with vectorized ops and moved
once. The paged cache scatters each request's keys over a random permutation of pages and
fills every slot no request owns (spare pages, slots past ``seqused_k``, the padding and
slack columns of the page table) with poison, so a kernel that reads past a sequence
shows it in its output.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefix_referee.references import Batch, LogWeight
from prefix_referee.references.mask import key_intervals, range_bounds
from prefix_referee.verify.case import CaseSpec, read_case
from prefix_referee.verify.values import (
    below,
    hashed_bits,
    normal_from_bits,
    request_stream,
    round_to_fp8,
    stream_keys,
)

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32,
                "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
# Large enough that an attended poisoned slot dominates its row, small enough for fp16; an
# FP8 cache holds the largest e4m3 code instead (1024 is past e4m3's range).
FINITE_POISON = 1024.0
FP8_POISON = 448.0
# FP8 K/V: a code is the drawn value times FP8_CODE_SCALE (normal tails reach about 400),
# clamped to e4m3's largest magnitude FP8_SATURATED, and a share of the codes is that
# largest magnitude itself (outliers a quantizer saturated), then rounded to the format.
FP8_CODE_SCALE = 96.0
FP8_SATURATED = 448.0
FP8_SATURATED_SHARE = 1 / 128
# FP8 descales: log2 of K's in [-7.5, -6) and of V's in [-4, -2.5) (dequantized K about
# the size of the other cases' K; V's descale 2^3.5 = 11.3 times K's), KV head h at a
# fraction 0.5 + h * golden ratio (mod 1) of the way, so heads differ; a per-tensor scale
# is at 0.5.
FP8_K_LOG2_DESCALE, FP8_V_LOG2_DESCALE, FP8_LOG2_SPREAD = -7.5, -4.0, 1.5
_GOLDEN = (5**0.5 - 1) / 2
# Spare pages beyond the ones requests own, so poisoned pages exist in every layout.
SPARE_PAGES = 2
# Value distributions: score width, near-tie spread, outlier share and size.
PEAKY_SCALE = 3.0
NEAR_TIE_SPREAD = 0.01
OUTLIER_SHARE, OUTLIER_SCALE = 0.01, 20.0


@dataclass(frozen=True)
class RequestView:
    """Where request ``index`` lives in the packed tensors."""

    index: int
    context_len: int
    query_len: int
    seq_len: int
    q_start: int
    k_start: int
    ranges: tuple[tuple[int, int], ...]

    @property
    def q_slice(self) -> slice:
        return slice(self.q_start, self.q_start + self.query_len)

    @property
    def k_slice(self) -> slice:
        return slice(self.k_start, self.k_start + self.seq_len)


@dataclass(frozen=True)
class MaterializedCase:
    """Every tensor and scalar a target may need; ``spec`` is the JSON case behind it.

    ``layout`` holds the same layout as host index tensors, among them each query row's
    visible packed key rows, the only mask the references need.
    """

    spec: CaseSpec
    q: Tensor
    k: Tensor
    v: Tensor
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    seqused_k: Tensor
    k_cache: Tensor | None
    v_cache: Tensor | None
    page_table: Tensor | None
    query_ranges: Tensor
    seq_ranges: Tensor
    context_lens: Tensor
    query_lens: Tensor
    k_descale: Tensor | None
    v_descale: Tensor | None
    softmax_scale: float
    sliding_window: int | None
    clamp_ranges_to_window: bool
    softcap: float | None
    dtype: torch.dtype
    kv_dtype: torch.dtype
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    page_size: int | None
    layout: Layout

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def max_seqlen_q(self) -> int:
        return max(r.query_len for r in self.spec.requests)

    @property
    def max_seqlen_k(self) -> int:
        return max(r.seq_len for r in self.spec.requests)

    def requests(self) -> Iterator[RequestView]:
        q_start = k_start = 0
        for index, r in enumerate(self.spec.requests):
            yield RequestView(index, r.context_len, r.query_len, r.seq_len, q_start, k_start,
                              r.ranges)
            q_start += r.query_len
            k_start += r.seq_len

    @property
    def fp8_kv(self) -> bool:
        """Whether ``k``/``v`` (and the caches) hold FP8 codes with descales."""
        return self.k_descale is not None

    def dequantized(self, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
        """Packed ``k`` and ``v`` as values in ``dtype``: an FP8 code times its request's
        and KV head's descale, formed exactly in float64 and rounded once to ``dtype``
        (without FP8, ``k`` and ``v`` converted to ``dtype``)."""
        if not self.fp8_kv:
            return self.k.to(dtype), self.v.to(dtype)
        rows = self.layout.k_request.to(self.device)
        return tuple((t.double() * scale.double()[rows][:, :, None]).to(dtype)
                     for t, scale in ((self.k, self.k_descale), (self.v, self.v_descale)))

    def batch(self, bias: LogWeight | None = None) -> Batch:
        """The case as the references see it (packed ``q``/``k``/``v`` and key intervals);
        an FP8 cache's K/V dequantized exactly, in float64."""
        k, v = self.dequantized() if self.fp8_kv else (self.k, self.v)
        return Batch(self.q, k, v, self.layout.rows_lo, self.layout.rows_hi,
                     self.softmax_scale, self.softcap, bias)

    def tensors(self) -> dict[str, Tensor]:
        """Every tensor of the contract by name (those the layout has)."""
        names = ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "k_cache",
                 "v_cache", "page_table", "query_ranges", "seq_ranges", "context_lens",
                 "query_lens", "k_descale", "v_descale")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def cumulative_lengths(lengths: list[int]) -> Tensor:
    """``cu_seqlens`` of a varlen call: 0, then the running sums of ``lengths`` (int32)."""
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()],
                        dtype=torch.int32)


@dataclass(frozen=True)
class Layout:
    """Host-side index tensors of a case (int64), one entry per request, query or key row."""

    query_lens: Tensor  # (B,)
    seq_lens: Tensor
    context_lens: Tensor
    k_starts: Tensor  # first packed key row of each request
    ranges: Tensor  # (B, R, 2) sorted, padded with (-1, -1)
    q_request: Tensor  # (total_q,) request of each query row
    q_positions: Tensor  # absolute position of each query row
    range_start: Tensor  # the union of the ranges holding each query row, or -1
    range_end: Tensor
    rows_lo: Tensor  # the packed key rows each query row sees: [rows_lo, rows_hi]
    rows_hi: Tensor
    k_request: Tensor  # (total_k,)
    k_index: Tensor  # position of each key in its request


def layout_of(spec: CaseSpec) -> Layout:
    """The host index tensors of ``spec`` (vectorized over rows)."""
    query_lens = torch.tensor([r.query_len for r in spec.requests])
    seq_lens = torch.tensor([r.seq_len for r in spec.requests])
    context_lens = seq_lens - query_lens
    batch = torch.arange(len(spec.requests))
    q_request = torch.repeat_interleave(batch, query_lens)
    k_request = torch.repeat_interleave(batch, seq_lens)
    q_starts = torch.cumsum(query_lens, 0) - query_lens
    k_starts = torch.cumsum(seq_lens, 0) - seq_lens
    q_positions = torch.arange(len(q_request)) - q_starts[q_request] + context_lens[q_request]
    width = max(max(len(r.ranges) for r in spec.requests), 1)
    ranges = torch.full((len(spec.requests), width, 2), -1, dtype=torch.long)
    for b, r in enumerate(spec.requests):
        if r.ranges:
            ranges[b, : len(r.ranges)] = torch.tensor(sorted(r.ranges))
    candidates = ranges[q_request]
    start, end = range_bounds(q_positions, candidates[..., 0], candidates[..., 1])
    lo, hi = key_intervals(q_positions, start, end, seq_lens[q_request], spec.sliding_window,
                           spec.clamp_ranges_to_window)
    offset = k_starts[q_request]
    return Layout(query_lens, seq_lens, context_lens, k_starts, ranges, q_request, q_positions,
                  start, end, lo + offset, hi + offset, k_request,
                  torch.arange(len(k_request)) - k_starts[k_request])


def _streams(spec: CaseSpec) -> list[int]:
    return [r.seed if r.seed is not None else request_stream(spec.seed, i)
            for i, r in enumerate(spec.requests)]


def _values(streams: list[int], name: str, token_request: Tensor, token_index: Tensor,
            width: int, device: torch.device) -> Tensor:
    """32 random bits per element of a ``(tokens, width)`` tensor of one stream kind."""
    keys = torch.tensor([stream_keys(s, name) for s in streams], dtype=torch.long,
                        device=device).view(-1, 2)
    rows = token_request.to(device)
    counter = (token_index.to(device)[:, None] * width
               + torch.arange(width, device=device)[None, :])
    return hashed_bits(counter, keys[rows, 0][:, None], keys[rows, 1][:, None])


def _draw_inputs(spec: CaseSpec, layout: Layout, device: torch.device
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v in float32 shaped by the value distribution (before rounding)."""
    h, hkv, d, dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.value_dim
    streams = _streams(spec)
    q_index = layout.q_positions - layout.context_lens[layout.q_request]

    def normal(name: str, requests: Tensor, index: Tensor, heads: int, dim: int) -> Tensor:
        bits = _values(streams, name, requests, index, heads * dim, device)
        return normal_from_bits(bits).view(-1, heads, dim)

    q = normal("q", layout.q_request, q_index, h, d)
    k = normal("k", layout.k_request, layout.k_index, hkv, d)
    v = normal("v", layout.k_request, layout.k_index, hkv, dv)
    if spec.value_distribution == "peaky":
        # Scores ~9x wider than normal: softmax rows close to one-hot.
        q, k = q * PEAKY_SCALE, k * PEAKY_SCALE
    elif spec.value_distribution == "near_ties":
        # All keys of a request's head nearly equal: scores tie to within rounding.
        first = layout.k_starts.to(device)[layout.k_request.to(device)]
        k = k[first] + k * NEAR_TIE_SPREAD
    elif spec.value_distribution == "outliers":
        # About 1% of entries 20x larger, as activation outliers are.
        for name, t in (("k_outliers", k), ("v_outliers", v)):
            bits = _values(streams, name, layout.k_request, layout.k_index,
                           t.shape[1] * t.shape[2], device).view(t.shape)
            t.mul_(torch.where(below(bits, OUTLIER_SHARE), OUTLIER_SCALE, 1.0))
    return q, k, v


def _poison_value(spec: CaseSpec) -> float:
    if spec.poison == "nan":
        return float("nan")
    return FP8_POISON if spec.fp8_kv else FINITE_POISON


def kv_descales(spec: CaseSpec) -> tuple[list[float], list[float]]:
    """The float32 descales of K and V per KV head (``kv_scale: tensor``: one value
    repeated). Fixed by the case's granularity and head count alone, so every request (and
    every case a pack holds) shares them, as one cache's scales are shared."""

    def descale(low: float, head: int) -> float:
        where = 0.5 if spec.kv_scale == "tensor" else (0.5 + head * _GOLDEN) % 1.0
        return torch.tensor(2.0 ** (low + FP8_LOG2_SPREAD * where), dtype=torch.float32).item()

    heads = range(spec.num_kv_heads)
    return ([descale(FP8_K_LOG2_DESCALE, h) for h in heads],
            [descale(FP8_V_LOG2_DESCALE, h) for h in heads])


def _quantized(spec: CaseSpec, layout: Layout, x: Tensor, name: str) -> Tensor:
    """Drawn float32 K or V as FP8 codes of the case's ``kv_dtype`` (docs/contract.md)."""
    dtype = TORCH_DTYPES[spec.kv_dtype]
    codes = (x * FP8_CODE_SCALE).clamp(-FP8_SATURATED, FP8_SATURATED)
    bits = _values(_streams(spec), f"{name}_saturated", layout.k_request, layout.k_index,
                   x.shape[1] * x.shape[2], x.device).view(x.shape)
    codes = torch.where(below(bits, FP8_SATURATED_SHARE), FP8_SATURATED * torch.sign(x), codes)
    return round_to_fp8(codes, dtype).to(dtype)


def _paged(spec: CaseSpec, layout: Layout, k: Tensor, v: Tensor
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter packed k/v into a poisoned page pool through a random page table.

    Columns past a request's pages (padding, then ``page_table_slack`` more) point at a
    poisoned spare page (never at a page a request owns, never out of bounds).
    """
    ps = spec.page_size
    pages = (layout.seq_lens + ps - 1) // ps
    num_pages = int(pages.sum()) + SPARE_PAGES
    permutation = page_permutation(spec, num_pages)
    spare = permutation[int(pages.sum())]
    width = max(int(pages.max()), 1) + spec.page_table_slack
    columns = torch.arange(width)
    first_page = torch.cumsum(pages, 0) - pages
    owned = columns[None, :] < pages[:, None]
    index = (first_page[:, None] + columns[None, :]).clamp_max(num_pages - 1)
    page_table = torch.where(owned, permutation[index], spare).to(torch.int32)
    poison = _poison_value(spec)
    device = k.device
    slots = (page_table.long()[layout.k_request, layout.k_index // ps] * ps
             + layout.k_index % ps).to(device)
    caches = []
    for name, t in (("k", k), ("v", v)):
        cache = spare_contents(spec, name, (num_pages * ps, *t.shape[1:]), poison, t.dtype,
                               device)
        if t.element_size() == 1:  # FP8: scattered as its bits (uint8)
            cache.view(torch.uint8).index_copy_(0, slots, t.view(torch.uint8))
        else:
            cache.index_copy_(0, slots, t)
        caches.append(cache.view(num_pages, ps, *t.shape[1:]))
    return caches[0], caches[1], page_table.to(device)


def materialize(spec: CaseSpec, device: torch.device | str = "cpu",
                inputs: tuple[Tensor, Tensor, Tensor] | None = None) -> MaterializedCase:
    """All tensors of the case on ``device``, deterministic from the case's seeds.

    ``inputs``: the case's ``q``, ``k``, ``v`` as an earlier materialization drew them (a
    case with the same requests' lengths and value streams: :func:`same_values`)."""
    device = torch.device(device)
    dtype = TORCH_DTYPES[spec.dtype]
    layout = layout_of(spec)
    k_descale = v_descale = None
    if inputs is not None:
        q, k, v = inputs
    else:
        q, k, v = _draw_inputs(spec, layout, device)
        q = q.to(dtype)
        if spec.fp8_kv:
            k, v = _quantized(spec, layout, k, "k"), _quantized(spec, layout, v, "v")
        else:
            k, v = k.to(dtype), v.to(dtype)
    if spec.fp8_kv:
        k_descale, v_descale = (torch.tensor([scales] * len(spec.requests), dtype=torch.float32,
                                             device=device).view(-1, spec.num_kv_heads)
                                for scales in kv_descales(spec))
    k_cache = v_cache = page_table = None
    if spec.page_size is not None:
        k_cache, v_cache, page_table = _paged(spec, layout, k, v)
    seq_ranges = layout.ranges.clone()
    if spec.range_padding == "zero":
        seq_ranges[seq_ranges < 0] = 0
    host = {
        "cu_seqlens_q": cumulative_lengths(layout.query_lens.tolist()),
        "cu_seqlens_k": cumulative_lengths(layout.seq_lens.tolist()),
        "seqused_k": layout.seq_lens.to(torch.int32),
        "query_ranges": torch.stack([layout.range_start, layout.range_end], 1).to(torch.int32),
        "seq_ranges": seq_ranges.to(torch.int32),
        "context_lens": layout.context_lens.to(torch.int32),
        "query_lens": layout.query_lens.to(torch.int32),
    }
    moved = {name: t.to(device, non_blocking=True) for name, t in host.items()}
    return MaterializedCase(
        spec=spec, q=q, k=k, v=v, k_cache=k_cache, v_cache=v_cache, page_table=page_table,
        k_descale=k_descale, v_descale=v_descale,
        **moved,
        softmax_scale=spec.resolved_scale,
        sliding_window=spec.sliding_window,
        clamp_ranges_to_window=spec.clamp_ranges_to_window,
        softcap=spec.softcap,
        dtype=dtype,
        kv_dtype=k.dtype,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        head_dim_v=spec.value_dim,
        page_size=spec.page_size,
        layout=layout,
    )


def load_case(source: str | Path | Mapping[str, Any] | CaseSpec,
              device: torch.device | str = "cpu") -> MaterializedCase:
    """Read, validate and materialize a case (a JSON path or string, a dict, or a spec)."""
    return materialize(read_case(source), device)


# What fills the slots no request owns in a placement other than 0 (finite poison): values
# this many times a standard normal, unlike the constant poison of placement 0.
SPARE_SCALE = 8.0


def page_permutation(spec: CaseSpec, num_pages: int) -> Tensor:
    """The page pool's order: request pages take its entries in turn, then the spare pages.

    Placement 0 is the permutation the case seed draws. Another placement holds the same
    logical keys in other physical pages: an odd one mirrors the pool (page ``i`` becomes
    ``num_pages - 1 - i``, so every request's pages come in the opposite physical order),
    and placements from 2 on draw another permutation from the seed and the placement
    (mirrored too when odd).
    """
    seed = spec.seed if spec.placement < 2 else request_stream(spec.seed, spec.placement)
    permutation = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed))
    return num_pages - 1 - permutation if spec.placement % 2 else permutation


def spare_contents(spec: CaseSpec, name: str, shape: tuple[int, ...], poison: float,
                   dtype: torch.dtype, device: torch.device) -> Tensor:
    """A cache of ``shape`` before the requests' keys are written: poison everywhere at
    placement 0 (and for NaN poison); at another placement, finite poison is replaced by
    other finite values (:data:`SPARE_SCALE` times a normal draw), so a kernel whose result
    depends on what the spare slots hold shows it."""
    if not spec.placement or spec.poison == "nan":
        return torch.full(shape, poison, dtype=dtype, device=device)
    stream = request_stream(request_stream(spec.seed, spec.placement), 0)
    key_a, key_b = stream_keys(stream, name)
    counter = torch.arange(math.prod(shape), device=device)
    bits = hashed_bits(counter, torch.tensor(key_a, device=device),
                       torch.tensor(key_b, device=device))
    return (normal_from_bits(bits) * SPARE_SCALE).to(dtype).view(shape)


def value_key(spec: CaseSpec) -> tuple:
    """What a case's ``q``, ``k``, ``v`` depend on: cases with equal keys draw equal tensors
    (whatever their ranges, window, pages or poison)."""
    streams = tuple((r.context_len, r.query_len, stream)
                    for r, stream in zip(spec.requests, _streams(spec), strict=True))
    return (streams, spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.value_dim,
            spec.dtype, spec.kv_dtype, spec.value_distribution)


def same_values(a: CaseSpec, b: CaseSpec) -> bool:
    """Whether two cases draw the same ``q``, ``k``, ``v``."""
    return value_key(a) == value_key(b)
