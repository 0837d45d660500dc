"""Which layout features a case exercises: the report counts them over the judged cases.

A fast stream that never draws a chunk starting inside an image, or never a paged cache,
tests less than its case count says; the report lists every feature with its count so a
reviewer sees what was covered.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from prefix_referee.verify.case import CaseSpec

FEATURES = (
    "packed_kv", "paged_kv", "page_table_slack", "zero_range_padding", "decode", "prefill",
    "chunk", "empty_request", "chunk_starts_inside_range", "range_past_seq_len",
    "one_token_range", "adjacent_ranges", "several_ranges", "range_across_tile_64",
    "range_across_tile_128", "sliding_window", "clamped_window", "softcap", "softmax_scale",
    "gqa", "head_dim_v_differs", "nan_poison", "peaky", "near_ties", "outliers",
    "overlapping_ranges",
)


def _request_features(spec: CaseSpec) -> Iterator[str]:
    for r in spec.requests:
        if r.query_len == 0:
            yield "empty_request"
        elif r.query_len == 1 and r.context_len:
            yield "decode"
        elif r.context_len:
            yield "chunk"
        else:
            yield "prefill"
        ends = sorted(r.ranges)
        if len(ends) > 1:
            yield "several_ranges"
        for (_, e1), (s2, _) in itertools.pairwise(ends):
            if s2 == e1 + 1:
                yield "adjacent_ranges"
        for s, e in r.ranges:
            if s < r.context_len <= e:
                yield "chunk_starts_inside_range"
            if e >= r.seq_len:
                yield "range_past_seq_len"
            if s == e:
                yield "one_token_range"
            for tile in (64, 128):
                if s < tile <= e and r.seq_len > tile:
                    yield f"range_across_tile_{tile}"


def configuration(spec: CaseSpec) -> str:
    """What kernels compile for, as a key: dtype, heads, head dims, page size, softcap (the
    report counts the configurations a target was judged on)."""
    return (f"{spec.dtype}/{spec.num_heads}:{spec.num_kv_heads}/{spec.head_dim}:"
            f"{spec.value_dim}/{spec.page_size}/{spec.softcap}")


def features(spec: CaseSpec) -> set[str]:
    """The features of :data:`FEATURES` that ``spec`` has."""
    found = set(_request_features(spec))
    found.add("packed_kv" if spec.page_size is None else "paged_kv")
    flags = {
        "page_table_slack": spec.page_table_slack > 0,
        "zero_range_padding": spec.range_padding == "zero",
        "sliding_window": spec.sliding_window is not None,
        "clamped_window": spec.clamp_ranges_to_window,
        "softcap": spec.softcap is not None,
        "softmax_scale": spec.softmax_scale is not None,
        "gqa": spec.num_heads != spec.num_kv_heads,
        "head_dim_v_differs": spec.value_dim != spec.head_dim,
        "nan_poison": spec.poison == "nan",
        "peaky": spec.value_distribution == "peaky",
        "near_ties": spec.value_distribution == "near_ties",
        "outliers": spec.value_distribution == "outliers",
        "overlapping_ranges": spec.allow_overlapping_ranges,
    }
    return found | {name for name, present in flags.items() if present}
