"""A packed varlen attention problem, as the references see it.

Queries ``q`` ``(total_q, H, D)`` and keys ``k``/``v`` ``(total_k, Hkv, D|Dv)`` are packed
over all requests of a batch (several cases too: a packed batch is one problem), and query
row ``r`` sees exactly the packed key rows ``lo[r] .. hi[r]`` (none when ``hi < lo``).
That one interval per row holds every mask this suite knows (:mod:`references.mask`), so
the references never see requests, ranges or pages: they cannot get those wrong the way
a kernel can, and a reviewer checks them against a short definition. ``lo``/``hi`` live
on the host, so the key span of every block of rows is known before any kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogWeight:
    """An extra log-weight ``weight`` on the packed keys ``lo[r] .. hi[r]`` of each row.

    An approximation, not a mask: the two-call path counts its overlap keys twice, which
    is exact attention with ``ln 2`` on them (docs/semantics.md). ``lo``/``hi`` as in
    :class:`Batch`.
    """

    lo: Tensor
    hi: Tensor
    weight: float


@dataclass(frozen=True)
class Batch:
    """``q``, ``k``, ``v``, each query row's key interval, and the score options."""

    q: Tensor
    k: Tensor
    v: Tensor
    lo: Tensor  # (total_q,) int64 on the host
    hi: Tensor
    softmax_scale: float
    softcap: float | None = None
    bias: LogWeight | None = None

    @property
    def num_heads(self) -> int:
        return self.q.shape[1]

    @property
    def group(self) -> int:
        """Query heads per KV head: query head ``h`` reads KV head ``h // group``."""
        return self.q.shape[1] // self.k.shape[1]

    @property
    def widths(self) -> Tensor:
        """Visible keys per row (host)."""
        return (self.hi - self.lo + 1).clamp_min(0)


def expand_kv_heads(t: Tensor, num_heads: int) -> Tensor:
    """(tokens, Hkv, D) -> (tokens, H, D): query head h reads kv head h // (H // Hkv)."""
    return t.repeat_interleave(num_heads // t.shape[1], dim=1)


@dataclass(frozen=True)
class Block:
    """Query rows ``[r0, r1)`` and the packed keys ``[k0, k1)`` any of them sees."""

    r0: int
    r1: int
    k0: int
    k1: int


# A block's (rows x key span) may exceed the pairs its rows actually see by this factor;
# a causal block alone wastes 2x (its upper triangle), so 4 leaves room for joining the
# short requests of a batch into one block.
MAX_WASTE = 4.0


def plan_blocks(lo: Tensor, hi: Tensor, max_rows: int, max_waste: float = MAX_WASTE
                ) -> list[Block]:
    """Consecutive query rows grouped into blocks whose key spans waste little work.

    Rows are cut into chunks of ``max_rows``; a chunk whose rows see scattered keys (the
    decode rows of many requests: each sees only its own context) is halved until it
    wastes at most ``max_waste`` x the visible pairs. Rows that see no key are left out.
    """
    widths = (hi - lo + 1).clamp_min(0)
    pending = [(r0, min(r0 + max_rows, len(lo))) for r0 in range(0, len(lo), max_rows)]
    blocks = []
    while pending:
        r0, r1 = pending.pop()
        seen = widths[r0:r1] > 0
        if not bool(seen.any()):
            continue
        k0, k1 = int(lo[r0:r1][seen].min()), int(hi[r0:r1][seen].max()) + 1
        visible = int(widths[r0:r1].sum())
        if r1 - r0 > 1 and (k1 - k0) * int(seen.sum()) > max_waste * visible:
            middle = (r0 + r1) // 2
            pending += [(middle, r1), (r0, middle)]
            continue
        blocks.append(Block(r0, r1, k0, k1))
    return blocks


def interval_mask(lo: Tensor, hi: Tensor, k0: int, k1: int) -> Tensor:
    """Boolean ``(rows, k1 - k0)``: row ``r`` sees packed key ``k0 + c`` (``lo``/``hi`` on the
    device the mask is wanted on)."""
    cols = torch.arange(k0, k1, device=lo.device)
    return (cols >= lo[:, None]) & (cols <= hi[:, None])
