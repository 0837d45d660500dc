"""Compiled FlexAttention with a block-sparse mask built from the case (a peer exact engine).

Eager FlexAttention materializes the dense score matrix (67.5 GiB for a 10k-query Gemma
layout, 13.5 GiB RSS for one 16k request on CPU); the compiled kernel is what engines
run, so that is what this target checks, with memory linear in the tokens.

Layout: every KV head is a document. Query rows are ``(KV head, token)`` pairs laid end
to end, keys likewise, so flex sees one batch with ``num_heads / num_kv_heads`` query
heads and one KV head (``enable_gqa``), and the number of KV heads becomes a length,
which is runtime data. The ``mask_mod`` ANDs "same document" (KV head and request) with
the causal-OR-range test, window and clamp, read from per-row aux tensors. The BlockMask
comes straight from each row's visible key interval
(:func:`verify.mask.visible_intervals`): a KV block is *full* for a query block when
every row sees all of it (flex skips the mask_mod there) and *partial* when some row
sees part of it; nothing finer than a (query block, KV block) pair is ever dense.

Recompiles: the softmax scale, window, clamp and softcap value are tensors; lengths are
padded with rows and keys no document owns (masked out, dropped). On CUDA lengths are
dynamic, so a graph serves every case of a :meth:`FlexTarget.compile_key`. On CPU (a
template that cannot take dynamic lengths, see :func:`_shape`) lengths are power-of-two
buckets, and in the smallest bucket, where the gate's many tiny configurations fall and
each compile costs seconds, head dims and heads per KV head are zero padded too (zero
dims add nothing to a dot product; zero query heads are dropped) and softcap on/off is
a runtime switch: the gate compiles one graph per dtype.

An FP8 cache is dequantized first (codes times descales, rounded once to the query dtype):
flex reads K and V in the query dtype.

Compiled flex on CPU returns no LSE (inductor raises NotImplementedError for it, torch
2.13), so the target returns ``lse`` only on CUDA; the LSE is unfolded exactly as the
output is, so the CPU gate still checks that layout.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import KV_DTYPES, CaseSpec
from prefix_referee.verify.mask import visible_intervals
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.target import Target

if TYPE_CHECKING:  # flex_attention is imported on first use, as every optional engine is
    from torch.nn.attention.flex_attention import BlockMask

# FlexAttention's sparse block (query and key side): the BlockMask's granularity.
BLOCK = 128
# A window no position difference reaches: the runtime value for "no sliding window".
NO_WINDOW = 1 << 30
# CPU gate bucket: smallest padded head dim and heads per KV head (powers of two above).
CPU_MIN_HEAD_DIM = 256
CPU_MIN_HEADS_PER_KV = 4
# CPU length bucket: at least this many blocks, so every gate case (up to 1024 folded
# rows) shares one graph per dtype; empty query blocks cost flex next to nothing.
CPU_MIN_BLOCKS = 8


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


@dataclass(frozen=True)
class _Shape:
    """The padded problem flex sees: ``(1, heads, q_blocks * BLOCK, head_dim)`` queries."""

    heads: int  # query heads per KV head, padded
    head_dim: int
    value_dim: int
    q_blocks: int
    k_blocks: int
    shared: bool = False  # the CPU gate's graph: softcap on/off is runtime data too

    @property
    def q_len(self) -> int:
        return self.q_blocks * BLOCK

    @property
    def k_len(self) -> int:
        return self.k_blocks * BLOCK


def _distinct_blocks(needed: int, taken: set[int]) -> int:
    """The smallest block count >= ``needed`` (and >= 2) whose count and length are new.

    Dynamo gives equal sizes one symbol (duck sizing). Inductor's flex lowering guards the
    static sizes (heads, head dims, the block size), which then pins an equal length too,
    and two equal lengths stay tied: each a recompile when a later case differs (seen on
    CPU: a first case with 2 query blocks and 2 heads per KV head). Sizes 0 and 1 are
    always specialized, hence at least 2. Adds the chosen count and length to ``taken``.
    """
    blocks = max(needed, 2)
    while blocks in taken or blocks * BLOCK in taken:
        blocks += 1
    taken.update((blocks, blocks * BLOCK))
    return blocks


def _shape(case: MaterializedCase, dynamic: bool) -> _Shape:
    """Padded sizes: for dynamic lengths (CUDA), or power-of-two buckets (CPU).

    Inductor's CPU flex template miscompiles dynamic lengths once a graph has ten size
    symbols (it renames ``ks3`` inside ``ks37``; torch 2.13), so CPU graphs are static,
    rows and keys each padded to a power of two. The smallest bucket (every gate case)
    also pads head dims and heads per KV head, so all its cases of a dtype share one
    graph; a longer case keeps its own dims, since it compiles its buckets anyway and
    padding multiplies the work (4x for 2 heads per KV head of 128 dims).
    """
    spec = case.spec
    group = spec.num_heads // spec.num_kv_heads
    q_need = -(-case.num_kv_heads * case.q.shape[0] // BLOCK)
    k_need = -(-case.num_kv_heads * case.k.shape[0] // BLOCK)
    if not dynamic:
        q_blocks, k_blocks = (_next_power_of_two(max(n, CPU_MIN_BLOCKS)) for n in (q_need, k_need))
        if max(q_blocks, k_blocks) > CPU_MIN_BLOCKS:
            return _Shape(group, spec.head_dim, spec.value_dim, q_blocks, k_blocks)
        dim = max(CPU_MIN_HEAD_DIM, _next_power_of_two(max(spec.head_dim, spec.value_dim)))
        heads = max(CPU_MIN_HEADS_PER_KV, _next_power_of_two(group))
        return _Shape(heads, dim, dim, q_blocks, k_blocks, shared=True)
    taken = {1, BLOCK, group, spec.head_dim, spec.value_dim}
    q_blocks = _distinct_blocks(q_need, taken)
    return _Shape(group, spec.head_dim, spec.value_dim, q_blocks,
                  _distinct_blocks(k_need, taken))


def _fold(x: Tensor, kv_heads: int, rows: int, heads: int, dim: int) -> Tensor:
    """``(tokens, kv_heads * group, d)`` -> ``(1, heads, rows, dim)``, zero padded.

    Row ``g * tokens + t`` of head ``i`` holds token ``t`` of head ``g * group + i``.
    """
    tokens, all_heads, d = x.shape
    group = all_heads // kv_heads
    out = x.new_zeros(1, heads, rows, dim)
    out[0, :group, :kv_heads * tokens, :d] = (
        x.view(tokens, kv_heads, group, d).permute(2, 1, 0, 3).reshape(group, -1, d))
    return out


def _unfold(y: Tensor, kv_heads: int, group: int, tokens: int) -> Tensor:
    """Inverse of :func:`_fold` on flex's ``(heads, rows, ...)``: ``(tokens, kv_heads * group,
    ...)`` with padding dropped."""
    y = y[:group, :kv_heads * tokens].unflatten(1, (kv_heads, tokens))
    return y.movedim((0, 1, 2), (2, 1, 0)).flatten(1, 2)


def _tile(x: Tensor, copies: int, step: int) -> Tensor:
    """``copies`` copies of ``x`` end to end, copy ``g`` shifted by ``g * step``."""
    shift = torch.arange(copies, device=x.device) * step
    return (x[None] + shift[:, None].to(x.dtype)).flatten()


def _pad(x: Tensor, length: int, value: int) -> Tensor:
    return torch.cat([x, x.new_full((length - x.shape[0],), value)])


def _row_tables(case: MaterializedCase, shape: _Shape) -> dict[str, Tensor]:
    """Per folded query row and key: document, position, the query's range bounds."""
    device, kv_heads, count = case.device, case.num_kv_heads, len(case.spec.requests)
    q_req = torch.repeat_interleave(torch.arange(count, device=device),
                                    case.query_lens.long())
    k_req = torch.repeat_interleave(torch.arange(count, device=device), case.seqused_k.long())
    q_pos = (torch.arange(case.q.shape[0], device=device) - case.cu_seqlens_q[q_req]
             + case.context_lens[q_req])
    k_pos = torch.arange(case.k.shape[0], device=device) - case.cu_seqlens_k[k_req]
    tables = {
        # A document is one request of one KV head; padding belongs to no document.
        "q_doc": _pad(_tile(q_req, kv_heads, count), shape.q_len, -1),
        "k_doc": _pad(_tile(k_req, kv_heads, count), shape.k_len, -2),
        "q_pos": _pad(q_pos.repeat(kv_heads), shape.q_len, 0),
        "k_pos": _pad(k_pos.repeat(kv_heads), shape.k_len, 0),
        "range_start": _pad(case.query_ranges[:, 0].repeat(kv_heads), shape.q_len, -1),
        "range_end": _pad(case.query_ranges[:, 1].repeat(kv_heads), shape.q_len, -1),
    }
    return {name: t.to(torch.int32) for name, t in tables.items()}


