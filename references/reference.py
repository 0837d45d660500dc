"""The float64 exact reference: ground truth for every target.

Two computations of one definition (softmax over each row's key interval, in float64):

* ``plain``: (query block, key block) tiles, a dense interval mask per tile, an online
  softmax; tiles no row sees are skipped. Short and obviously right: the audit path.
* ``fast`` (the default): blocks of rows planned from the intervals
  (:func:`references.batch.plan_blocks`, no device sync), each against its whole key span
  in chunks; query heads sharing a KV head go through one batched matmul (no K/V
  expansion). When every score is provably in [-300, 300] (from ``|q| |k| scale``, or the
  softcap) no max is subtracted at all: exp cannot overflow or lose precision in float64,
  so key chunks just add up; otherwise a first pass finds each row's exact max. On CUDA
  one Triton kernel applies the interval mask, exp and the row sums in a single read and
  write of the scores; elsewhere torch ops do.

Both return the same numbers up to float64 rounding (the tests hold them to 1e-12, and
to an independent dense formulation and to mpmath at 50 digits). docs/gpu.md has the
CUDA figures.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from prefix_referee.references.batch import Batch, Block, interval_mask, plan_blocks

# Rows and key columns per tile of the plain path.
PLAIN_BLOCK = 256
# Rows per block of the fast path: the wasted corner of a causal block is block/2 keys.
FAST_BLOCK = 512
# Float64 scores held at once by the fast path (256 MiB on CUDA, 32 MiB elsewhere).
FAST_TILE_ELEMENTS = {"cuda": 1 << 25, "cpu": 1 << 22}
# |score| bound under which exp needs no max subtracted: e^300 ~ 1e130, far from float64's
# 1e308 even summed over millions of keys, and e^-300 is a normal number (no precision loss).
NO_SHIFT_BOUND = 300.0


def reference_attention(batch: Batch, *, method: str = "fast", block: int | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Exact attention in float64 from the batch's (rounded) inputs.

    Returns ``out`` (total_q, H, Dv) float64 and natural-log ``lse`` (H, total_q) float64;
    rows with no visible key give out 0 and lse -inf. ``block`` is the rows per block.
    """
    if method == "plain":
        return _plain(batch, block or PLAIN_BLOCK)
    if method == "fast":
        return _fast(batch, block or FAST_BLOCK)
    raise ValueError(f"method must be 'plain' or 'fast', got {method!r}")


def _empty_result(batch: Batch) -> tuple[Tensor, Tensor]:
    total_q, heads, device = batch.q.shape[0], batch.num_heads, batch.q.device
    out = torch.zeros(total_q, heads, batch.v.shape[2], dtype=torch.float64, device=device)
    lse = torch.full((heads, total_q), -math.inf, dtype=torch.float64, device=device)
    return out, lse


def scores(batch: Batch, rows: slice, k0: int, k1: int) -> Tensor:
    """Float64 scores ``(H, rows, k1 - k0)`` of query ``rows`` against packed keys
    ``[k0, k1)``, with the softcap; neither masked nor biased."""
    k = batch.k[k0:k1].double().repeat_interleave(batch.group, dim=1)
    s = torch.einsum("qhd,khd->hqk", batch.q[rows].double(), k) * batch.softmax_scale
    if batch.softcap is not None:
        s = batch.softcap * torch.tanh(s / batch.softcap)
    return s


def _add_bias(batch: Batch, s: Tensor, rows: slice, k0: int, k1: int) -> None:
    """In place: the batch's log-weight on the tile of rows ``rows`` and keys ``[k0, k1)``
    (``s`` is ``(..., rows, keys)``)."""
    if batch.bias is not None:
        b = batch.bias
        inside = interval_mask(b.lo[rows].to(s.device), b.hi[rows].to(s.device), k0, k1)
        s.add_(inside.to(s.dtype) * b.weight)


