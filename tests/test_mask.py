"""The mask module against a literal reading of docs/semantics.md, and its named facts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given

from prefix_referee.fuzz.cases.strategies import CPU_SPACE, cases
from prefix_referee.verify import CaseSpec, parse_case
from prefix_referee.verify.mask import mask_differs_from_causal, request_mask, visible_intervals

SPACE = CPU_SPACE.narrowed(overlapping_ranges=True)


def literal_visible(spec: CaseSpec, context_len: int, query_len: int,
                    ranges: tuple[tuple[int, int], ...], i: int, j: int) -> bool:
    """The definition, word for word, for one (query, key) pair."""
    p, seq_len, w = context_len + i, context_len + query_len, spec.sliding_window
    if j >= seq_len:
        return False
    causal = j <= p and (w is None or p - j < w)
    in_range = any(s <= p <= e and s <= j <= e for s, e in ranges)
    if in_range and spec.clamp_ranges_to_window:
        in_range = p - j < w
    return causal or in_range


@given(cases(CPU_SPACE))
def test_mask_matches_the_definition(spec: CaseSpec) -> None:
    _assert_literal(spec)


@given(cases(SPACE))
def test_overlapping_ranges_take_the_union(spec: CaseSpec) -> None:
    _assert_literal(spec)


def _assert_literal(spec: CaseSpec) -> None:
    for r in spec.requests:
        mask = request_mask(spec, r)
        assert mask.shape == (r.query_len, r.seq_len)
        want = [[literal_visible(spec, r.context_len, r.query_len, r.ranges, i, j)
                 for j in range(r.seq_len)] for i in range(r.query_len)]
        assert mask.tolist() == want


@given(cases(SPACE))
def test_each_mask_row_is_one_interval(spec: CaseSpec) -> None:
    for r in spec.requests:
        lo, hi = visible_intervals(torch.arange(r.context_len, r.seq_len), r.ranges, r.seq_len,
                                   spec.sliding_window, spec.clamp_ranges_to_window)
        keys = torch.arange(r.seq_len)
        assert torch.equal((keys >= lo[:, None]) & (keys <= hi[:, None]), request_mask(spec, r))


def _one(context_len: int, query_len: int, ranges: list[list[int]],
         **extra: object) -> torch.Tensor:
    spec = parse_case({"requests": [{"context_len": context_len, "query_len": query_len,
                                     "ranges": ranges}], "num_heads": 1, "head_dim": 8,
                       "dtype": "float32", **extra})
    return request_mask(spec, spec.requests[0])


def test_query_before_a_range_is_purely_causal() -> None:
    mask = _one(0, 10, [[5, 8]])
    assert mask[4].tolist() == [True] * 5 + [False] * 5


def test_query_inside_a_range_sees_its_future_keys_up_to_the_end() -> None:
    mask = _one(0, 10, [[5, 8]])
    assert mask[5].tolist() == [True] * 9 + [False]


def test_one_token_range_adds_nothing() -> None:
    assert torch.equal(_one(0, 10, [[4, 4]]), _one(0, 10, []))


def test_range_past_seq_len_never_creates_keys() -> None:
    mask = _one(0, 6, [[3, 40]])
    assert mask.shape == (6, 6) and mask[3].all()


def test_chunk_inside_a_range_sees_the_whole_range_in_absolute_positions() -> None:
    mask = _one(12, 4, [[10, 15]])  # queries at positions 12..15, range began in the cache
    assert mask.all(dim=1).all() and mask[:, :10].all()


def test_window_clamps_only_the_causal_term_by_default() -> None:
    free = _one(0, 12, [[0, 11]], sliding_window=2)
    clamped = _one(0, 12, [[0, 11]], sliding_window=2, clamp_ranges_to_window=True)
    assert free.all()
    assert clamped[11].tolist() == [False] * 10 + [True, True]


@pytest.mark.parametrize(("ranges", "differs"), [([], False), ([[3, 3]], False),
                                                 ([[3, 4]], True), ([[0, 2]], True)])
def test_mask_differs_from_causal(ranges: list[list[int]], differs: bool) -> None:
    spec = parse_case({"requests": [{"query_len": 8, "ranges": ranges}], "num_heads": 1,
                       "head_dim": 8, "dtype": "float32"})
    assert mask_differs_from_causal(spec) is differs
