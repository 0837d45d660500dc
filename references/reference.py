"""The float64 exact-mask reference: ground truth for every target.

Two computations of the same definition:

* ``plain`` (the CPU default): blockwise online softmax over (query, key) tiles, the mask
  built per tile from :mod:`verify.mask`, tiles the mask hides entirely skipped.
* ``fast`` (the CUDA default): no device sync per tile and no wasted passes. Each
  query's visible keys form one interval ``[lo, hi]`` (the causal part and the range
  holding the query always touch, since a range holding ``p`` contains ``p``); the
  intervals are computed on the host from the case, so the key span of every query
  block is known before any kernel runs. Query heads sharing a KV head go through one
  batched matmul (no K/V expansion). When every score is provably in [-300, 300]
  (from ``|q| |k| scale``, or the softcap) no max is subtracted at all: exp cannot
  overflow or lose precision in float64, so key chunks just add up. Otherwise a
  first pass finds each row's exact max. On CUDA one Triton kernel applies the
  interval mask, exp and the row sums in a single read and write of the scores;
  elsewhere torch ops do (masking only the columns where the rows of a block disagree).

Both return the same numbers up to float64 rounding; the CPU tests (and on a GPU,
tests/test_gpu_tier.py) hold them to 1e-12. docs/gpu.md has the CUDA figures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from references.scores import ScoreBias, block_mask, expand_kv_heads, masked_scores
from verify.mask import visible_intervals
from verify.materialize import MaterializedCase, RequestView

# Block edge of the plain path's (query, key) tiles: 1024 x 1024 x heads float64 scores
# stay well under a GiB for the head counts the suite uses.
BLOCK = 1024
# Query rows per block of the fast path: the wasted corner of a causal block is block/2 keys.
FAST_BLOCK = 512
# Float64 scores held at once by the fast path (256 MiB on CUDA, 32 MiB on CPU).
FAST_TILE_ELEMENTS = {"cuda": 1 << 25, "cpu": 1 << 22}
# |score| bound under which exp needs no max subtracted: e^300 ~ 1e130, far from float64's
# 1e308 even summed over millions of keys, and e^-300 is a normal number (no precision loss).
NO_SHIFT_BOUND = 300.0


def reference_attention(case: MaterializedCase, *, score_bias: ScoreBias | None = None,
                        block: int | None = None, method: str | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Exact attention in float64 from the case's rounded inputs.

    Returns ``out`` (total_q, H, Dv) float64 and natural-log ``lse`` (H, total_q)
    float64; rows with no visible key give out 0 and lse -inf. ``score_bias`` adds a
    per-(query, key) log-weight (the two-call model uses ln 2 on the overlap keys).
    ``method`` is ``"plain"`` or ``"fast"`` (default: fast on CUDA, plain elsewhere);
    ``block`` is the query block (and the plain path's key block).
    """
    method = method or ("fast" if case.device.type == "cuda" else "plain")
    if method == "plain":
        return _plain(case, score_bias, block or BLOCK)
    if method == "fast":
        return _fast(case, score_bias, block or FAST_BLOCK)
    raise ValueError(f"method must be 'plain' or 'fast', got {method!r}")


def _plain(case: MaterializedCase, score_bias: ScoreBias | None, block: int
           ) -> tuple[Tensor, Tensor]:
    device = case.device
    out = torch.zeros(case.q.shape[0], case.num_heads, case.head_dim_v, dtype=torch.float64,
                      device=device)
    lse = torch.full((case.num_heads, case.q.shape[0]), float("-inf"), dtype=torch.float64,
                     device=device)
    for view in case.requests():
        q_all = case.q[view.q_slice].double()
        k_all = expand_kv_heads(case.k[view.k_slice].double(), case.num_heads)
        v_all = expand_kv_heads(case.v[view.k_slice].double(), case.num_heads)
        for q0 in range(0, view.query_len, block):
            q1 = min(q0 + block, view.query_len)
            q_pos = torch.arange(view.context_len + q0, view.context_len + q1, device=device)
            row_max = torch.full((case.num_heads, q1 - q0), float("-inf"), dtype=torch.float64,
                                 device=device)
            row_sum = torch.zeros_like(row_max)
            acc = torch.zeros(case.num_heads, q1 - q0, case.head_dim_v, dtype=torch.float64,
                              device=device)
            for k0 in range(0, view.seq_len, block):
                k1 = min(k0 + block, view.seq_len)
                k_pos = torch.arange(k0, k1, device=device)
                mask = block_mask(case, view, q_pos, k_pos)
                if not bool(mask.any()):
                    continue
                scores = masked_scores(case, view, q_all[q0:q1], k_all[k0:k1], q_pos, k_pos,
                                       mask, score_bias)
                new_max = torch.maximum(row_max, scores.amax(dim=-1))
                # A row with nothing visible yet keeps max -inf; shift by 0 to avoid inf - inf.
                shift = torch.where(torch.isfinite(new_max), new_max, torch.zeros_like(new_max))
                probs = torch.exp(scores - shift[..., None])
                rescale = torch.exp(row_max - shift)
                row_sum = row_sum * rescale + probs.sum(dim=-1)
                acc = acc * rescale[..., None] + torch.einsum("hqk,khd->hqd", probs, v_all[k0:k1])
                row_max = new_max
            seen = row_sum > 0
            normalized = torch.where(seen[..., None], acc / row_sum.clamp_min(1e-300)[..., None],
                                     torch.zeros_like(acc))
            out[view.q_start + q0:view.q_start + q1] = normalized.transpose(0, 1)
            lse[:, view.q_start + q0:view.q_start + q1] = torch.where(
                seen, row_max + torch.log(row_sum.clamp_min(1e-300)), float("-inf"))
    return out, lse


