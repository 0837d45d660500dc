"""Turn a case into the tensors of the target contract (DESIGN.md section 5).

Inputs are drawn in float32 from the case's seed and rounded once to the case
dtype; every target and the float64 reference then read the same rounded values.
The paged cache scatters each request's keys over a random permutation of pages
and fills every slot no request owns (spare pages, slots past ``seqused_k``, the
padding of the page table) with poison, so a kernel that reads past a sequence
shows it in its output.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from verify.case import CaseSpec, read_case
from verify.mask import query_range_bounds

TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Large enough that an attended poisoned slot dominates its row, small enough for fp16.
FINITE_POISON = 1024.0
# Spare pages beyond the ones requests own, so poisoned pages exist in every layout.
SPARE_PAGES = 2


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
    """Every tensor and scalar a target may need; ``spec`` is the JSON case behind it."""

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
    softmax_scale: float
    sliding_window: int | None
    clamp_ranges_to_window: bool
    softcap: float | None
    dtype: torch.dtype
    num_heads: int
    num_kv_heads: int
    head_dim: int
    head_dim_v: int
    page_size: int | None

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


def _draw_inputs(spec: CaseSpec, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v in float32 shaped by the value profile (before rounding)."""
    h, hkv, d, dv = spec.num_heads, spec.num_kv_heads, spec.head_dim, spec.value_dim
    q = torch.randn(spec.total_q, h, d, generator=generator)
    k = torch.randn(spec.total_k, hkv, d, generator=generator)
    v = torch.randn(spec.total_k, hkv, dv, generator=generator)
    if spec.value_profile == "peaky":
        # Scores ~9x wider than normal: softmax rows close to one-hot.
        q, k = q * 3.0, k * 3.0
    elif spec.value_profile == "near_ties":
        # All keys of a head nearly equal: scores tie to within rounding.
        k = k[:1].expand_as(k) + 0.01 * k
    elif spec.value_profile == "outliers":
        # About 1% of entries 20x larger, as activation outliers are.
        for t in (k, v):
            t.mul_(torch.where(torch.rand(t.shape, generator=generator) < 0.01, 20.0, 1.0))
    return q, k, v


def _poison_value(spec: CaseSpec) -> float:
    return float("nan") if spec.poison == "nan" else FINITE_POISON


def _paged(spec: CaseSpec, k: Tensor, v: Tensor, generator: torch.Generator
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Scatter packed k/v into a poisoned page pool through a random page table."""
    ps = spec.page_size
    pages_per_request = [-(-r.seq_len // ps) for r in spec.requests]
    num_pages = sum(pages_per_request) + SPARE_PAGES
    permutation = torch.randperm(num_pages, generator=generator)
    spare = permutation[sum(pages_per_request):]
    max_pages = max(max(pages_per_request), 1)
    # Padding entries point at a poisoned spare page, not at page 0 or out of bounds.
    page_table = spare[0].repeat(len(spec.requests), max_pages).to(torch.int32)
    poison = _poison_value(spec)
    k_cache = torch.full((num_pages, ps, *k.shape[1:]), poison, dtype=k.dtype)
    v_cache = torch.full((num_pages, ps, *v.shape[1:]), poison, dtype=v.dtype)
    taken = k_start = 0
    for b, (r, n_pages) in enumerate(zip(spec.requests, pages_per_request, strict=True)):
        pages = permutation[taken:taken + n_pages]
        taken += n_pages
        page_table[b, :n_pages] = pages.to(torch.int32)
        for t in range(n_pages):
            lo = t * ps
            hi = min(lo + ps, r.seq_len)
            k_cache[pages[t], : hi - lo] = k[k_start + lo:k_start + hi]
            v_cache[pages[t], : hi - lo] = v[k_start + lo:k_start + hi]
        k_start += r.seq_len
    return k_cache, v_cache, page_table


def _range_tensors(spec: CaseSpec) -> tuple[Tensor, Tensor]:
    """``query_ranges`` (total_q, 2) and ``seq_ranges`` (B, max_ranges, 2), -1 padded."""
    rows = []
    for r in spec.requests:
        start, end = query_range_bounds(torch.arange(r.context_len, r.seq_len), r.ranges)
        rows.append(torch.stack([start, end], dim=1))
    query_ranges = torch.cat(rows).to(torch.int32)
    max_ranges = max(max(len(r.ranges) for r in spec.requests), 1)
    seq_ranges = torch.full((len(spec.requests), max_ranges, 2), -1, dtype=torch.int32)
    for b, r in enumerate(spec.requests):
        if r.ranges:
            seq_ranges[b, : len(r.ranges)] = torch.tensor(sorted(r.ranges), dtype=torch.int32)
    return query_ranges, seq_ranges


def cumulative_lengths(lengths: list[int]) -> Tensor:
    """``cu_seqlens`` of a varlen call: 0, then the running sums of ``lengths`` (int32)."""
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.long).cumsum(0).tolist()],
                        dtype=torch.int32)


def materialize(spec: CaseSpec, device: torch.device | str = "cpu") -> MaterializedCase:
    """All tensors of the case on ``device``, deterministic from ``spec.seed``."""
    generator = torch.Generator().manual_seed(spec.seed)
    dtype = TORCH_DTYPES[spec.dtype]
    q, k, v = (t.to(dtype) for t in _draw_inputs(spec, generator))
    k_cache = v_cache = page_table = None
    if spec.page_size is not None:
        k_cache, v_cache, page_table = _paged(spec, k, v, generator)
    query_ranges, seq_ranges = _range_tensors(spec)
    query_lens = [r.query_len for r in spec.requests]
    seq_lens = [r.seq_len for r in spec.requests]

    def put(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(device)

    return MaterializedCase(
        spec=spec,
        q=put(q), k=put(k), v=put(v),
        cu_seqlens_q=put(cumulative_lengths(query_lens)),
        cu_seqlens_k=put(cumulative_lengths(seq_lens)),
        seqused_k=put(torch.tensor(seq_lens, dtype=torch.int32)),
        k_cache=put(k_cache), v_cache=put(v_cache), page_table=put(page_table),
        query_ranges=put(query_ranges), seq_ranges=put(seq_ranges),
        context_lens=put(torch.tensor([r.context_len for r in spec.requests], dtype=torch.int32)),
        query_lens=put(torch.tensor(query_lens, dtype=torch.int32)),
        softmax_scale=spec.resolved_scale,
        sliding_window=spec.sliding_window,
        clamp_ranges_to_window=spec.clamp_ranges_to_window,
        softcap=spec.softcap,
        dtype=dtype,
        num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        head_dim_v=spec.value_dim,
        page_size=spec.page_size,
    )


def load_case(source: str | Path | Mapping[str, Any] | CaseSpec,
              device: torch.device | str = "cpu") -> MaterializedCase:
    """Read, validate and materialize a case (a JSON path or string, a dict, or a spec)."""
    return materialize(read_case(source), device)
