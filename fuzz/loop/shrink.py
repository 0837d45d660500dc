"""Shrinking a failing case to a small reproducer that fails the same way.

Greedy delta debugging on the case itself (not on Hypothesis' choices), so any failing
case shrinks: one drawn by the fuzzer, a pack of cases, a golden file. Candidates come
simplest first, layout before configuration: drop requests, drop ranges, shorten
sequences and ranges, then simplify the options, and last the configuration (fewer heads,
a smaller head dim), which costs a compile on kernels that compile. A candidate is kept
when it still fails the way the caller's predicate asks (a finding's symptom, with its
cause still the cause); shrinking stops when no candidate does or the deadline passes,
and the smallest failure so far is the result. Requests keep the
values they had (their streams are pinned before any is dropped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from copy import deepcopy
from dataclasses import replace
from typing import Any

from prefix_referee.verify.case import CaseError, CaseSpec, parse_case, without_annotations
from prefix_referee.verify.pack import with_explicit_seeds
from prefix_referee.verify.runner import Outcome

Data = dict[str, Any]
# Whether a candidate still fails: runs what it needs as yielded batches, returns the answer.
Predicate = Callable[[CaseSpec], Generator[list[CaseSpec], list[Outcome], bool]]
# Option values a failure is simplest at, tried in this order.
SIMPLE_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("sliding_window", None), ("clamp_ranges_to_window", False), ("softcap", None),
    ("softmax_scale", None), ("value_distribution", "normal"), ("poison", "finite"),
    ("page_table_slack", 0), ("range_padding", "negative"), ("page_size", None),
    ("head_dim_v", None), ("allow_overlapping_ranges", False), ("seed", 0),
)


def _smaller(n: int, least: int = 0) -> list[int]:
    """Values below ``n`` to try, boldest first."""
    return sorted({least, n // 2, n - 1} - {n}, key=lambda m: (m != least, m))


def _request_candidates(data: Data) -> Iterator[Data]:
    requests = data["requests"]
    if len(requests) > 1:
        for i in range(len(requests)):  # keep one request alone, then drop one
            yield {**data, "requests": [requests[i]]}
        for i in range(len(requests)):
            yield {**data, "requests": requests[:i] + requests[i + 1:]}
    for i, r in enumerate(requests):
        def with_request(change: dict, i: int = i, r: dict = r) -> Data:
            return {**data, "requests": [*requests[:i], {**r, **change}, *requests[i + 1:]]}

        for k in range(len(r.get("ranges", []))):
            yield with_request({"ranges": r["ranges"][:k] + r["ranges"][k + 1:]})
        # Drop leading tokens (cached keys first, then queries), the ranges moving with
        # them: a range late in a long sequence cannot shrink otherwise.
        context = r.get("context_len", 0)
        lead = min([context or r["query_len"] - 1, *(s for s, _ in r.get("ranges", []))])
        for d in sorted({lead, lead // 2} - {0}, reverse=True):
            yield with_request({"context_len": max(0, context - d),
                                "query_len": r["query_len"] - max(0, d - context),
                                "ranges": [[s - d, e - d] for s, e in r.get("ranges", [])]})
        for n in _smaller(r["query_len"], least=1 if r["query_len"] else 0):
            yield with_request({"query_len": n})
        for n in _smaller(context):
            yield with_request({"context_len": n})
        for k, (s, e) in enumerate(r.get("ranges", [])):
            shorter = [[s, m] for m in _smaller(e, least=s) if m >= s]
            later = [[m, e] for m in (s + 1, (s + e) // 2) if s < m <= e]
            for pair in [*shorter, *later, [0, e - s]]:
                if pair != [s, e]:
                    yield with_request({"ranges": [*r["ranges"][:k], pair,
                                                   *r["ranges"][k + 1:]]})
        if r.get("seed") is not None:
            yield with_request({"seed": None})


def _option_candidates(data: Data) -> Iterator[Data]:
    for key, simple in SIMPLE_OPTIONS:
        if key in data and data[key] != simple:
            yield {**data, key: simple}


def _config_candidates(data: Data) -> Iterator[Data]:
    heads, kv_heads = data["num_heads"], data.get("num_kv_heads", data["num_heads"])
    if heads != kv_heads:
        yield {**data, "num_heads": kv_heads}
    if kv_heads > 1:
        yield {**data, "num_kv_heads": 1, "num_heads": heads // kv_heads}
    for dim in _smaller(data["head_dim"], least=16):
        if dim % 16 == 0 and dim >= 16:
            yield {**data, "head_dim": dim}


def candidates(spec: CaseSpec) -> Iterator[CaseSpec]:
    """Valid cases a little simpler than ``spec``, simplest first."""
    data = without_annotations(replace(spec, requests=with_explicit_seeds(spec))).to_dict()
    for generate in (_request_candidates, _option_candidates, _config_candidates):
        for candidate in generate(deepcopy(data)):
            try:
                yield parse_case(candidate)
            except CaseError:
                continue


def shrink(spec: CaseSpec, still_fails: Predicate, accepts: Callable[[CaseSpec], bool],
           deadline: float, max_tried: int | None = None
           ) -> Generator[list[CaseSpec], list[Outcome], tuple[CaseSpec, int]]:
    """The smallest case found that still fails, and how many candidates were tried (until
    ``deadline`` on the monotonic clock, or ``max_tried`` candidates).

    ``accepts`` filters candidates the target declines; ``still_fails(candidate)`` decides,
    running what it needs through the same yields (a generator: batches of cases out,
    their outcomes in), so a campaign spreads the runs over its workers.
    """
    current = spec
    tried = 0
    seen = {without_annotations(spec).to_json()}
    improved = True

    def over() -> bool:
        return time.monotonic() >= deadline or (max_tried is not None and tried >= max_tried)

    while improved and not over():
        improved = False
        for candidate in candidates(current):
            if over():
                break
            key = candidate.to_json()
            if key in seen or not accepts(candidate):
                continue
            seen.add(key)
            tried += 1
            if (yield from still_fails(candidate)):
                current, improved = candidate, True
                break
    return current, tried
