"""Digests of a case's outputs: equal bits, equal digest, wherever a case sits in a batch.

Runs in different jobs (other workers, other processes) compare by a short string, so
tensors never leave the process that made them (docs/design.md, beyond tolerance).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from prefix_referee.verify.compare import Segment

# Elements hashed at once (bounds the digest's working memory on a large GPU pack).
DIGEST_CHUNK = 1 << 22
BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.uint8}


def bits(t: Tensor) -> Tensor:
    """The tensor's bits as integers of its width (so NaN equals NaN)."""
    return t.contiguous().view(BITS[t.element_size()])


@functools.cache
def _constants(count: int, lane: int, device: torch.device) -> Tensor:
    """Odd 62-bit multipliers, one per column of a row (fixed: digests compare across runs)."""
    generator = torch.Generator().manual_seed(0x5EED + lane)
    return (torch.randint(0, 1 << 62, (count,), generator=generator) | 1).to(device)


def _row_hashes(t: Tensor, lane: int) -> Tensor:
    """Per row of ``t`` (rows, ...): a linear hash of its bits (int64 arithmetic wraps, so the
    sum is the same in any order)."""
    flat = bits(t).reshape(t.shape[0], math.prod(t.shape[1:]))
    columns = flat.shape[1]
    weights = _constants(columns, lane, t.device)
    out = torch.zeros(flat.shape[0], dtype=torch.int64, device=t.device)
    rows_per_chunk = max(1, DIGEST_CHUNK // max(columns, 1))
    for r in range(0, flat.shape[0], rows_per_chunk):
        chunk = flat[r:r + rows_per_chunk].to(torch.int64)
        out[r:r + rows_per_chunk] = (chunk * weights).sum(dim=1)
    return out


def segment_digests(out: Tensor, lse: Tensor | None, segments: Sequence[Segment]) -> list[str]:
    """A digest of each segment's ``out`` rows and ``lse`` columns: equal bits, equal digest,
    wherever the segment sits in the batch (row numbers count from the segment's start).
    The segments follow each other, as a pack's cases do."""
    if not segments:
        return []
    device = out.device
    starts = torch.tensor([s.r0 for s in segments], device=device)
    lengths = torch.tensor([s.r1 - s.r0 for s in segments], device=device)
    ids = torch.repeat_interleave(torch.arange(len(segments), device=device), lengths)
    first, last = segments[0].r0, segments[-1].r1
    local = torch.arange(first, last, device=device) - starts[ids]
    parts = [_row_hashes(out[first:last], 0)]
    if lse is not None:
        parts.append(_row_hashes(lse[:, first:last].T, 1))
    mixed = torch.zeros(len(segments), len(parts), dtype=torch.int64, device=device)
    for lane, hashes in enumerate(parts):
        position = local * 0x9E3779B97F4A7C1 + 0x632BE59BD9B4E019 + lane
        mixed[:, lane].index_add_(0, ids, hashes * (position | 1) + position)
    return ["/".join(f"{v & (2**64 - 1):016x}" for v in row) for row in mixed.tolist()]
