"""Planted faults: correct dense attention with one real-world bug each (docs/bugs.md).

Every check that guards a kernel must be shown to fail on a planted fault. The
faults here are targets (``fault:<name>``), so the same machinery that judges a
real kernel (policy, strategies, fuzz runner, shrinking, triage, golden replay) is
shown to catch them. Each overrides exactly one step of a plain float32 engine:
where a query sits, which keys are read, how an FP8 cache is dequantized, the mask, the
KV head, the softcap, how P @ V is accumulated, or the LSE. ``fault:a+b+c`` is one kernel
with the bugs of a, b and c (faults that override different steps), to show that a run
tells its bugs apart.

:data:`SINGLE_CAUSE` lists faults written the way a user's kernel goes wrong, each with
one cause a run must report as one finding with that cause named (docs/design.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from prefix_referee.references.mask import visible_keys
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.mask import block_mask, query_range_bounds
from prefix_referee.verify.materialize import MaterializedCase, RequestView
from prefix_referee.verify.target import Target

# Query-tile heights of the "key loop stops at the causal tile" faults: a small one the
# gate's short sequences reach, and one real kernels use.
SMALL_TILE, KERNEL_TILE = 16, 128
# The first query position that goes wrong in fault:position_off_by_one_from_100.
POSITION_THRESHOLD = 100
# The page size fault:page_size_assumed_16 hard-codes, and the GQA ratio at which
# fault:gqa_ratio_4 mixes up its heads.
ASSUMED_PAGE_SIZE, BROKEN_GQA_RATIO = 16, 4
# The magnitude fault:saturated_at_240 clips FP8 codes to: e4m3fnuz's largest value (the
# FP8 format of AMD's MI300), where e4m3fn stores up to 448.
FNUZ_MAX = 240.0

Positions = Callable[[MaterializedCase, RequestView], Tensor]
Keys = Callable[[MaterializedCase, RequestView], tuple[Tensor, Tensor]]
Dequantize = Callable[[MaterializedCase, RequestView, Tensor, Tensor], tuple[Tensor, Tensor]]
Mask = Callable[[MaterializedCase, RequestView, Tensor, Tensor], Tensor]
Softcap = Callable[[Tensor, float], Tensor]
Accumulate = Callable[[Tensor, Tensor, torch.dtype], Tensor]
BatchAccumulate = Callable[[MaterializedCase, RequestView, Tensor, Tensor], Tensor]


def absolute_positions(case: MaterializedCase, view: RequestView) -> Tensor:
    return torch.arange(view.context_len, view.seq_len, device=case.device)


def packed_keys(case: MaterializedCase, view: RequestView) -> tuple[Tensor, Tensor]:
    return case.k[view.k_slice], case.v[view.k_slice]


def _descales(case: MaterializedCase, view: RequestView) -> tuple[Tensor, Tensor]:
    """The request's K and V descales, shaped (1, Hkv, 1) to scale (keys, Hkv, D) tensors."""
    return (case.k_descale[view.index][None, :, None],
            case.v_descale[view.index][None, :, None])


