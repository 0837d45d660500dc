"""Packing cases into one varlen batch, so one kernel call judges many cases.

Cases pack when they agree on everything but their requests and seeds (the batch-wide
options: configuration, window, clamp, scale, values, poison); :func:`pack_key` says
which. The packed case lists every request in order, each with its value stream as an
explicit ``seed``, so it is itself a valid case (it can be saved, replayed, shrunk) and
its tensors are exactly its cases' tensors, concatenated (docs/design.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

from prefix_referee.verify.case import CaseSpec, Request
from prefix_referee.verify.compare import Segment
from prefix_referee.verify.values import request_stream

_PER_CASE = ("requests", "seed", "format")


def pack_key(spec: CaseSpec) -> str:
    """Cases with equal keys can share one batch."""
    shared = {k: v for k, v in spec.to_dict().items() if k not in _PER_CASE}
    for annotation in spec.extra:
        shared.pop(annotation, None)
    return json.dumps(shared, sort_keys=True)


def with_explicit_seeds(spec: CaseSpec) -> tuple[Request, ...]:
    """The case's requests, each carrying the value stream it draws from."""
    return tuple(r if r.seed is not None else replace(r, seed=request_stream(spec.seed, i))
                 for i, r in enumerate(spec.requests))


def pack(specs: Sequence[CaseSpec]) -> tuple[CaseSpec, list[Segment]]:
    """One case holding every request of ``specs``, and where each case's rows and keys are.

    Raises ValueError if the cases do not share their batch-wide options.
    """
    keys = {pack_key(s) for s in specs}
    if len(keys) != 1:
        raise ValueError("cases of one pack must agree on everything but requests and seeds")
    requests: list[Request] = []
    segments = []
    rows = keys_seen = 0
    for spec in specs:
        requests += with_explicit_seeds(spec)
        segments.append(Segment(rows, rows + spec.total_q, keys_seen, keys_seen + spec.total_k))
        rows, keys_seen = rows + spec.total_q, keys_seen + spec.total_k
    packed = replace(specs[0], requests=tuple(requests), extra={})
    return packed, segments