def _key_intervals(case: MaterializedCase, shape: _Shape) -> tuple[Tensor, Tensor]:
    """Per folded query row, the first and last folded key it sees (``lo > hi``: none)."""
    lo, hi = [], []
    for view in case.requests():
        if view.query_len:
            q_pos = torch.arange(view.context_len, view.seq_len, device=case.device)
            first, last = visible_intervals(q_pos, view.ranges, view.seq_len,
                                            case.sliding_window, case.clamp_ranges_to_window)
            lo.append(first + view.k_start)
            hi.append(last + view.k_start)
    empty = torch.zeros(0, dtype=torch.long, device=case.device)
    total_k = case.k.shape[0]
    return (_pad(_tile(torch.cat([empty, *lo]), case.num_kv_heads, total_k), shape.q_len, 0),
            _pad(_tile(torch.cat([empty, *hi]), case.num_kv_heads, total_k), shape.q_len, -1))


def _ordered(blocks: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean ``(q_blocks, k_blocks)`` -> flex's ``(num_blocks, indices)``, listed first."""
    blocks = blocks.to(torch.int32)
    indices = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    return blocks.sum(-1, dtype=torch.int32)[None, None], indices.to(torch.int32)[None, None]


def kv_blocks(lo: Tensor, hi: Tensor, q_blocks: int, k_blocks: int
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Partial and full KV blocks per query block, from each row's key interval.

    Block counts per (query block, KV block) come from difference arrays over each
    row's span of blocks, so the cost is one entry per row plus one per block pair.
    Returns ``kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices``.
    """
    rows = torch.arange(lo.shape[0], device=lo.device) // BLOCK

    def rows_spanning(first: Tensor, stop: Tensor) -> Tensor:
        """Per block pair: how many rows of the query block span the KV block."""
        steps = torch.zeros(q_blocks, k_blocks + 1, dtype=torch.int32, device=lo.device)
        keep = first < stop
        one = torch.ones((), dtype=torch.int32, device=lo.device)
        steps.index_put_((rows[keep], first[keep]), one, accumulate=True)
        steps.index_put_((rows[keep], stop[keep]), -one, accumulate=True)
        return steps.cumsum(1, dtype=torch.int32)[:, :k_blocks]

    touched = rows_spanning(lo // BLOCK, hi // BLOCK + 1) > 0
    full = rows_spanning(-(-lo // BLOCK), (hi + 1) // BLOCK) == BLOCK
    return (*_ordered(touched & ~full), *_ordered(full))


def block_mask(case: MaterializedCase, shape: _Shape) -> BlockMask:
    """The case's BlockMask over ``shape``'s folded rows and keys, with its mask_mod."""
    from torch.nn.attention.flex_attention import BlockMask

    t = _row_tables(case, shape)
    window = torch.tensor(case.sliding_window or NO_WINDOW, dtype=torch.int32,
                          device=case.device)
    clamp = torch.tensor(case.clamp_ranges_to_window, device=case.device)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        p, j = t["q_pos"][q_idx], t["k_pos"][kv_idx]
        near = p - j < window
        causal = (j <= p) & near
        in_range = (j >= t["range_start"][q_idx]) & (j <= t["range_end"][q_idx]) & (
            near | ~clamp)
        return (t["q_doc"][q_idx] == t["k_doc"][kv_idx]) & (causal | in_range)

    blocks = kv_blocks(*_key_intervals(case, shape), shape.q_blocks, shape.k_blocks)
    return BlockMask.from_kv_blocks(*blocks, BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(shape.q_len, shape.k_len),
                                    compute_q_blocks=False)


def _score_mod(case: MaterializedCase, shared: bool) -> Callable[..., Tensor]:
    """Scale (a tensor: a float would be a guard) and softcap, switched at runtime if shared.

    flex gets ``scale=1.0``, so ``score * scale`` is the same single rounding as flex's.
    """
    scale = torch.tensor(case.softmax_scale, device=case.device)
    if case.softcap is None and not shared:
        def scaled(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
                   ) -> Tensor:
            return score * scale

        return scaled
    softcap = torch.tensor(case.softcap or 1.0, device=case.device)
    capped = torch.tensor(case.softcap is not None, device=case.device)

    def maybe_capped(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor
                     ) -> Tensor:
        score = score * scale
        return torch.where(capped, softcap * torch.tanh(score / softcap), score)

    return maybe_capped


@cache
def _compiled_flex(dynamic: bool) -> Callable[..., Any]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=dynamic, fullgraph=True)


# Above this head dim the CUDA template's default tiles need more shared memory than an
# H100/H200 block has (head_dim 512: 263424 bytes of 232448): smaller tiles, one stage.
WIDE_HEAD_DIM = 256
WIDE_TILES = {"BLOCK_M": 64, "BLOCK_N": 32, "num_stages": 1, "num_warps": 4}


def _kernel_options(head_dim: int) -> dict[str, int] | None:
    return dict(WIDE_TILES) if head_dim > WIDE_HEAD_DIM else None


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


class FlexTarget(Target):
    """``flex``: compiled FlexAttention; records the seconds its compiling calls took."""

    def __init__(self) -> None:
        # Measured on CPU: the bits of a request change with the batch around it (the
        # padded buckets and blocks follow the batch), not on a rerun or with its pages.
        super().__init__("flex", "torch.compile'd FlexAttention, block-sparse varlen mask_mod",
                         Capabilities(kv_dtypes=frozenset({None, *KV_DTYPES}),
                                      deterministic=True, placement_invariant=True,
                                      claimed_on=frozenset({"cpu"})))
        self.compiled = 0  # calls that compiled a graph (``compiles`` says it compiles at all)
        self.compile_seconds = 0.0  # wall time of the calls that compiled a graph

    def unavailable_reason(self) -> str | None:
        try:
            from torch.nn.attention.flex_attention import AuxRequest  # noqa: F401
        except ImportError as exc:
            return f"torch.nn.attention.flex_attention.AuxRequest not importable ({exc})"
        return None

    def compile_key(self, spec: CaseSpec) -> tuple:
        """A CUDA graph per dtype, heads per KV head, head dims and softcap flag.

        Lengths, KV heads, pages, window, clamp, scale and the softcap value are runtime
        data. On CPU many keys share a bucketed graph (one per dtype and length bucket);
        :attr:`compiled` and :attr:`compile_seconds` count what really compiled.
        """
        return (spec.dtype, spec.num_heads // spec.num_kv_heads, spec.head_dim,
                spec.value_dim, spec.softcap is not None)

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        from torch.nn.attention.flex_attention import AuxRequest

        cpu = case.device.type == "cpu"
        shape = _shape(case, dynamic=not cpu)
        kv_heads, total_q = case.num_kv_heads, case.q.shape[0]
        group = case.num_heads // kv_heads
        keys, values = case.dequantized(case.dtype)
        q = _fold(case.q, kv_heads, shape.q_len, shape.heads, shape.head_dim)
        k = _fold(keys, kv_heads, shape.k_len, 1, shape.head_dim)
        v = _fold(values, kv_heads, shape.k_len, 1, shape.value_dim)
        mask, score_mod = block_mask(case, shape), _score_mod(case, shape.shared)
        graphs, start = _graphs_compiled(), time.perf_counter()
        # Past the recompile limit dynamo would quietly run flex eagerly, with dense scores.
        with torch._dynamo.config.patch(recompile_limit=256, fail_on_recompile_limit_hit=True
                                        ), warnings.catch_warnings():
            # Inductor's own use of torch.jit, on every compile: noise in every report.
            warnings.filterwarnings("ignore", "`torch.jit.script_method` is deprecated",
                                    DeprecationWarning)
            out, aux = _compiled_flex(dynamic=not cpu)(
                q, k, v, block_mask=mask, score_mod=score_mod, scale=1.0,
                enable_gqa=shape.heads > 1, return_aux=AuxRequest(lse=not cpu),
                kernel_options=None if cpu else _kernel_options(shape.head_dim))
        if _graphs_compiled() > graphs:
            self.compiled += 1
            self.compile_seconds += time.perf_counter() - start
        out = _unfold(out[0, ..., :case.head_dim_v], kv_heads, group, total_q)
        lse = None if cpu else _unfold(aux.lse[0], kv_heads, group, total_q).T.float()
        return out.contiguous(), lse
