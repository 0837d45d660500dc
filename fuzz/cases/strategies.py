"""Hypothesis strategies for prefix-attention cases.

Layouts are drawn the way engines produce them: varlen batches with decode steps and
empty requests, cached context, chunks that start or end inside an image, several images
per request, one-token images, images touching 0 or the last position, images cut by the
end of the chunk, lengths around the tile sizes kernels use. A case is drawn in three
parts, so that a fuzzer can hold the expensive part fixed:

* the **configuration** (dtype, KV cache dtype, heads, head dims, page size, softcap:
  what kernels compile for), :func:`config_dicts`;
* the batch-wide **options** (window, clamp, scale, values, poison, FP8 scale
  granularity, contract knobs), :func:`option_dicts`;
* the **layout** (requests and their ranges, the seed), :func:`layout_dicts`.

:func:`case_dicts` draws all three. Every knob has a default for the CPU gate; the fuzz
runner, the GPU tier and the model presets (:mod:`fuzz.cases.models`) narrow or widen them,
and a target's declared layout predicates (``Space.layout``) are honoured while drawing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hypothesis import example
from hypothesis import strategies as st

from prefix_referee.verify.case import (
    DTYPES,
    KV_SCALES,
    POISONS,
    VALUE_DISTRIBUTIONS,
    CaseSpec,
    parse_case,
)

PAGE_SIZES = (None, 1, 3, 7, 16, 64, 128)
HEAD_DIMS = (64, 128, 256)
GQA_RATIOS = (1, 2, 4)
SOFTCAPS = (5.0, 30.0)
# Explicit softmax scales: Gemma's query_pre_attn_scalar-style values, one cooler, one hotter.
SOFTMAX_SCALES = (0.0625, 0.25, 0.5)
# A range straddling a tile edge starts up to this many tokens before it and ends as far after.
EDGE_REACH = 8


@dataclass(frozen=True)
class Space:
    """The bounds cases are drawn from.

    ``heads`` fixes (num_heads, num_kv_heads) pairs (else ``max_kv_heads`` x
    ``gqa_ratios``); ``windows``, ``clamp``, ``softcaps`` and ``softmax_scales`` fix those
    options when set. ``tile_edges``: lengths and ranges around these tile sizes are drawn
    too, for edges up to twice ``max_seq_len``; ``tile_edge_rarity`` makes them that many
    times rarer, and then every edge is drawn (a space of short cases still crosses the
    edges kernels tile by, now and then). ``image_sizes``: the token counts of
    images (else any). ``prefix_lm``: each request's range is one prefix ``[0, L - 1]``
    (PaliGemma's image + prompt). ``kv_dtypes``: the K/V storage dtypes (None: the query
    dtype; an FP8 dtype draws an FP8 cache with descales of a granularity in
    ``kv_scales``). ``layout`` names predicates of
    :data:`verify.capabilities.LAYOUT_PREDICATES` to honour. ``window_range`` bounds the
    windows drawn; ``min_ranges`` makes every request an image request (a pack of images).
    """

    max_requests: int = 3
    max_seq_len: int = 64
    max_ranges: int = 3
    max_kv_heads: int = 2
    gqa_ratios: Sequence[int] = GQA_RATIOS
    heads: Sequence[tuple[int, int]] | None = None
    head_dims: Sequence[int] = HEAD_DIMS
    dtypes: Sequence[str] = DTYPES
    kv_dtypes: Sequence[str | None] = (None,)
    kv_scales: Sequence[str] = KV_SCALES
    page_sizes: Sequence[int | None] = PAGE_SIZES
    window: bool = True
    windows: Sequence[int] | None = None
    clamp: bool | None = None
    softcap: bool = True
    softcaps: Sequence[float] = SOFTCAPS
    value_dims: bool = True  # head_dim_v may differ from head_dim
    scales: bool = True  # an explicit softmax_scale instead of 1/sqrt(head_dim)
    softmax_scales: Sequence[float] = SOFTMAX_SCALES
    default_scale: bool = True  # 1/sqrt(head_dim) is drawn too
    value_distributions: Sequence[str] = VALUE_DISTRIBUTIONS
    poisons: Sequence[str] = POISONS
    overlapping_ranges: bool = False
    contract_knobs: bool = True  # page-table slack and (0, 0) range padding
    tile_edges: Sequence[int] = ()
    tile_edge_rarity: int = 1
    image_sizes: Sequence[int] | None = None
    prefix_lm: bool = False
    layout: frozenset[str] = frozenset()
    window_range: tuple[int, int] | None = None  # the windows a target takes (inclusive)
    min_ranges: int = 0  # every request has at least this many ranges (where they fit)
    max_total_tokens: int | None = None  # keys of all requests together (a target's limit)

    def narrowed(self, **changes: object) -> Space:
        return replace(self, **changes)

    @property
    def edges(self) -> tuple[int, ...]:
        """The tile edges drawn: those up to twice ``max_seq_len``, or every one in a space
        that draws them rarely (short cases that still cross them now and then)."""
        return tuple(e for e in self.tile_edges
                     if e <= 2 * self.max_seq_len or self.tile_edge_rarity > 1)

    @property
    def longest(self) -> int:
        """The longest sequence a request may have (tile edges reach one past the edge)."""
        return max([self.max_seq_len, *(e + EDGE_REACH for e in self.edges)])


CPU_SPACE = Space(tile_edges=(64, 128))
# The Triton interpreter runs every program instance in Python: keep shapes tiny, and cross
# the tile edges rarely.
INTERPRETER_SPACE = Space(max_requests=2, max_seq_len=40, head_dims=(16, 32, 64),
                          dtypes=("float32", "bfloat16"), max_kv_heads=2, tile_edges=(64, 128),
                          tile_edge_rarity=3)
GPU_SPACE = Space(max_requests=6, max_seq_len=2048, max_ranges=6, max_kv_heads=4,
                  page_sizes=(None, 16, 64, 128), tile_edges=(64, 128, 256))


def _has(space: Space, predicate: str) -> bool:
    return predicate in space.layout


@st.composite
def _sequence_length(draw: st.DrawFn, space: Space, low: int) -> int:
    """A length in ``[low, max]``, often one around a tile edge, otherwise log-uniform:
    every scale of length is drawn about as often, so long sequences come up without
    making every case long (the reference's work grows with the square of the length)."""
    edges = [e + d for e in space.edges for d in (-1, 0, 1) if e + d >= low]
    if edges and draw(st.integers(0, 4 * space.tile_edge_rarity - 1)) == 0:
        return draw(st.sampled_from(edges))
    high = max(low, space.max_seq_len)
    octave = draw(st.integers(low.bit_length() - 1, high.bit_length() - 1))
    return draw(st.integers(max(low, 1 << octave), min(high, (2 << octave) - 1)))


@st.composite
def _range_length(draw: st.DrawFn, space: Space, room: int) -> int:
    if space.image_sizes:
        fits = [n for n in space.image_sizes if n <= room]
        if fits:
            return draw(st.sampled_from(fits))
    minimum = 2 if _has(space, "no_one_token_ranges") else 1
    short = [n for n in (1, 2) if n >= minimum]
    length = draw(st.sampled_from([*short, 0, 0])) or draw(st.integers(2, max(2, room)))
    return max(length, minimum)


@st.composite
def image_ranges(draw: st.DrawFn, seq_len: int, context_len: int, space: Space,
                 window: int | None = None, edge: int | None = None) -> list[list[int]]:
    """Non-overlapping inclusive ranges, biased toward the boundaries that break kernels.

    ``window`` (when ranges must fit in it) caps their length; ``edge``: the first range
    straddles this tile edge.
    """
    if space.prefix_lm:  # one prefix: the image, then the prompt
        fits = [n for n in space.image_sizes or () if n <= seq_len]
        image = draw(st.sampled_from(fits) if fits else st.integers(1, max(1, seq_len)))
        end = image + draw(st.integers(0, 32)) - 1
        if _has(space, "ranges_within_sequence"):
            end = min(end, seq_len - 1)
        return [[0, end]]
    count = draw(st.sampled_from([0, *range(1, space.max_ranges + 1),
                                  *range(1, space.max_ranges + 1)]))
    if space.max_ranges == 0:
        return []
    if edge is not None:
        count = max(count, 1)
    count = max(count, min(space.min_ranges, space.max_ranges))
    ranges: list[list[int]] = []
    cursor = 0
    # Up to 8 positions past the end: an image the chunk has only partly reached.
    past_end = 0 if _has(space, "ranges_within_sequence") else draw(st.sampled_from([0, 0, 8]))
    limit = seq_len + past_end
    longest = window or limit
    for k in range(count):
        straddle = [e for e in space.edges if max(cursor + 1, EDGE_REACH) <= e < limit - 1]
        if cursor >= limit:
            break
        if (k == 0 and context_len > 0 and not _has(space, "chunk_starts_outside_ranges")
                and draw(st.booleans())):
            # The chunk starts inside this image: it began in the cached context.
            start = draw(st.integers(max(0, context_len - 16), context_len - 1))
            end = draw(st.integers(context_len, max(context_len, limit - 1)))
        elif straddle and (edge in straddle or draw(st.integers(0, 3)) == 0):
            # An image across a tile edge: a key loop that stops at the tile's causal limit
            # drops its future keys.
            across = edge if edge in straddle else draw(st.sampled_from(straddle))
            start = max(cursor, draw(st.integers(across - EDGE_REACH, across - 1)))
            end = draw(st.integers(max(start, across), min(limit - 1, across + EDGE_REACH)))
            edge = None
        else:
            start = cursor + draw(st.integers(0, max(0, min(limit - cursor - 1, 24))))
            end = start + draw(_range_length(space, max(1, limit - start))) - 1
        end = min(end, limit - 1, start + longest - 1)
        if _has(space, "chunk_starts_outside_ranges") and start < context_len <= end:
            end = context_len - 1
        if end < start or (_has(space, "no_one_token_ranges") and end == start):
            continue
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
def request_dicts(draw: st.DrawFn, space: Space, window: int | None = None) -> dict:
    kinds = ["prefill", "prefill", "chunk", "decode", "empty"] * space.tile_edge_rarity
    if space.edges:
        kinds.append("tile_edge")
    if _has(space, "decode_only"):
        kinds = ["decode", "decode", "empty"]
    if _has(space, "prefill_only"):  # a decode then has no context: one query, one key
        kinds = [k for k in kinds if k != "chunk"]
    if _has(space, "no_empty_requests"):
        kinds = [k for k in kinds if k != "empty"]
    kind = draw(st.sampled_from(kinds))
    edge = None
    if kind == "tile_edge":  # a prefill just past a tile edge, an image across it
        edge = draw(st.sampled_from(space.edges))
        context_len, query_len = 0, edge + draw(st.integers(1, EDGE_REACH))
    elif kind == "decode":
        context_len = 0 if _has(space, "prefill_only") else draw(_sequence_length(space, 1)) - 1
        query_len = 1
    elif kind == "empty":
        context_len = 0 if _has(space, "prefill_only") else draw(st.integers(0, space.max_seq_len))
        query_len = 0
    elif kind == "chunk":
        seq_len = draw(_sequence_length(space, 2))
        context_len = draw(st.integers(1, seq_len - 1))
        query_len = seq_len - context_len
    else:
        context_len, query_len = 0, draw(_sequence_length(space, 1))
    seq_len = context_len + query_len
    if space.overlapping_ranges:
        ranges = draw(overlapping_ranges(seq_len, space.max_ranges))
    else:
        cap = window if _has(space, "ranges_within_window") else None
        ranges = draw(image_ranges(seq_len, context_len, space, cap, edge))
    return {"context_len": context_len, "query_len": query_len, "ranges": ranges}


def _one_of(draw: st.DrawFn, choices: Sequence[Any]) -> Any:
    """One of ``choices``, drawing nothing when there is only one (so a space that offers a
    single choice draws the same stream of cases it drew before the choice existed)."""
    choices = list(choices)
    return choices[0] if len(choices) == 1 else draw(st.sampled_from(choices))


@st.composite
def config_dicts(draw: st.DrawFn, space: Space) -> dict:
    """What a kernel compiles for: dtype, KV cache dtype, heads, head dims, page size,
    softcap."""
    if space.heads:
        num_heads, num_kv_heads = draw(st.sampled_from(list(space.heads)))
    else:
        num_kv_heads = draw(st.integers(1, space.max_kv_heads))
        num_heads = num_kv_heads * draw(st.sampled_from(list(space.gqa_ratios)))
    head_dim = draw(st.sampled_from(list(space.head_dims)))
    head_dim_v = None
    others = [d for d in space.head_dims if d != head_dim]
    if space.value_dims and others and draw(st.integers(0, 3)) == 3:  # shrinks toward equal
        head_dim_v = draw(st.sampled_from(others))
    config = {
        "num_heads": num_heads, "num_kv_heads": num_kv_heads,
        "head_dim": head_dim, "head_dim_v": head_dim_v,
        "dtype": draw(st.sampled_from(list(space.dtypes))),
        "page_size": draw(st.sampled_from(list(space.page_sizes))),
        "softcap": draw(st.sampled_from([None, *space.softcaps])) if space.softcap else None,
    }
    kv_dtype = _one_of(draw, space.kv_dtypes)
    return config if kv_dtype is None else {**config, "kv_dtype": kv_dtype}


@st.composite
def option_dicts(draw: st.DrawFn, space: Space, config: dict) -> dict:
    """The batch-wide options that compile nothing: window, clamp, scale, values, poison."""
    window = None
    clamp = False
    low, high = space.window_range or (1, space.longest)
    if space.windows is not None:
        window = draw(st.sampled_from(list(space.windows)))
    elif space.window and draw(st.booleans()):
        window = draw(st.integers(low, max(low, min(high, space.longest))))
    if window is not None:
        clamp = draw(st.booleans()) if space.clamp is None else space.clamp
        clamp = clamp or _has(space, "clamped_windows")
    scale = None
    if space.scales:
        defaults = [None, None, None] if space.default_scale else []
        scale = draw(st.sampled_from([*defaults, *space.softmax_scales]))
    knobs: dict[str, Any] = {}
    paged = config.get("page_size") is not None
    if space.contract_knobs and paged and draw(st.integers(0, 7)) == 0:
        knobs["page_table_slack"] = draw(st.integers(1, 4))
    if space.contract_knobs and draw(st.integers(0, 7)) == 0:
        knobs["range_padding"] = "zero"
    if config.get("kv_dtype") is not None:
        knobs["kv_scale"] = _one_of(draw, space.kv_scales)
    return {
        "sliding_window": window,
        "clamp_ranges_to_window": clamp,
        "softmax_scale": scale,
        "value_distribution": draw(st.sampled_from(list(space.value_distributions))),
        "poison": draw(st.sampled_from(list(space.poisons))),
        "allow_overlapping_ranges": space.overlapping_ranges,
        **knobs,
    }


@st.composite
def layout_dicts(draw: st.DrawFn, space: Space, options: dict) -> dict:
    """The requests of one case, and its seed."""
    window = options.get("sliding_window")
    requests = draw(st.lists(request_dicts(space, window), min_size=1,
                             max_size=space.max_requests))
    if space.max_total_tokens is not None:  # tile edges can take two requests past it
        total = 0
        for count, r in enumerate(requests):
            total += r["context_len"] + r["query_len"]
            if total > space.max_total_tokens:
                requests = requests[:max(count, 1)]
                break
    if all(r["query_len"] == 0 for r in requests):
        requests[0] = {**requests[0], "query_len": 1}
    return {"requests": requests, "seed": draw(st.integers(0, 2**16))}


# What a pack holds, drawn per pack (weights): a mix of every kind of request; one case
# judged alone; only text requests; only decodes; only image requests. A batch-level
# decision (a mask installed only when some request has an image, a path taken only for
# decodes) shows only in a batch of one kind, and a case alone is a batch of its own.
COMPOSITIONS = {"mixed": 4, "alone": 1, "text": 1, "decodes": 1, "images": 1}


def composed(space: Space, composition: str) -> Space:
    """The space of a pack's requests under ``composition`` (the same space for a mix or a
    case alone)."""
    if composition == "text":
        return space.narrowed(max_ranges=0, prefix_lm=False)
    if composition == "decodes":
        return space.narrowed(layout=space.layout | {"decode_only"})
    if composition == "images" and space.max_ranges > 0:
        return space.narrowed(min_ranges=1)
    return space


@st.composite
def pack_dicts(draw: st.DrawFn, space: Space, config: dict, size: int
               ) -> tuple[dict, list[dict]]:
    """Options and up to ``size`` layouts for one configuration: the cases of one pack, of a
    composition drawn from :data:`COMPOSITIONS`."""
    composition = draw(st.sampled_from([c for c, n in COMPOSITIONS.items() for _ in range(n)]))
    if composition == "alone":
        size = 1
    options = draw(option_dicts(space, config))
    layouts = composed(space, composition)
    return options, [draw(layout_dicts(layouts, options)) for _ in range(size)]


@st.composite
def fresh_pack_dicts(draw: st.DrawFn, space: Space, max_size: int
                     ) -> tuple[dict, dict, list[dict]]:
    """A configuration, options and 1 to ``max_size`` layouts: one pack of its own."""
    config = draw(config_dicts(space))
    options, layouts = draw(pack_dicts(space, config, draw(st.integers(1, max_size))))
    return config, options, layouts


@st.composite
def case_dicts(draw: st.DrawFn, space: Space = CPU_SPACE) -> dict:
    """A JSON case (docs/contract.md) drawn from ``space``."""
    config = draw(config_dicts(space))
    options = draw(option_dicts(space, config))
    return {**draw(layout_dicts(space, options)), **config, **options}


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
                                value_distribution="peaky"),
    "near_ties_nan_poison_fp16": _case([{"query_len": 29, "ranges": [[3, 20]]}],
                                       dtype="float16", head_dim=256,
                                       value_distribution="near_ties", poison="nan",
                                       page_size=1),
    "range_across_tile_128": _case([{"query_len": 131, "ranges": [[120, 130]]}], page_size=None,
                                   num_heads=2, num_kv_heads=1),
    "slack_columns_and_zero_padding": _case(
        [{"context_len": 5, "query_len": 12, "ranges": [[1, 3], [9, 14]]}, {"query_len": 4}],
        page_table_slack=3, range_padding="zero"),
}
# Hand-picked layouts with an FP8 KV cache (docs/contract.md). Kept apart from
# ADVERSARIAL_CASES, which every property test runs on targets that may not read an FP8
# cache; golden/edge-<name>.json replays each with the verdict every target that takes it
# must give.
FP8_ADVERSARIAL_CASES: dict[str, CaseSpec] = {
    "fp8_per_head_scales_paged_nan": _case(
        [{"context_len": 9, "query_len": 14, "ranges": [[4, 15]]},
         {"context_len": 20, "query_len": 1, "ranges": [[2, 12]]}],
        kv_dtype="float8_e4m3fn", kv_scale="head", page_size=7, poison="nan"),
    "fp8_e5m2_fp16_outliers": _case([{"query_len": 19, "ranges": [[3, 11]]}], dtype="float16",
                                    kv_dtype="float8_e5m2", page_size=None, num_heads=2,
                                    num_kv_heads=1, value_distribution="outliers"),
}


Test = TypeVar("Test", bound=Callable[..., None])


def with_adversarial_examples(test: Test) -> Test:
    """Run a ``@given(spec=...)`` test on every case of ADVERSARIAL_CASES first."""
    for spec in ADVERSARIAL_CASES.values():
        test = example(spec=spec)(test)
    return test