def _plain(batch: Batch, block: int) -> tuple[Tensor, Tensor]:
    out, lse = _empty_result(batch)
    widths = batch.widths
    for r0 in range(0, batch.q.shape[0], block):
        r1 = min(r0 + block, batch.q.shape[0])
        seen = widths[r0:r1] > 0
        if not bool(seen.any()):
            continue
        lo, hi = batch.lo[r0:r1], batch.hi[r0:r1]
        k_first, k_last = int(lo[seen].min()), int(hi[seen].max())
        row_max = torch.full((batch.num_heads, r1 - r0), -math.inf, dtype=torch.float64,
                             device=batch.q.device)
        row_sum = torch.zeros_like(row_max)
        acc = torch.zeros(batch.num_heads, r1 - r0, batch.v.shape[2], dtype=torch.float64,
                          device=batch.q.device)
        for k0 in range(k_first, k_last + 1, block):
            k1 = min(k0 + block, k_last + 1)
            mask = interval_mask(lo, hi, k0, k1)
            if not bool(mask.any()):
                continue
            s = scores(batch, slice(r0, r1), k0, k1)
            _add_bias(batch, s, slice(r0, r1), k0, k1)
            s = s.masked_fill(~mask.to(s.device), -math.inf)
            new_max = torch.maximum(row_max, s.amax(dim=-1))
            # A row with nothing visible yet keeps max -inf; shift by 0 to avoid inf - inf.
            shift = torch.where(torch.isfinite(new_max), new_max, 0.0)
            p = torch.exp(s - shift[..., None])
            rescale = torch.exp(row_max - shift)
            v = batch.v[k0:k1].double().repeat_interleave(batch.group, dim=1)
            row_sum = row_sum * rescale + p.sum(dim=-1)
            acc = acc * rescale[..., None] + torch.einsum("hqk,khd->hqd", p, v)
            row_max = new_max
        nonzero = row_sum > 0
        out[r0:r1] = torch.where(nonzero[..., None], acc / row_sum.clamp_min(1e-300)[..., None],
                                 0.0).transpose(0, 1)
        lse[:, r0:r1] = torch.where(nonzero, row_max + torch.log(row_sum.clamp_min(1e-300)),
                                    -math.inf)
    return out, lse


def _score_bound(batch: Batch) -> float:
    """An upper bound of |score| over the batch (one device sync)."""
    if batch.softcap is not None:
        return batch.softcap
    if not batch.q.shape[0] or not batch.k.shape[0]:
        return 0.0
    q_norm, k_norm = (torch.linalg.vector_norm(t, dim=-1, dtype=torch.promote_types(
        t.dtype, torch.float32)).amax(dim=0).float() for t in (batch.q, batch.k))  # (H,), (Hkv,)
    bound = float((q_norm * k_norm.repeat_interleave(batch.group)).max()) * batch.softmax_scale
    return bound * (1 + 1e-5)  # float32 norms: a margin far above their rounding


@functools.cache
def _exp_rows_kernel() -> Any:
    """The fused mask + exp + row-sum pass as a Triton kernel, or None without Triton.

    One read and one write of the scores instead of masked_fill, exp and sum passes:
    on CUDA those passes, not the float64 matmuls, bound the reference. Triton's exp on
    float64 is libdevice's double-precision exp (the GPU tier compares it with the plain
    path; the CPU tests run it under the interpreter).
    """
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def exp_rows(s_ptr, lo_ptr, hi_ptr, shift_ptr, sum_ptr, rows, n_cols, j0,
                 HAS_SHIFT: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)  # one (kv head, group member, query) row per program
        lo = tl.load(lo_ptr + r % rows) - j0
        hi = tl.load(hi_ptr + r % rows) - j0
        if HAS_SHIFT:
            shift = tl.load(shift_ptr + r)
        else:
            shift = 0.0
        row = s_ptr + r * n_cols
        total = tl.zeros([BLOCK], dtype=tl.float64)
        for c0 in range(0, n_cols, BLOCK):
            cols = c0 + tl.arange(0, BLOCK)
            inside = cols < n_cols
            s = tl.load(row + cols, mask=inside, other=0.0)
            p = tl.where(inside & (cols >= lo) & (cols <= hi), tl.exp(s - shift), 0.0)
            tl.store(row + cols, p, mask=inside)
            total += p
        tl.store(sum_ptr + r, tl.load(sum_ptr + r) + tl.sum(total, axis=0))

    return exp_rows


# Columns per step of the fused pass (1024 float64 = 8 KiB).
EXP_ROWS_BLOCK = 1024