@dataclass(frozen=True)
class _Block:
    """One query block of one request and the keys it needs."""

    view: RequestView
    q0: int
    q1: int
    k0: int  # first key any row sees
    k1: int  # one past the last key any row sees
    full0: int  # keys [full0, full1) are seen by every row: no mask there
    full1: int


def _blocks(case: MaterializedCase, block: int) -> tuple[list[_Block], Tensor, Tensor]:
    """Every query block with its key span, and the per-row intervals for all queries."""
    blocks, los, his = [], [], []
    for view in case.requests():
        if not view.query_len:
            continue
        lo, hi = visible_intervals(torch.arange(view.context_len, view.seq_len), view.ranges,
                                   view.seq_len, case.sliding_window,
                                   case.clamp_ranges_to_window)
        los.append(lo)
        his.append(hi)
        for q0 in range(0, view.query_len, block):
            q1 = min(q0 + block, view.query_len)
            b_lo, b_hi = lo[q0:q1], hi[q0:q1]
            k0, k1 = int(b_lo.min()), int(b_hi.max()) + 1
            blocks.append(_Block(view, q0, q1, k0, k1, int(b_lo.max()), int(b_hi.min()) + 1))
    if not los:
        return blocks, torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return blocks, torch.cat(los), torch.cat(his)


def _score_bound(case: MaterializedCase) -> float:
    """An upper bound of |score| over the case (one device sync)."""
    if case.softcap is not None:
        return case.softcap
    if not case.q.shape[0] or not case.k.shape[0]:
        return 0.0
    q_norm = torch.linalg.vector_norm(case.q, dim=-1, dtype=torch.float32).amax(dim=0)  # (H,)
    k_norm = torch.linalg.vector_norm(case.k, dim=-1, dtype=torch.float32).amax(dim=0)  # (Hkv,)
    group = case.num_heads // case.num_kv_heads
    bound = float((q_norm * k_norm.repeat_interleave(group)).max()) * case.softmax_scale
    return bound * (1 + 1e-5)  # float32 norms: a margin far above their rounding