def applied_descales(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """K and V as float32 values: an FP8 cache's codes times their descales."""
    if not case.fp8_kv:
        return k.float(), v.float()
    k_scale, v_scale = _descales(case, view)
    return k.float() * k_scale, v.float() * v_scale


def grouped_heads(num_heads: int, num_kv_heads: int) -> Tensor:
    return torch.arange(num_heads) // (num_heads // num_kv_heads)


def tanh_softcap(scores: Tensor, cap: float) -> Tensor:
    return cap * torch.tanh(scores / cap)


def float32_accumulate(probs: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """``P @ V`` in float32: probs (H, q, k), v (k, H, Dv) -> (q, H, Dv)."""
    return torch.einsum("hqk,khd->qhd", probs, v)


@dataclass(frozen=True)
class Fault:
    """One bug: the step it replaces, and the docs/bugs.md class it belongs to."""

    name: str
    bug_class: int
    description: str
    positions: Positions = absolute_positions
    keys: Keys = packed_keys
    dequantize: Dequantize = applied_descales
    mask: Mask = block_mask
    kv_heads: Callable[[int, int], Tensor] = grouped_heads
    softcap: Softcap = tanh_softcap
    accumulate: Accumulate = float32_accumulate
    lse_scale: float = 1.0
    needs_paged: bool = False
    # P @ V of one request, knowing the batch around it: (case, view, probs, v) -> out.
    accumulate_in_batch: BatchAccumulate | None = None


def _chunk_local(case: MaterializedCase, view: RequestView) -> Tensor:
    return torch.arange(view.query_len, device=case.device)


def _restart_with_context_and_image(case: MaterializedCase, view: RequestView) -> Tensor:
    """Chunk-local positions, but only in requests that have cached context and an image
    (an engine that recomputes positions on its multimodal path)."""
    if view.context_len and view.ranges:
        return _chunk_local(case, view)
    return absolute_positions(case, view)


def _off_by_one_from_threshold(case: MaterializedCase, view: RequestView) -> Tensor:
    """Positions from :data:`POSITION_THRESHOLD` on come out one too small."""
    q_pos = absolute_positions(case, view)
    return q_pos - (q_pos >= POSITION_THRESHOLD).to(q_pos.dtype)


def _batch_offset(case: MaterializedCase, view: RequestView) -> Tensor:
    return torch.arange(view.query_len, device=case.device) + case.max_seqlen_k - case.max_seqlen_q


def _causal_tile_loop(tile: int) -> Mask:
    """The exact mask, cut at the end of each query's ``tile``-row query tile."""

    def mask(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        tile_end = view.context_len + ((q_pos - view.context_len) // tile + 1) * tile
        return block_mask(case, view, q_pos, k_pos) & (k_pos[None, :] < tile_end[:, None])

    return mask


def _exclusive_end(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                   ) -> Tensor:
    shrunk = tuple((s, e - 1) for s, e in view.ranges if e > s)
    return block_mask(case, replace(view, ranges=shrunk), q_pos, k_pos)


def _last_range_exclusive(case: MaterializedCase, view: RequestView, q_pos: Tensor,
                          k_pos: Tensor) -> Tensor:
    """Only the request's last image range has its end treated as exclusive."""
    if not view.ranges:
        return block_mask(case, view, q_pos, k_pos)
    *first, (s, e) = view.ranges
    last = ((s, e - 1),) if e > s else ()
    return block_mask(case, replace(view, ranges=(*first, *last)), q_pos, k_pos)


def _window_inclusive_under_clamp(case: MaterializedCase, view: RequestView, q_pos: Tensor,
                                  k_pos: Tensor) -> Tensor:
    """With clamp_ranges_to_window the window test is ``p - j <= W`` instead of ``< W``."""
    window = case.sliding_window
    if window is None or not case.clamp_ranges_to_window:
        return block_mask(case, view, q_pos, k_pos)
    start, end = query_range_bounds(q_pos, view.ranges)
    return visible_keys(q_pos, k_pos, start, end, view.seq_len, window + 1, True)


def _merged_groups(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                   ) -> Tensor:
    mask = block_mask(case, view, q_pos, k_pos)
    if not view.ranges:
        return mask
    in_any = torch.zeros_like(q_pos, dtype=torch.bool)
    key_in_any = torch.zeros_like(k_pos, dtype=torch.bool)
    for s, e in view.ranges:
        in_any |= (q_pos >= s) & (q_pos <= e)
        key_in_any |= (k_pos >= s) & (k_pos <= e)
    return mask | (in_any[:, None] & key_in_any[None, :] & (k_pos[None, :] < view.seq_len))


def _window_on_ranges(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                      ) -> Tensor:
    mask = block_mask(case, view, q_pos, k_pos)
    if case.sliding_window is None:
        return mask
    return mask & ((q_pos[:, None] - k_pos[None, :]) < case.sliding_window)


def _long_range_dropped(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                        ) -> Tensor:
    window = case.sliding_window
    if window is None or not case.clamp_ranges_to_window:
        return block_mask(case, view, q_pos, k_pos)
    kept = tuple((s, e) for s, e in view.ranges if e - s + 1 <= window)
    return block_mask(case, replace(view, ranges=kept), q_pos, k_pos)


def _aux_rows_chunk_local(case: MaterializedCase, view: RequestView, q_pos: Tensor,
                          k_pos: Tensor) -> Tensor:
    """query_ranges read at the chunk-local row, i.e. another request's rows."""
    rows = torch.arange(view.query_len, device=case.device).clamp_max(case.q.shape[0] - 1)
    start, end = case.query_ranges[rows, 0].long(), case.query_ranges[rows, 1].long()
    return visible_keys(q_pos, k_pos, start, end, view.seq_len, case.sliding_window,
                        case.clamp_ranges_to_window)


def _keys_at_query_offsets(case: MaterializedCase, view: RequestView) -> tuple[Tensor, Tensor]:
    """Keys sliced with cu_seqlens_q where cu_seqlens_k belongs."""
    start = int(case.cu_seqlens_q[view.index])
    stop = min(start + view.seq_len, case.k.shape[0])
    start = stop - view.seq_len
    return case.k[start:stop], case.v[start:stop]


def _paged_keys(whole_pages: bool, flat_index: bool, page_shift: int) -> Keys:
    """Gather one request's keys from the paged cache, with an optional mistake."""

    def gather(case: MaterializedCase, view: RequestView) -> tuple[Tensor, Tensor]:
        ps = case.page_size
        count = -(-view.seq_len // ps) * ps if whole_pages else view.seq_len
        j = torch.arange(count, device=case.device)
        column = ((j + page_shift) // ps).clamp_max(case.page_table.shape[1] - 1)
        pages = case.page_table[view.index, column].long()
        flat_k = case.k_cache.flatten(0, 1)
        flat_v = case.v_cache.flatten(0, 1)
        # The bug: a page index used as a token offset into the flattened pool.
        index = pages + j % ps if flat_index else pages * ps + j % ps
        index = index.clamp_max(flat_k.shape[0] - 1)
        return flat_k[index], flat_v[index]

    return gather


def _paged_keys_assuming_page_size(assumed: int) -> Keys:
    """Gather keys with a page-table index computed for pages of ``assumed`` tokens."""

    def gather(case: MaterializedCase, view: RequestView) -> tuple[Tensor, Tensor]:
        ps = case.page_size
        j = torch.arange(view.seq_len, device=case.device)
        column = (j // assumed).clamp_max(case.page_table.shape[1] - 1)
        index = case.page_table[view.index, column].long() * ps + j % assumed % ps
        index = index.clamp_max(case.k_cache.shape[0] * ps - 1)
        return case.k_cache.flatten(0, 1)[index], case.v_cache.flatten(0, 1)[index]

    return gather


def _gqa_mixed_at_ratio(ratio: int) -> Callable[[int, int], Tensor]:
    """Correct head grouping, except at GQA ``ratio``, where head h reads h % num_kv_heads."""

    def heads(num_heads: int, num_kv_heads: int) -> Tensor:
        if num_heads // num_kv_heads == ratio:
            return torch.arange(num_heads) % num_kv_heads
        return grouped_heads(num_heads, num_kv_heads)

    return heads


def _on_fp8(wrong: Dequantize) -> Dequantize:
    """A dequantization bug: K/V in the query dtype are read right (there is nothing to
    dequantize), so the fault fails only on an FP8 cache and triage names the cache."""

    def dequantize(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                   ) -> tuple[Tensor, Tensor]:
        return (wrong if case.fp8_kv else applied_descales)(case, view, k, v)

    return dequantize


@_on_fp8
def _descales_ignored(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """The FP8 codes taken as the values: no descale at all."""
    return k.float(), v.float()


@_on_fp8
def _descales_twice(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                    ) -> tuple[Tensor, Tensor]:
    """Each descale applied twice (once when loading, once more on the scores / output)."""
    k_scale, v_scale = _descales(case, view)
    return k.float() * k_scale * k_scale, v.float() * v_scale * v_scale


@_on_fp8
def _k_descale_for_v(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """V dequantized with K's descale (one scale argument passed twice)."""
    k_scale, _ = _descales(case, view)
    return k.float() * k_scale, v.float() * k_scale


@_on_fp8
def _first_head_descale(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                        ) -> tuple[Tensor, Tensor]:
    """One descale per tensor: KV head 0's for every head (per-head scales read as one)."""
    k_scale, v_scale = _descales(case, view)
    return k.float() * k_scale[:, :1], v.float() * v_scale[:, :1]


@_on_fp8
def _saturated_at_240(case: MaterializedCase, view: RequestView, k: Tensor, v: Tensor
                      ) -> tuple[Tensor, Tensor]:
    """Codes clipped to e4m3fnuz's range (+-240) before the descales: stored values beyond
    it saturate instead of being taken as stored."""
    k_scale, v_scale = _descales(case, view)
    return (k.float().clamp(-FNUZ_MAX, FNUZ_MAX) * k_scale,
            v.float().clamp(-FNUZ_MAX, FNUZ_MAX) * v_scale)


def _softcap_without_division(scores: Tensor, cap: float) -> Tensor:
    return cap * torch.tanh(scores)


def _accumulator_in_input_dtype(probs: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """``P @ V`` with the softmax's running sum and output accumulated key by key in the
    input dtype (a textbook loop kernel that never widens): every add rounds."""
    weights = torch.exp(probs.log() - probs.amax(dim=-1, keepdim=True).log()).to(dtype)
    acc = torch.zeros(probs.shape[1], probs.shape[0], v.shape[-1], dtype=dtype,
                      device=probs.device)
    total = torch.zeros(probs.shape[1], probs.shape[0], 1, dtype=dtype, device=probs.device)
    values = v.to(dtype)
    for j in range(v.shape[0]):
        w = weights[..., j].T[..., None]  # (q, H, 1)
        acc = acc + w * values[j][None]
        total = total + w
    return (acc.float() / total.float()).nan_to_num(0.0)


def _unbounded_mask(case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                    ) -> Tensor:
    """The exact mask, but keys past seq_len (the rest of the last page) count as visible."""
    inside = block_mask(case, view, q_pos, k_pos.clamp_max(view.seq_len - 1))
    return inside | (k_pos[None, :] >= view.seq_len)


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("chunk_local_position", 1,
          "query position taken inside the chunk (i), not absolute (context_len + i)",
          positions=_chunk_local),
    Fault("causal_tile_key_loop", 2,
          f"key loop stops at the query tile's causal limit ({SMALL_TILE}-row tiles): "
          "a range's future keys are dropped", mask=_causal_tile_loop(SMALL_TILE)),
    Fault("causal_tile_key_loop_128", 2,
          f"key loop stops at the query tile's causal limit ({KERNEL_TILE}-row tiles, as "
          "kernels tile): a range across the tile edge loses its future keys",
          mask=_causal_tile_loop(KERNEL_TILE)),
    Fault("exclusive_range_end", 3, "range end treated as exclusive", mask=_exclusive_end),
    Fault("merged_image_groups", 3,
          "all image ranges of a request merged into one group: image 1 sees image 2",
          mask=_merged_groups),
    Fault("window_clamps_ranges", 3,
          "sliding window applied to the range term although clamp_ranges_to_window is off",
          mask=_window_on_ranges),
    Fault("long_range_dropped", 3,
          "with clamp_ranges_to_window, a range longer than the window is dropped, not clamped",
          mask=_long_range_dropped),
    Fault("batch_max_seqlen", 4,
          "absolute position from the batch's max seqlen_k - max seqlen_q, not the request's",
          positions=_batch_offset),
    Fault("key_offsets_from_cu_seqlens_q", 4, "keys sliced with cu_seqlens_q offsets",
          keys=_keys_at_query_offsets),
    Fault("attends_past_seqused", 5,
          "reads and attends every slot of the last page, past seqused_k (poison)",
          keys=_paged_keys(whole_pages=True, flat_index=False, page_shift=0),
          mask=_unbounded_mask, needs_paged=True),
    Fault("page_index_as_token_offset", 5,
          "page number used as a token offset into the page pool (page vs token granularity)",
          keys=_paged_keys(whole_pages=False, flat_index=True, page_shift=0), needs_paged=True),
    Fault("page_table_off_by_one", 5,
          "page table read one key ahead: the last key of each page comes from the next entry",
          keys=_paged_keys(whole_pages=False, flat_index=False, page_shift=1), needs_paged=True),
    Fault("gqa_head_modulo", 6, "query head h reads kv head h % num_kv_heads",
          kv_heads=lambda h, hkv: torch.arange(h) % hkv),
    Fault("lse_base2", 7, "LSE reported in log base 2 (as FA kernels keep it internally)",
          lse_scale=1 / math.log(2)),
    Fault("aux_rows_chunk_local", 8,
          "query_ranges aux tensor indexed by the chunk-local row: reads other requests' rows",
          mask=_aux_rows_chunk_local),
    Fault("last_range_end_exclusive", 3,
          "the end of a request's last image range treated as exclusive",
          mask=_last_range_exclusive),
    Fault("context_positions_restart", 1,
          "positions restart at 0 in requests with cached context and an image",
          positions=_restart_with_context_and_image),
    Fault("window_inclusive_under_clamp", 3,
          "with clamp_ranges_to_window the window test is p - j <= W, not p - j < W",
          mask=_window_inclusive_under_clamp),
    Fault("gqa_ratio_4", 6,
          f"at GQA ratio {BROKEN_GQA_RATIO} only, query head h reads KV head h % num_kv_heads",
          kv_heads=_gqa_mixed_at_ratio(BROKEN_GQA_RATIO)),
    Fault("low_precision_accumulator", 11,
          "the softmax's running sum and P @ V accumulated key by key in the input dtype",
          accumulate=_accumulator_in_input_dtype),
    Fault("position_off_by_one_from_100", 1,
          f"query positions from {POSITION_THRESHOLD} on come out one too small",
          positions=_off_by_one_from_threshold),
    Fault("page_size_assumed_16", 5,
          f"page-table index computed for {ASSUMED_PAGE_SIZE}-token pages whatever the page size",
          keys=_paged_keys_assuming_page_size(ASSUMED_PAGE_SIZE), needs_paged=True),
    Fault("softcap_without_division", 12,
          "softcap computed as c tanh(s), not c tanh(s / c)",
          softcap=_softcap_without_division),
    Fault("descale_not_applied", 13,
          "FP8 K/V codes taken as values: k_descale and v_descale never applied",
          dequantize=_descales_ignored),
    Fault("descale_applied_twice", 13,
          "each FP8 descale applied twice (when loading and again on the scores / output)",
          dequantize=_descales_twice),
    Fault("k_descale_for_v", 13, "V dequantized with K's descale",
          dequantize=_k_descale_for_v),
    Fault("per_tensor_descale", 13,
          "per-head descales read as one per tensor: KV head 0's descale for every head",
          dequantize=_first_head_descale),
    Fault("saturated_at_240", 13,
          f"FP8 codes clipped to +-{FNUZ_MAX:g} (e4m3fnuz's range) instead of taken as stored "
          "(e4m3fn stores up to 448)", dequantize=_saturated_at_240),
]}

# The faults in how an FP8 cache is dequantized (docs/bugs.md class 13): they fail only on
# FP8 cases, which a space draws when its kv_dtypes name an FP8 dtype.
FP8_FAULTS = tuple(name for name, fault in FAULTS.items()
                   if fault.dequantize is not applied_descales)

# Faults with one cause each, written the way a user's kernel goes wrong: a run must report
# each as exactly one finding, with that cause named (docs/design.md).
SINGLE_CAUSE = ("last_range_end_exclusive", "context_positions_restart",
                "window_inclusive_under_clamp", "gqa_ratio_4", "lse_base2",
                "low_precision_accumulator", "position_off_by_one_from_100",
                "page_size_assumed_16", "softcap_without_division")


class FaultyTarget(Target):
    """Plain float32 attention with the one mistake of ``fault``."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(f"fault:{fault.name}", f"planted fault (bug class {fault.bug_class}): "
                         f"{fault.description}",
                         Capabilities(needs_paged=fault.needs_paged,
                                      kv_dtypes=frozenset({None, *KV_DTYPES}), **BASE_CLAIMS))
        self.fault = fault

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        f = self.fault
        out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=case.dtype,
                          device=case.device)
        lse = torch.full((case.num_heads, case.q.shape[0]), -math.inf, device=case.device)
        heads = f.kv_heads(case.num_heads, case.num_kv_heads).to(case.device)
        for view in case.requests():
            if not view.query_len:
                continue
            q_pos = f.positions(case, view)
            k, v = f.dequantize(case, view, *f.keys(case, view))
            k_pos = torch.arange(k.shape[0], device=case.device)
            mask = f.mask(case, view, q_pos, k_pos)
            scores = torch.einsum("qhd,khd->hqk", case.q[view.q_slice].float(),
                                  k[:, heads]) * case.softmax_scale
            if case.softcap is not None:
                scores = f.softcap(scores, case.softcap)
            scores = scores.masked_fill(~mask, -math.inf)
            row_lse = torch.logsumexp(scores, dim=-1)
            probs = torch.exp(scores - row_lse[..., None]).nan_to_num(0.0)
            out[view.q_slice] = _accumulate(f, case, view, probs, v[:, heads]).to(case.dtype)
            lse[:, view.q_slice] = row_lse * f.lse_scale
        return out, lse


def combine(names: list[str]) -> Fault:
    """One fault with the bugs of ``names``, which must override different steps."""
    steps = [f.name for f in fields(Fault) if f.name not in ("name", "bug_class", "description")]
    default = Fault("", 0, "")
    changes: dict[str, object] = {}
    for name in names:
        fault = ALL_FAULTS[name]
        for step in steps:
            value = getattr(fault, step)
            if value != getattr(default, step) and step != "needs_paged":
                if step in changes:
                    raise KeyError(f"faults {'+'.join(names)} both change the {step} step")
                changes[step] = value
    return replace(default, name="+".join(names), bug_class=ALL_FAULTS[names[0]].bug_class,
                   description="; ".join(ALL_FAULTS[n].description for n in names),
                   needs_paged=any(ALL_FAULTS[n].needs_paged for n in names), **changes)


def fault_target(name: str) -> FaultyTarget:
    """The planted fault called ``name`` as a target (``a+b``: both bugs in one kernel)."""
    names = name.split("+")
    unknown = [n for n in names if n not in ALL_FAULTS]
    if unknown:
        raise KeyError(f"unknown fault {unknown[0]!r}; known: {', '.join(ALL_FAULTS)}")
    return FaultyTarget(ALL_FAULTS[name] if len(names) == 1 else combine(names))


# --- faults beyond tolerance, and a batch-level decision --------------------------------------

# What the planted faults' plain engine guarantees, measured on CPU (docs/fuzzing.md): a
# request's bits depend on nothing but its own call.
BASE_CLAIMS = {"deterministic": True, "batch_invariant": True, "placement_invariant": True,
               "claimed_on": frozenset({"cpu"})}
# fault:split_by_batch_size splits each request's keys into this many blocks divided by the
# requests of the batch (a few requests must still fill the device); fault:nondeterministic_sum
# reduces blocks of this many keys in a random order; fault:sum_in_page_order takes blocks of
# this many keys where the case has no pages.
SPLIT_TARGET, RACE_BLOCK, CONTIGUOUS_BLOCK = 8, 4, 16


def _accumulate(f: Fault, case: MaterializedCase, view: RequestView, probs: Tensor, v: Tensor
                ) -> Tensor:
    """``P @ V`` of one request by the fault's accumulation step."""
    if f.accumulate_in_batch is not None:
        return f.accumulate_in_batch(case, view, probs, v)
    return f.accumulate(probs, v, case.dtype)


def blockwise(probs: Tensor, v: Tensor, dtype: torch.dtype, blocks: list[Tensor]) -> Tensor:
    """``P @ V`` over key blocks in the given order, as a flash kernel computes it: each
    block's weights are rounded to the input dtype relative to the largest weight seen so
    far, and the running sums are rescaled when that grows. Exact up to rounding in any
    order; which bits come out depends on the order and the block edges."""
    heads, rows, _ = probs.shape
    acc = probs.new_zeros(rows, heads, v.shape[-1])
    total = probs.new_zeros(heads, rows)
    top = probs.new_zeros(heads, rows)
    for index in blocks:
        p = probs[..., index]
        grown = torch.maximum(top, p.amax(dim=-1))
        rescale = torch.where(grown > 0, top / grown, 0.0)
        weights = torch.where(grown[..., None] > 0, p / grown[..., None], 0.0).to(dtype).float()
        acc = acc * rescale.T[..., None] + torch.einsum("hqk,khd->qhd", weights, v[index])
        total = total * rescale + weights.sum(dim=-1)
        top = grown
    denominator = total.T[..., None]
    return torch.where(denominator > 0, acc / denominator, 0.0)


def _chunks(count: int, size: int, device: torch.device) -> list[Tensor]:
    return list(torch.arange(count, device=device).split(max(1, size)))


def _split_by_batch_size(case: MaterializedCase, view: RequestView, probs: Tensor, v: Tensor
                         ) -> Tensor:
    """Keys split into ``SPLIT_TARGET // requests`` blocks: how a request is reduced depends
    on how many requests share its batch."""
    splits = max(1, SPLIT_TARGET // len(case.spec.requests))
    keys = probs.shape[-1]
    return blockwise(probs, v, case.dtype, _chunks(keys, -(-keys // splits), case.device))


def _sum_in_page_order(case: MaterializedCase, view: RequestView, probs: Tensor, v: Tensor
                       ) -> Tensor:
    """One block per page, in the order of the physical page numbers."""
    keys = probs.shape[-1]
    if case.page_table is None:
        return blockwise(probs, v, case.dtype, _chunks(keys, CONTIGUOUS_BLOCK, case.device))
    ps = case.page_size
    pages = case.page_table[view.index, : -(-keys // ps)].long()
    blocks = _chunks(keys, ps, case.device)
    order = torch.argsort(pages, stable=True).tolist()
    return blockwise(probs, v, case.dtype, [blocks[i] for i in order])


def _nondeterministic_sum(probs: Tensor, v: Tensor, dtype: torch.dtype) -> Tensor:
    """Blocks of keys reduced in whichever order they finish: another order every call."""
    blocks = _chunks(probs.shape[-1], RACE_BLOCK, probs.device)
    random.SystemRandom().shuffle(blocks)
    return blockwise(probs, v, dtype, blocks)


class MaskCachedOnShapes:
    """The mask of a batch planned once and reused while the shapes stay the same: a call
    whose tensors and request lengths match the previous call's gets that call's masks,
    whatever its ranges and window (a wrapper that plans once and runs many times)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.shapes: tuple | None = None
        self.masks: dict[int, Tensor] = {}

    def __call__(self, case: MaterializedCase, view: RequestView, q_pos: Tensor, k_pos: Tensor
                 ) -> Tensor:
        shapes = (tuple(case.q.shape), tuple(case.k.shape), case.dtype,
                  tuple((r.query_len, r.seq_len) for r in case.spec.requests))
        if shapes != self.shapes:
            self.shapes, self.masks = shapes, {}
        if view.index not in self.masks:
            self.masks[view.index] = block_mask(case, view, q_pos, k_pos)
        return self.masks[view.index]


def _noncausal_without_images(case: MaterializedCase, view: RequestView, q_pos: Tensor,
                              k_pos: Tensor) -> Tensor:
    """The image mask is installed only when some request of the batch has an image; a
    text-only batch runs without any mask (every key of the request is visible)."""
    if any(r.ranges for r in case.spec.requests):
        return block_mask(case, view, q_pos, k_pos)
    return (k_pos[None, :] < view.seq_len).expand(q_pos.shape[0], -1)


FAULTS["noncausal_without_images"] = Fault(
    "noncausal_without_images", 14,
    "the mask is installed only when some request of the batch has an image: a text-only "
    "batch runs non-causally", mask=_noncausal_without_images)

# Faults within tolerance on every case alone, each breaking one property a target can
# claim beyond tolerance (verify/invariance.py), and each caught by that property's check.
INVARIANCE_FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("split_by_batch_size", 15,
          f"each request's keys split into {SPLIT_TARGET} / (requests in the batch) blocks: "
          "its bits depend on the batch", accumulate_in_batch=_split_by_batch_size),
    Fault("sum_in_page_order", 15,
          "key blocks reduced in the order of their physical pages: the bits depend on where "
          "the pages are", accumulate_in_batch=_sum_in_page_order),
    Fault("mask_cached_on_shapes", 15,
          "the masks of a call reused by the next call with the same shapes (ranges and "
          "window ignored)", mask=MaskCachedOnShapes()),
    Fault("nondeterministic_sum", 15,
          f"blocks of {RACE_BLOCK} keys reduced in a random order (as atomics finish)",
          accumulate=_nondeterministic_sum),
]}
# Which check finds each (the property it breaks).
INVARIANCE_FAULT_PROPERTIES = {"split_by_batch_size": "batch_invariant",
                               "sum_in_page_order": "placement_invariant",
                               "mask_cached_on_shapes": "stateless",
                               "nondeterministic_sum": "deterministic"}
ALL_FAULTS: dict[str, Fault] = {**FAULTS, **INVARIANCE_FAULTS}