class _Tiles:
    """Scores of one block of rows against one key chunk, heads grouped by KV head."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        device = batch.q.device
        self.k = batch.k.double().permute(1, 2, 0)  # (Hkv, D, keys)
        self.v = batch.v.double().permute(1, 0, 2)  # (Hkv, keys, Dv)
        self.lo, self.hi = batch.lo.to(device), batch.hi.to(device)

    def queries(self, b: Block) -> Tensor:
        """(Hkv, G * rows, D): head h = kv * G + g, rows of one head contiguous."""
        c = self.batch
        rows = b.r1 - b.r0
        q = c.q[b.r0:b.r1].double() * c.softmax_scale
        return q.view(rows, c.k.shape[1], c.group, -1).permute(1, 2, 0, 3).reshape(
            c.k.shape[1], c.group * rows, -1)

    def scores(self, b: Block, q: Tensor, j0: int, j1: int, *, masked: bool) -> Tensor:
        """Scores (Hkv, G, rows, j1 - j0) for keys [j0, j1), hidden ones -inf if ``masked``."""
        c = self.batch
        rows = b.r1 - b.r0
        s = torch.bmm(q, self.k[:, :, j0:j1]).view(c.k.shape[1], c.group, rows, j1 - j0)
        if c.softcap is not None:
            s.div_(c.softcap).tanh_().mul_(c.softcap)
        _add_bias(c, s, slice(b.r0, b.r1), j0, j1)
        if masked:
            s.masked_fill_(~interval_mask(self.lo[b.r0:b.r1], self.hi[b.r0:b.r1], j0, j1),
                           -math.inf)
        return s


def _exp_rows(s: Tensor, lo: Tensor, hi: Tensor, j0: int, shift: Tensor | None,
              row_sum: Tensor, fused: bool) -> None:
    """In place: ``s`` (Hkv, G, rows, n) becomes exp(s - shift) where keys ``j0 + col`` are
    visible (``lo <= key <= hi`` per query row), 0 elsewhere; its row sums add to ``row_sum``.

    ``fused`` runs the Triton kernel; otherwise ``s`` must come masked (-inf) already.
    """
    if fused:
        rows, n = s.shape[2], s.shape[3]
        _exp_rows_kernel()[(s.numel() // n,)](
            s, lo, hi, row_sum if shift is None else shift, row_sum, rows, n, j0,
            HAS_SHIFT=shift is not None, BLOCK=EXP_ROWS_BLOCK)
        return
    if shift is not None:
        s.sub_(shift[..., None])
    row_sum += s.exp_().sum(dim=-1)


def _fast(batch: Batch, block: int, fused: bool | None = None) -> tuple[Tensor, Tensor]:
    """``fused`` (default: on CUDA when Triton is there) picks the Triton exp pass."""
    c = batch
    device = c.q.device
    if fused is None:
        fused = device.type == "cuda" and _exp_rows_kernel() is not None
    out, lse = _empty_result(batch)
    blocks = plan_blocks(c.lo, c.hi, block)
    if not blocks:
        return out, lse
    tiles = _Tiles(batch)
    exact_max = c.bias is not None or _score_bound(batch) > NO_SHIFT_BOUND
    budget = FAST_TILE_ELEMENTS.get(device.type, FAST_TILE_ELEMENTS["cpu"])
    hkv, group, dv = c.k.shape[1], c.group, c.v.shape[2]
    for b in blocks:
        q = tiles.queries(b)
        rows = b.r1 - b.r0
        chunk = max(1, budget // (c.num_heads * rows))
        spans = [(j0, min(j0 + chunk, b.k1)) for j0 in range(b.k0, b.k1, chunk)]
        shift = None
        if exact_max:
            row_max = torch.full((hkv, group, rows), -math.inf, dtype=torch.float64,
                                 device=device)
            for j0, j1 in spans:
                row_max = torch.maximum(row_max,
                                        tiles.scores(b, q, j0, j1, masked=True).amax(dim=-1))
            shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
        row_sum = torch.zeros(hkv, group, rows, dtype=torch.float64, device=device)
        acc = None
        for j0, j1 in spans:
            s = tiles.scores(b, q, j0, j1, masked=not fused)
            _exp_rows(s, tiles.lo[b.r0:b.r1], tiles.hi[b.r0:b.r1], j0, shift, row_sum, fused)
            part = torch.bmm(s.view(hkv, group * rows, j1 - j0), tiles.v[:, j0:j1])
            acc = part if acc is None else acc.add_(part)
        nonzero = row_sum > 0
        scale = torch.where(nonzero, 1 / row_sum, 0.0)
        out[b.r0:b.r1].view(rows, hkv, group, dv).permute(1, 2, 0, 3).copy_(
            acc.view(hkv, group, rows, dv) * scale[..., None])
        row_lse = torch.log(row_sum) if shift is None else shift + torch.log(row_sum)
        lse[:, b.r0:b.r1] = row_lse.view(c.num_heads, rows)
    return out, lse
