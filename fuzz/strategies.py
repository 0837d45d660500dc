"""Hypothesis strategies for prefix-attention cases.

Layouts are drawn the way engines produce them: varlen batches with decode steps
and empty requests, cached context, chunks that start or end inside an image,
several images per request, one-token images, images touching 0 or the last
position, images cut by the end of the chunk. Every knob has a default for the
CPU gate; the fuzz runner and the GPU tier widen them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from hypothesis import example
from hypothesis import strategies as st

from verify.case import POISONS, VALUE_PROFILES, CaseSpec, parse_case

PAGE_SIZES = (None, 1, 3, 7, 16, 64, 128)
HEAD_DIMS = (64, 128, 256)
GQA_RATIOS = (1, 2, 4)
SOFTCAPS = (5.0, 30.0)
# Explicit softmax scales: Gemma's query_pre_attn_scalar-style values, one cooler, one hotter.
SOFTMAX_SCALES = (0.0625, 0.25, 0.5)


@dataclass(frozen=True)
class Space:
    """The bounds cases are drawn from."""

    max_requests: int = 3
    max_seq_len: int = 64
    max_ranges: int = 3
    max_kv_heads: int = 2
    gqa_ratios: Sequence[int] = GQA_RATIOS
    head_dims: Sequence[int] = HEAD_DIMS
    dtypes: Sequence[str] = ("bfloat16", "float16")
    page_sizes: Sequence[int | None] = PAGE_SIZES
    window: bool = True
    softcap: bool = True
    value_dims: bool = True  # head_dim_v may differ from head_dim
    scales: bool = True  # an explicit softmax_scale instead of 1/sqrt(head_dim)
    value_profiles: Sequence[str] = VALUE_PROFILES
    poisons: Sequence[str] = POISONS
    overlapping_ranges: bool = False

    def narrowed(self, **changes: object) -> Space:
        return replace(self, **changes)


CPU_SPACE = Space()
# The Triton interpreter runs every program instance in Python: keep shapes tiny.
INTERPRETER_SPACE = Space(max_requests=2, max_seq_len=40, head_dims=(16, 32, 64),
                          dtypes=("float32", "bfloat16"), max_kv_heads=2)
GPU_SPACE = Space(max_requests=6, max_seq_len=2048, max_ranges=6, max_kv_heads=4,
                  page_sizes=(None, 16, 64, 128))


@st.composite
def image_ranges(draw: st.DrawFn, seq_len: int, context_len: int, max_ranges: int
                 ) -> list[list[int]]:
    """Non-overlapping inclusive ranges, biased toward the boundaries that break kernels."""
    # Requests without images stay in, but most requests carry at least one.
    count = draw(st.sampled_from([0, *range(1, max_ranges + 1), *range(1, max_ranges + 1)]))
    ranges: list[list[int]] = []
    cursor = 0
    # Up to 8 positions past the end: an image the chunk has only partly reached.
    limit = seq_len + draw(st.sampled_from([0, 0, 8]))
    for k in range(count):
        if cursor >= limit:
            break
        if k == 0 and context_len > 0 and draw(st.booleans()):
            # The chunk starts inside this image: it began in the cached context.
            start = draw(st.integers(max(0, context_len - 16), context_len - 1))
            end = draw(st.integers(context_len, max(context_len, limit - 1)))
        else:
            start = cursor + draw(st.integers(0, max(0, min(limit - cursor - 1, 24))))
            length = draw(st.sampled_from([1, 2, 0, 0])) or draw(
                st.integers(2, max(2, limit - start)))
            end = min(start + length - 1, limit - 1)
        ranges.append([start, end])
        cursor = end + 1 + draw(st.integers(0, 1))  # adjacent images (gap 0) happen too
    return ranges


@st.composite
def overlapping_ranges(draw: st.DrawFn, seq_len: int, max_ranges: int) -> list[list[int]]:
    """Arbitrary ranges that may overlap (for layouts that allow the union)."""
    count = draw(st.integers(0, max_ranges))
    out = []
    for _ in range(count):
        start = draw(st.integers(0, max(0, seq_len - 1)))
        out.append([start, draw(st.integers(start, seq_len + 4))])
    return out


@st.composite
def request_dicts(draw: st.DrawFn, space: Space) -> dict:
    kind = draw(st.sampled_from(["prefill", "prefill", "chunk", "decode", "empty"]))
    max_len = space.max_seq_len
    if kind == "decode":
        context_len, query_len = draw(st.integers(0, max_len - 1)), 1
    elif kind == "empty":
        context_len, query_len = draw(st.integers(0, max_len)), 0
    elif kind == "chunk":
        context_len = draw(st.integers(1, max_len - 1))
        query_len = draw(st.integers(1, max_len - context_len))
    else:
        context_len, query_len = 0, draw(st.integers(1, max_len))
    seq_len = context_len + query_len
    if space.overlapping_ranges:
        ranges = draw(overlapping_ranges(seq_len, space.max_ranges))
    else:
        ranges = draw(image_ranges(seq_len, context_len, space.max_ranges))
    return {"context_len": context_len, "query_len": query_len, "ranges": ranges}


@st.composite
def case_dicts(draw: st.DrawFn, space: Space = CPU_SPACE) -> dict:
    """A JSON case (see DESIGN.md section 5) drawn from ``space``."""
    requests = draw(st.lists(request_dicts(space), min_size=1, max_size=space.max_requests))
    if all(r["query_len"] == 0 for r in requests):
        requests[0] = {**requests[0], "query_len": 1}
    num_kv_heads = draw(st.integers(1, space.max_kv_heads))
    window = None
    clamp = False
    if space.window and draw(st.booleans()):
        window = draw(st.integers(1, space.max_seq_len))
        clamp = draw(st.booleans())
    head_dim = draw(st.sampled_from(list(space.head_dims)))
    head_dim_v = None
    others = [d for d in space.head_dims if d != head_dim]
    if space.value_dims and others and draw(st.integers(0, 5)) == 5:  # shrinks toward equal
        head_dim_v = draw(st.sampled_from(others))
    return {
        "requests": requests,
        "num_heads": num_kv_heads * draw(st.sampled_from(list(space.gqa_ratios))),
        "num_kv_heads": num_kv_heads,
        "head_dim": head_dim,
        "head_dim_v": head_dim_v,
        "dtype": draw(st.sampled_from(list(space.dtypes))),
        "page_size": draw(st.sampled_from(list(space.page_sizes))),
        "sliding_window": window,
        "clamp_ranges_to_window": clamp,
        "softcap": draw(st.sampled_from([None, *SOFTCAPS])) if space.softcap else None,
        "softmax_scale": draw(st.sampled_from([None, None, None, *SOFTMAX_SCALES]))
        if space.scales else None,
        "seed": draw(st.integers(0, 2**16)),
        "value_profile": draw(st.sampled_from(list(space.value_profiles))),
        "poison": draw(st.sampled_from(list(space.poisons))),
        "allow_overlapping_ranges": space.overlapping_ranges,
    }


def cases(space: Space = CPU_SPACE) -> st.SearchStrategy[CaseSpec]:
    """Validated :class:`CaseSpec` objects drawn from ``space``."""
    return case_dicts(space).map(parse_case)


def _case(requests: list[dict], **fields: object) -> CaseSpec:
    base = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "bfloat16",
            "page_size": 16, "seed": 7}
    return parse_case({"requests": requests, **base, **fields})


# Hand-picked layouts every property test also runs, by name: tile edges +-1, primes, the
# boundaries of the semantics. Small enough for the CPU gate. golden/edge-<name>.json
# replays each with the verdict every target must give.
ADVERSARIAL_CASES: dict[str, CaseSpec] = {
    "tile_edges_17_and_16": _case([{"query_len": 17, "ranges": [[0, 15]]},
                                   {"query_len": 16, "ranges": [[15, 16]]}]),
    "range_inside_one_page_of_64": _case([{"query_len": 63, "ranges": [[1, 62]]}],
                                         page_size=64),
    "adjacent_ranges_past_64": _case([{"query_len": 65, "ranges": [[16, 47], [48, 64]]}],
                                     page_size=None),
    "chunk_starts_inside_range": _case([{"context_len": 20, "query_len": 17,
                                         "ranges": [[12, 30]]}]),
    "range_cut_by_chunk_end": _case([{"context_len": 30, "query_len": 7, "ranges": [[33, 60]]}]),
    "one_token_ranges": _case([{"query_len": 37, "ranges": [[5, 5], [6, 6], [36, 36]]}],
                              page_size=7),
    "decode_empty_and_chunk": _case([{"context_len": 40, "query_len": 1, "ranges": [[30, 50]]},
                                     {"query_len": 0},
                                     {"context_len": 3, "query_len": 29, "ranges": [[0, 31]]}]),
    "window_shorter_than_range": _case([{"query_len": 61, "ranges": [[2, 40]]}],
                                       sliding_window=8),
    "window_clamps_range": _case([{"query_len": 61, "ranges": [[2, 40]]}], sliding_window=8,
                                 clamp_ranges_to_window=True),
    "softcap_peaky_gqa4": _case([{"query_len": 31, "ranges": [[4, 25]]}], softcap=5.0,
                                num_heads=8, num_kv_heads=2, head_dim=128,
                                value_profile="peaky"),
    "near_ties_nan_poison_fp16": _case([{"query_len": 29, "ranges": [[3, 20]]}],
                                       dtype="float16", head_dim=256, value_profile="near_ties",
                                       poison="nan", page_size=1),
}


Test = TypeVar("Test", bound=Callable[..., None])


def with_adversarial_examples(test: Test) -> Test:
    """Run a ``@given(spec=...)`` test on every case of ADVERSARIAL_CASES first."""
    for spec in ADVERSARIAL_CASES.values():
        test = example(spec=spec)(test)
    return test