class _Tiles:
    """Scores of one request's query block against one key chunk, heads grouped by KV head."""

    def __init__(self, case: MaterializedCase, score_bias: ScoreBias | None, lo: Tensor,
                 hi: Tensor) -> None:
        self.case, self.score_bias = case, score_bias
        self.group = case.num_heads // case.num_kv_heads
        self.lo, self.hi = lo.to(case.device), hi.to(case.device)
        self._view: RequestView | None = None

    def request(self, view: RequestView) -> None:
        """Load one request's K and V in float64, laid out (Hkv, D, keys) and (Hkv, keys, Dv)."""
        if view is not self._view:
            c = self.case
            self.k = c.k[view.k_slice].double().permute(1, 2, 0)
            self.v = c.v[view.k_slice].double().permute(1, 0, 2)
            self._view = view

    def queries(self, b: _Block) -> Tensor:
        """(Hkv, G * rows, D): head h = kv * G + g, rows of one head contiguous."""
        c = self.case
        q = c.q[b.view.q_start + b.q0:b.view.q_start + b.q1].double() * c.softmax_scale
        rows = b.q1 - b.q0
        return q.view(rows, c.num_kv_heads, self.group, -1).permute(1, 2, 0, 3).reshape(
            c.num_kv_heads, self.group * rows, -1)

    def bounds(self, b: _Block) -> tuple[Tensor, Tensor]:
        """First and last visible key of each query row of the block (on the device)."""
        first = b.view.q_start + b.q0
        return self.lo[first:first + b.q1 - b.q0], self.hi[first:first + b.q1 - b.q0]

    def scores(self, b: _Block, q: Tensor, j0: int, j1: int, *, masked: bool = True) -> Tensor:
        """Scores (Hkv, G, rows, j1 - j0) for keys [j0, j1), hidden ones -inf if ``masked``."""
        c = self.case
        rows = b.q1 - b.q0
        s = torch.bmm(q, self.k[:, :, j0:j1]).view(c.num_kv_heads, self.group, rows, j1 - j0)
        if c.softcap is not None:
            s.div_(c.softcap).tanh_().mul_(c.softcap)
        if self.score_bias is not None:
            q_pos = torch.arange(b.view.context_len + b.q0, b.view.context_len + b.q1,
                                 device=c.device)
            k_pos = torch.arange(j0, j1, device=c.device)
            s.add_(self.score_bias(b.view, q_pos, k_pos).to(c.device, torch.float64))
        if masked:
            # Only the columns some row of the block does not see need the mask.
            lo, hi = (t[:, None] for t in self.bounds(b))
            for m0, m1 in ((j0, min(j1, b.full0)), (max(j0, b.full1), j1)):
                if m0 < m1:
                    cols = torch.arange(m0, m1, device=c.device)
                    s[..., m0 - j0:m1 - j0].masked_fill_((cols < lo) | (cols > hi),
                                                         float("-inf"))
        return s


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


def _fast(case: MaterializedCase, score_bias: ScoreBias | None, block: int,
          fused: bool | None = None) -> tuple[Tensor, Tensor]:
    """``fused`` (default: on CUDA when Triton is there) picks the Triton exp pass."""
    c = case
    if fused is None:
        fused = c.device.type == "cuda" and _exp_rows_kernel() is not None
    out = torch.zeros(c.q.shape[0], c.num_heads, c.head_dim_v, dtype=torch.float64,
                      device=c.device)
    lse = torch.full((c.num_heads, c.q.shape[0]), float("-inf"), dtype=torch.float64,
                     device=c.device)
    blocks, lo, hi = _blocks(case, block)
    tiles = _Tiles(case, score_bias, lo, hi)
    exact_max = score_bias is not None or _score_bound(case) > NO_SHIFT_BOUND
    budget = FAST_TILE_ELEMENTS.get(c.device.type, FAST_TILE_ELEMENTS["cpu"])
    hkv, group, dv = c.num_kv_heads, tiles.group, c.head_dim_v
    for b in blocks:
        if b.k0 >= b.k1:
            continue
        tiles.request(b.view)
        q = tiles.queries(b)
        rows = b.q1 - b.q0
        chunk = max(1, budget // (c.num_heads * rows))
        spans = [(j0, min(j0 + chunk, b.k1)) for j0 in range(b.k0, b.k1, chunk)]
        shift = None
        if exact_max:
            row_max = torch.full((hkv, group, rows), float("-inf"), dtype=torch.float64,
                                 device=c.device)
            for j0, j1 in spans:
                row_max = torch.maximum(row_max, tiles.scores(b, q, j0, j1).amax(dim=-1))
            shift = torch.where(torch.isfinite(row_max), row_max, 0.0)
        row_sum = torch.zeros(hkv, group, rows, dtype=torch.float64, device=c.device)
        acc = None
        for j0, j1 in spans:
            s = tiles.scores(b, q, j0, j1, masked=not fused)
            _exp_rows(s, *tiles.bounds(b), j0, shift, row_sum, fused)
            part = torch.bmm(s.view(hkv, group * rows, j1 - j0), tiles.v[:, j0:j1])
            acc = part if acc is None else acc.add_(part)
        seen = row_sum > 0
        scale = torch.where(seen, 1 / row_sum, 0.0)
        first = b.view.q_start + b.q0
        out[first:first + rows].view(rows, hkv, group, dv).permute(1, 2, 0, 3).copy_(
            acc.view(hkv, group, rows, dv) * scale[..., None])
        row_lse = torch.log(row_sum) if shift is None else shift + torch.log(row_sum)
        lse[:, first:first + rows] = row_lse.view(c.num_heads, rows)
    return out, lse
