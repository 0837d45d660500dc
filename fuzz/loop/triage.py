"""Triage: what a failing case needs to fail, so that one cause is one finding.

A run that reported symptoms (which output, where, which dtype) would report one bug
several times and could file a second bug under the first. Triage runs the kernel on the
failing case with each of its features taken away (never a query row: a feature's
removal only adds queries or changes options and values), and on the case cut to half
and a quarter of its length. From what clears the failure it names the cause: a trigger
of features, precision, a position threshold, or everywhere (docs/design.md says the
rules and why). Two failures are one finding when their identities are equal.

:func:`triage` is a generator: it yields batches of independent cases to run and is sent
their outcomes in order, so a campaign can spread a batch over its workers while a test
runs it in a loop (:func:`run_sync`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from prefix_referee.fuzz.records.findings import Cause, Identity
from prefix_referee.verify.case import DTYPES, CaseError, CaseSpec, parse_case, without_annotations
from prefix_referee.verify.limits import MAX_SEED
from prefix_referee.verify.pack import with_explicit_seeds
from prefix_referee.verify.runner import Outcome

Accepts = Callable[[CaseSpec], bool]
Runs = Generator[list[CaseSpec], list[Outcome], Any]
Data = dict[str, Any]

NUMERIC = ("out", "lse")
# Symptoms triage leaves alone: each neighbour run of a hang costs the case timeout (of a
# memory hog, a worker filling its memory and a restart), and the referee's own failures
# are not the target's.
UNTRIAGED = ("timeout", "memory", "referee", "unjudgeable")
# The tile edges kernels use: a range across one is a feature of its own.
TILE_EDGES = (64, 128)
# A value-level change (dtype, head dim, values) must also divide the error ratio by this
# to clear a failure: near the tolerance, values move a rounding error by chance.
VALUE_CLEARS_BY = 2.0
# Precision: cutting the keys in half keeps at least this share of the error ratio
# (rounding grows like sqrt(n) or faster, so halving keeps 1/2 to 1/sqrt(2) of it; a
# drop past this share is a cliff, a threshold), and the error stays below this share
# of the values it is measured against (rounding never moves an output by a sizable part
# of itself; a wrong mask or formula does).
PRECISION_KEEPS = 0.25
PRECISION_RELATIVE = 1 / 16
# Over four times the keys, rounding grows at least sqrt(4) = 2 times; the error ratio
# must grow at least this much (its denominator, the baseline's error, grows a little too).
PRECISION_GROWTH = 1.5
# Errors below this count as zero when comparing dtypes (a computation exact by chance).
TINY = 1e-30
CUTS = (2, 4)  # the sequences are cut to 1/2 and 1/4 of the longest
# A constant factor between the LSE and the reference that names its cause.
LSE_FACTORS = {1 / math.log(2): "log base 2 where the natural log belongs?",
               math.log(2): "a natural log scaled by ln 2?"}
LSE_FACTOR_TOLERANCE = 1e-3
# Structural features whose removal also changes the values the case draws or the scores
# they give (other KV heads; queries renumbered when the chunk moves; scores uncapped or
# rescaled).
CHANGE_VALUES = ("gqa", "cached_context", "chunk_inside_range", "softcap", "softmax_scale")
# Other values a cleared feature is confirmed on, at most, and how their seeds are derived.
REDRAWS = 3
REDRAW_MULTIPLIER = 1_000_003


# --- symptoms -------------------------------------------------------------------------------

def symptom(outcome: Outcome) -> str:
    """What went wrong, one word: ``out`` before ``lse`` (a wrong mask moves both), else
    the error kind (``crash``, ``error:IndexError``, ``contract``, ...)."""
    if outcome.verdict is not None and outcome.verdict.symptoms:
        return outcome.verdict.symptoms[0]
    return outcome.kind or str(outcome.status)


def family(what: str) -> str:
    """The symptom a trigger or threshold identity names: ``values`` for out and lse (a
    wrong mask or position moves both; which crosses its tolerance first is luck)."""
    return "values" if what in NUMERIC else what


def shows(outcome: Outcome, what: str) -> bool:
    """Whether ``outcome`` has the symptom ``what``."""
    if what in NUMERIC:
        return outcome.verdict is not None and what in outcome.verdict.symptoms
    return outcome.failed and symptom(outcome) == what


def error_ratio(outcome: Outcome, what: str) -> float | None:
    """The policy's error ratio of the check behind a numeric symptom, else None."""
    verdict = outcome.verdict
    if verdict is None or what not in NUMERIC:
        return None
    return verdict.out_ratio if what == "out" else (verdict.lse_ratio or 0.0)


def relative_error(outcome: Outcome, what: str) -> float:
    """The error of a numeric symptom against the largest reference value it is measured on."""
    verdict = outcome.verdict
    if verdict is None:
        return math.inf
    error, scale = ((verdict.out_error, verdict.out_scale) if what == "out"
                    else (verdict.lse_error or 0.0, verdict.lse_scale))
    return error / scale if scale > 0 else math.inf


# --- case edits -----------------------------------------------------------------------------

def _data(spec: CaseSpec) -> Data:
    return without_annotations(spec).to_dict()


def _case(data: Data) -> CaseSpec | None:
    try:
        return parse_case(data)
    except CaseError:
        return None


def _with(spec: CaseSpec, **fields: Any) -> list[CaseSpec]:
    found = _case({**_data(spec), **fields})
    return [] if found is None else [found]


def _requests(spec: CaseSpec, change: Callable[[Data], Data]) -> list[CaseSpec]:
    data = _data(spec)
    return _with(spec, requests=[change(dict(r)) for r in data["requests"]])


def cap(spec: CaseSpec, length: int) -> CaseSpec | None:
    """Every request cut to at most ``length`` tokens (its queries last, its ranges clipped)."""
    def cut(r: Data) -> Data:
        context, query = r.get("context_len", 0), r["query_len"]
        if context + query <= length:
            return r
        context = min(context, length - 1) if query else min(context, length)
        ranges = [[s, min(e, length - 1)] for s, e in r.get("ranges", []) if s < length]
        return {**r, "context_len": context, "query_len": length - context if query else 0,
                "ranges": ranges}

    found = _requests(spec, cut)
    return found[0] if found else None


def longest(spec: CaseSpec) -> int:
    return max(r.seq_len for r in spec.requests)


def _tile_edge(spec: CaseSpec) -> int | None:
    """The first tile edge an image range crosses inside its sequence, or None."""
    for edge in TILE_EDGES:
        if any(s < edge <= e and r.seq_len > edge for r in spec.requests for s, e in r.ranges):
            return edge
    return None


def _clip_at_tile_edge(spec: CaseSpec) -> list[CaseSpec]:
    edge = _tile_edge(spec)
    return _requests(spec, lambda r: {**r, "ranges": [
        [s, edge - 1] if s < edge <= e else [s, e] for s, e in r.get("ranges", [])]})


def _clip_at_end(spec: CaseSpec) -> list[CaseSpec]:
    def clip(r: Data) -> Data:
        seq = r.get("context_len", 0) + r["query_len"]
        return {**r, "ranges": [[s, min(e, seq - 1)] for s, e in r.get("ranges", []) if s < seq]}

    return _requests(spec, clip)


def _chunk_at_range_start(spec: CaseSpec) -> list[CaseSpec]:
    """The chunk starts where the image it started inside starts (no query is lost; a
    range starting at 0 would leave no cached context, which is another feature)."""
    def move(r: Data) -> Data | None:
        context = r.get("context_len", 0)
        starts = [s for s, e in r.get("ranges", []) if s < context <= e]
        if not starts:
            return r
        start = min(starts)
        return {**r, "context_len": start, "query_len": r["query_len"] + context - start}

    data = _data(spec)
    moved = [move(dict(r)) for r in data["requests"]]
    if any(m.get("context_len", 0) == 0 and r.get("context_len", 0) > 0
           for m, r in zip(moved, data["requests"], strict=True)):
        return []
    return _with(spec, requests=moved)


def _no_context(spec: CaseSpec) -> list[CaseSpec]:
    return _requests(spec, lambda r: r if not r["query_len"] else {
        **r, "context_len": 0, "query_len": r.get("context_len", 0) + r["query_len"]})


def _each_request_alone(spec: CaseSpec) -> list[CaseSpec]:
    """Each request with queries alone, with the values it had in the batch."""
    pinned = replace(spec, requests=with_explicit_seeds(spec))
    data = _data(pinned)
    return [c for r in data["requests"] if r["query_len"]
            for c in _with(pinned, requests=[r])]


def _other_dtypes(spec: CaseSpec) -> list[CaseSpec]:
    return [c for d in DTYPES if d != spec.dtype for c in _with(spec, dtype=d)]


def _other_head_dims(spec: CaseSpec) -> list[CaseSpec]:
    d = spec.head_dim
    dims = [x for x in (d // 2, 2 * d, 64, 128) if x != d and x >= 16 and x % 16 == 0]
    return [c for x in dict.fromkeys(dims) for c in _with(spec, head_dim=x)][:2]


def _other_page_size(spec: CaseSpec) -> list[CaseSpec]:
    return _with(spec, page_size=16 if spec.page_size != 16 else 64)


@dataclass(frozen=True)
class Feature:
    """Something a case has that can be taken away. ``remove`` gives the cases without it,
    in order of preference: the first the target accepts is run, or with ``every``, all it
    accepts (each must clear a failure: "fails only in bfloat16"). ``structural`` features
    change the mask or the layout, the others only values."""

    name: str
    present: Callable[[CaseSpec], bool]
    remove: Callable[[CaseSpec], list[CaseSpec]]
    words: Callable[[CaseSpec], str]
    structural: bool = True
    every: bool = False

    def neighbours(self, spec: CaseSpec, accepts: Accepts) -> list[CaseSpec]:
        found = [n for n in self.remove(spec) if accepts(n)]
        return found if self.every else found[:1]


def _ratio(spec: CaseSpec) -> int:
    return spec.num_heads // spec.num_kv_heads


FEATURES: tuple[Feature, ...] = (
    Feature("image", lambda s: any(r.ranges for r in s.requests),
            lambda s: _requests(s, lambda r: {**r, "ranges": []}), lambda s: "an image range"),
    Feature("range_across_tile", lambda s: _tile_edge(s) is not None, _clip_at_tile_edge,
            lambda s: f"an image range across the {_tile_edge(s)}-token tile edge"),
    Feature("range_past_end",
            lambda s: any(e >= r.seq_len for r in s.requests for _, e in r.ranges),
            _clip_at_end, lambda s: "an image range reaching past the chunk's end"),
    Feature("chunk_inside_range",
            lambda s: any(st < r.context_len <= e for r in s.requests for st, e in r.ranges),
            _chunk_at_range_start, lambda s: "a chunk that starts inside an image range"),
    Feature("cached_context", lambda s: any(r.context_len and r.query_len for r in s.requests),
            _no_context, lambda s: "cached context"),
    Feature("window", lambda s: s.sliding_window is not None,
            lambda s: _with(s, sliding_window=None, clamp_ranges_to_window=False),
            lambda s: f"a sliding window ({s.sliding_window})"),
    Feature("clamp", lambda s: s.clamp_ranges_to_window,
            lambda s: _with(s, clamp_ranges_to_window=False),
            lambda s: "the window clamping the image ranges"),
    Feature("softcap", lambda s: s.softcap is not None, lambda s: _with(s, softcap=None),
            lambda s: f"softcap {s.softcap:g}"),
    Feature("softmax_scale", lambda s: s.softmax_scale is not None,
            lambda s: _with(s, softmax_scale=None),
            lambda s: f"an explicit softmax scale ({s.softmax_scale:g})"),
    Feature("gqa", lambda s: _ratio(s) > 1, lambda s: _with(s, num_kv_heads=s.num_heads),
            lambda s: f"GQA ratio {_ratio(s)}"),
    Feature("paging", lambda s: s.page_size is not None,
            lambda s: [*_with(s, page_size=None, page_table_slack=0), *_other_page_size(s)],
            lambda s: f"paged KV (page size {s.page_size})"),
    Feature("fp8_kv", lambda s: s.kv_dtype is not None,
            lambda s: _with(s, kv_dtype=None, kv_scale="tensor"),
            lambda s: f"an FP8 KV cache ({s.kv_dtype}, per-{s.kv_scale} scales)",
            structural=False),
    Feature("nan_poison", lambda s: s.poison == "nan", lambda s: _with(s, poison="finite"),
            lambda s: "NaN in the cache slots no request owns"),
    Feature("page_table_slack", lambda s: s.page_table_slack > 0,
            lambda s: _with(s, page_table_slack=0), lambda s: "page-table slack columns"),
    Feature("zero_range_padding", lambda s: s.range_padding == "zero",
            lambda s: _with(s, range_padding="negative"),
            lambda s: "image ranges padded with (0, 0)"),
    Feature("several_requests", lambda s: sum(r.query_len > 0 for r in s.requests) > 1,
            _each_request_alone, lambda s: "several requests in one batch (each passes alone)",
            every=True),
    Feature("dtype", lambda s: True, _other_dtypes, lambda s: s.dtype, structural=False,
            every=True),
    Feature("head_dim", lambda s: True, _other_head_dims, lambda s: f"head_dim {s.head_dim}",
            structural=False, every=True),
    Feature("head_dim_v", lambda s: s.value_dim != s.head_dim,
            lambda s: _with(s, head_dim_v=None), lambda s: f"head_dim_v {s.value_dim}",
            structural=False),
    Feature("values", lambda s: s.value_distribution != "normal",
            lambda s: _with(s, value_distribution="normal"),
            lambda s: f"{s.value_distribution} values", structural=False),
)
BY_NAME = {f.name: f for f in FEATURES}


def without(spec: CaseSpec, names: Sequence[str], accepts: Accepts) -> CaseSpec | None:
    """``spec`` with every named feature it has taken away (each by the first case without
    it that the target accepts), or None where one cannot be."""
    for name in names:
        feature = BY_NAME[name]
        if feature.present(spec):
            neighbours = [n for n in feature.remove(spec) if accepts(n)]
            if not neighbours:
                return None
            spec = neighbours[0]
    return spec


# --- details that name values in words (new findings only) ------------------------------------

def _detail_cases(spec: CaseSpec, name: str) -> list[CaseSpec]:
    """Extra neighbours whose verdicts a finding's words quote."""
    if name == "gqa" and _ratio(spec) >= 4:
        return _with(spec, num_kv_heads=spec.num_kv_heads * 2)
    if name == "paging":
        return _other_page_size(spec)
    return []


def _detail_words(spec: CaseSpec, name: str, neighbours: list[CaseSpec],
                  cleared: list[bool]) -> str:
    if name == "gqa":
        passing = ["1", *(str(_ratio(n)) for n, ok in zip(neighbours, cleared, strict=True)
                          if ok)]
        failing = [str(_ratio(n)) for n, ok in zip(neighbours, cleared, strict=True) if not ok]
        return (f"passes at {' and '.join(passing)}"
                + (f"; fails at {', '.join(failing)} too" if failing else ""))
    if name == "paging":
        others = [f"at page size {n.page_size}" for n, ok in zip(neighbours, cleared,
                                                                  strict=True) if ok]
        return "passes contiguous" + "".join(f" and {o}" for o in others)
    return ""


# --- triage -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Diagnosis:
    """A failure's identity, the cause in words, and how many runs it took to find."""

    identity: Identity
    words: str
    runs: int
    position: int | None = None  # a threshold's first failing position
    # Per trigger feature, the error ratio its removal left (a cause leaves what a correct
    # kernel has; a feature that only made a bug visible leaves part of the error).
    evidence: dict[str, float] = field(default_factory=dict)
    # The case (and its outcome) the identity was found on, when it is not the one triaged:
    # a known finding's trigger taken away from it.
    case: CaseSpec | None = None
    outcome: Outcome | None = None


def _clears(outcome: Outcome, what: str, ratio: float | None, structural: bool) -> bool:
    if shows(outcome, what):
        return False
    if structural or ratio is None:
        return True
    after = error_ratio(outcome, what)
    return after is None or after <= ratio / VALUE_CLEARS_BY


def absolute_error(outcome: Outcome, what: str) -> float:
    verdict = outcome.verdict
    if verdict is None:
        return math.inf
    return verdict.out_error if what == "out" else (verdict.lse_error or 0.0)


def _follows_dtype(what: str, spec: CaseSpec, outcome: Outcome,
                   others: list[tuple[CaseSpec, Outcome]]) -> bool | None:
    """Whether the error follows the dtype's unit roundoff: in every other dtype the
    error changes by at least the square root of the ratio of their epsilons, the way
    (and in the direction) rounding does. A wrong mask or formula errs by about as much in
    every dtype. None: there is no other dtype to compare with."""
    if not others:
        return None
    error = absolute_error(outcome, what)
    for other, result in others:
        step = math.log2(_epsilon(spec.dtype) / _epsilon(other.dtype))
        moved = math.log2(max(error, TINY) / max(absolute_error(result, what), TINY))
        if not (abs(moved - step) <= abs(step) / 2 or (step > 0 and moved >= step / 2)):
            return False
    return True


def _epsilon(dtype: str) -> float:
    return float(torch.finfo(getattr(torch, dtype)).eps)


def _shrinks_with_keys(what: str, outcome: Outcome, cut: list[float | None]) -> bool:
    """Cut to a half and a quarter of the keys, the error ratio shrinks without a cliff."""
    if any(r is None for r in cut):
        return False
    chain = [error_ratio(outcome, what), *cut]  # all keys, a half, a quarter
    no_cliff = all(b >= a * PRECISION_KEEPS for a, b in itertools.pairwise(chain))
    return chain[0] >= chain[-1] * PRECISION_GROWTH and no_cliff


def _precision(what: str, spec: CaseSpec, outcome: Outcome, cut: list[float | None],
               others: list[tuple[CaseSpec, Outcome]]) -> bool:
    """A small error (against the values) that follows the dtype's precision, or, with no
    other dtype to try, shrinks with the keys: the constants say why."""
    if what not in NUMERIC or relative_error(outcome, what) >= PRECISION_RELATIVE:
        return False
    follows = _follows_dtype(what, spec, outcome, others)
    return follows if follows is not None else _shrinks_with_keys(what, outcome, cut)


def _bare(spec: CaseSpec) -> CaseSpec | None:
    """The case with every structural feature taken away: its first request's first token
    alone, as a prefill without images, window, softcap, scale, paging, GQA or an FP8
    cache. A failure
    that shows even here needs nothing the features give (it is everywhere)."""
    found = _with(spec, requests=[{"query_len": 1, "seed": with_explicit_seeds(spec)[0].seed}],
                  sliding_window=None, clamp_ranges_to_window=False, softcap=None,
                  softmax_scale=None, page_size=None, page_table_slack=0, poison="finite",
                  range_padding="negative", num_kv_heads=spec.num_heads, kv_dtype=None,
                  kv_scale="tensor")
    return found[0] if found else None


def _lse_hint(what: str, outcome: Outcome) -> str:
    return _lse_factor(outcome) if what == "lse" else ""


def _lse_factor(outcome: Outcome) -> str:
    worst = outcome.verdict.worst if outcome.verdict is not None else None
    if worst is None or worst.column is not None or not worst.expected:
        return ""
    factor = worst.got / worst.expected
    for known, meaning in LSE_FACTORS.items():
        if abs(factor / known - 1) < LSE_FACTOR_TOLERANCE:
            return f"; the LSE is {factor:.4g} times the reference: {meaning}"
    return ""


def _trigger_words(spec: CaseSpec, names: list[str], details: dict[str, str]) -> str:
    parts = [BY_NAME[n].words(spec) + (f" ({details[n]})" if details.get(n) else "")
             for n in names]
    if len(parts) == 1:
        return f"fails only with {parts[0]}" + ("" if details.get(names[0]) else
                                               " (passes without it)")
    listed = ", ".join(parts[:-1]) + f" and {parts[-1]}"
    return f"fails only with {listed} (passes without any one of them)"


def _redrawn(spec: CaseSpec, draw: int) -> CaseSpec:
    """The same case with other values (another seed for the case and every request)."""
    data = _data(spec)
    data["seed"] = (spec.seed * REDRAW_MULTIPLIER + draw) % MAX_SEED
    data["requests"] = [{k: v for k, v in r.items() if k != "seed"} for r in data["requests"]]
    return parse_case(data)


def _split_by(tested: list[tuple[Feature, list[CaseSpec]]], outcomes: list[Outcome]
              ) -> list[list[Outcome]]:
    """The outcomes of a batch, grouped by the feature whose neighbours they are."""
    results = iter(outcomes)
    return [[next(results) for _ in ns] for _, ns in tested]


def _cleared(tested: list[tuple[Feature, list[CaseSpec]]], outcomes: list[Outcome], what: str,
             ratio: float | None, evidence: dict[str, float]) -> list[Feature]:
    """The features whose every neighbour cleared the failure (outcomes in batch order);
    ``evidence`` gets the largest error ratio left by each feature's removal."""
    cleared = []
    for (f, _), left in zip(tested, _split_by(tested, outcomes), strict=True):
        evidence[f.name] = max((error_ratio(o, what) or 0.0 for o in left), default=0.0)
        if all(_clears(o, what, ratio, f.structural) for o in left):
            cleared.append(f)
    return cleared


def _confirm(spec: CaseSpec, what: str, cleared: list[Feature], accepts: Accepts,
             evidence: dict[str, float]
             ) -> Generator[list[CaseSpec], list[Outcome], tuple[list[Feature], int]]:
    """Keep the cleared features that clear the failure on other values too, where their
    removal changes the values (other KV heads, queries shifted by moving the chunk, another
    dtype, other scores): it can hide a bug by luck of the values (a key's weight falls below
    the tolerance), seldom by luck twice. A draw on which the case itself passes says nothing;
    a value-changing feature never confirmed on other values is not kept. A removal that
    keeps every value cannot be lucky and needs no confirming."""
    changing = [f for f in cleared if f.name in CHANGE_VALUES or not f.structural]
    if not changing:
        return cleared, 0
    runs = 0
    for draw in range(1, REDRAWS + 1):
        again = _redrawn(spec, draw)
        tested = [(f, ns) for f in changing for ns in [f.neighbours(again, accepts)] if ns]
        outcomes = yield [again, *(n for _, ns in tested for n in ns)]
        runs += len(outcomes)
        if shows(outcomes[0], what):
            kept = _cleared(tested, outcomes[1:], what, error_ratio(outcomes[0], what), {})
            return [f for f in cleared if f not in changing or f in kept], runs
    return [f for f in cleared if f not in changing], runs


def triage(spec: CaseSpec, outcome: Outcome, accepts: Accepts,
           known: Sequence[Identity] = (), *, describe: bool = False, peel: bool = True
           ) -> Generator[list[CaseSpec], list[Outcome], Diagnosis]:
    """The identity of the failure ``outcome`` of ``spec`` (docs/design.md, Findings).

    ``accepts`` says which neighbours the target takes; ``known`` are the identities found
    so far (a case with two bugs clears neither alone: the known triggers are taken away
    together); ``describe`` also runs the neighbours a new finding's words quote.
    """
    what = symptom(outcome)
    if what in UNTRIAGED:
        return Diagnosis(Identity(what, Cause.UNTRIAGED), f"{what}: not triaged", 0)
    bare = _bare(spec)
    if bare is not None and bare != spec and accepts(bare) and shows((yield [bare])[0], what):
        return Diagnosis(Identity(what, Cause.EVERYWHERE),
                         f"{what}: fails even on one query with every feature taken away (one "
                         f"request, no image, cache or window){_lse_hint(what, outcome)}", 1)
    ratio = error_ratio(outcome, what)
    tested = [(f, ns) for f in FEATURES if f.present(spec)
              for ns in [f.neighbours(spec, accepts)] if ns]
    length = longest(spec)
    cuts = [c for c in (cap(spec, max(1, length // k)) for k in CUTS)
            if c is not None and c != spec and accepts(c)]
    batch = [n for _, ns in tested for n in ns] + cuts
    outcomes = yield batch
    runs = len(batch)
    cut_outcomes = outcomes[len(batch) - len(cuts):]
    cut_ratios = [error_ratio(o, what) for o in cut_outcomes]
    by_feature = dict(zip([f.name for f, _ in tested], _split_by(tested, outcomes), strict=False))
    dtypes = list(zip(dict(tested).get(BY_NAME["dtype"], []), by_feature.get("dtype", []),
                      strict=True))
    if _precision(what, spec, outcome, cut_ratios if len(cuts) == len(CUTS) else [None],
                  dtypes):
        shown = "; ".join(f"{absolute_error(o, what):.3g} in {s.dtype}"
                          for s, o in [(spec, outcome), *dtypes])
        return Diagnosis(Identity(what, Cause.PRECISION),
                         f"{what}: the error follows the dtype's precision ({shown}) and has "
                         "no structural cause: precision (accumulation in a low-precision "
                         "type?)", runs)
    evidence: dict[str, float] = {}
    cleared = _cleared(tested, outcomes[:len(batch) - len(cuts)], what, ratio, evidence)
    if cleared:
        cleared, more = yield from _confirm(spec, what, cleared, accepts, evidence)
        runs += more
    structural = [f.name for f in cleared if f.structural]
    names = structural or [f.name for f in cleared]
    if names:
        details: dict[str, str] = {}
        if describe:
            extra = {n: [c for c in _detail_cases(spec, n) if accepts(c)] for n in names}
            asked = [c for cs in extra.values() for c in cs]
            answers = iter((yield asked) if asked else [])
            runs += len(asked)
            for n, cs in extra.items():
                ok = [_clears(next(answers), what, ratio, True) for _ in cs]
                details[n] = _detail_words(spec, n, cs, ok)
        return Diagnosis(Identity(family(what), Cause.TRIGGER, tuple(names)),
                         f"{what}: {_trigger_words(spec, names, details)}", runs,
                         evidence={n: evidence[n] for n in names})
    if peel:
        peeled = yield from _peel(spec, what, accepts, known)
        if peeled is not None:
            return replace(peeled, runs=runs + peeled.runs)
    passing = [longest(c) for c, o in zip(cuts, cut_outcomes, strict=True) if not shows(o, what)]
    if passing:
        low = max(passing)
        high = min([length, *(longest(c) for c, o in zip(cuts, cut_outcomes, strict=True)
                              if shows(o, what))])
        while high - low > 1:
            middle = (low + high) // 2
            candidate = cap(spec, middle)
            result = (yield [candidate])[0] if candidate is not None else None
            runs += 1
            if result is not None and shows(result, what):
                high = middle
            else:
                low = middle
        return Diagnosis(Identity(family(what), Cause.THRESHOLD),
                         f"{what}: fails only from position {high - 1} on (passes with every "
                         f"sequence cut to {high - 1} tokens)", runs, high - 1)
    return Diagnosis(Identity(what, Cause.EVERYWHERE),
                     f"{what}: fails on every variant tried (no single feature taken away and "
                     f"no cut of the sequences clears it){_lse_hint(what, outcome)}", runs)


def _peel(spec: CaseSpec, what: str, accepts: Accepts, known: Sequence[Identity]
          ) -> Generator[list[CaseSpec], list[Outcome], Diagnosis | None]:
    """A known finding's trigger taken away: what is left is the case's other bug (two bugs
    in one case clear neither alone): a known finding, or a new one with a cause of its
    own, found on the case without the known trigger. None if nothing is left to name."""
    peeled = [(k, c) for k in known if k.cause == Cause.TRIGGER and k.symptom == family(what)
              and all(BY_NAME[n].present(spec) for n in k.features)
              for c in [without(spec, k.features, accepts)] if c is not None]
    if not peeled:
        return None
    outcomes = yield [c for _, c in peeled]
    runs = len(peeled)
    for (first, rest), left in zip(peeled, outcomes, strict=True):
        if not shows(left, what):
            continue
        others = [k for k in known if k != first]
        found = yield from triage(rest, left, accepts, others, peel=False)
        runs += found.runs
        if found.identity in others or found.identity.cause is not Cause.EVERYWHERE:
            return replace(found, words=f"{found.words} (with {first} taken away)", runs=runs,
                           case=found.case or rest, outcome=found.outcome or left)
    return None


def run_sync(runs: Generator[list[CaseSpec], list[Outcome], Any],
             run: Callable[[CaseSpec], Outcome]) -> Any:
    """Drive a triage generator by running each case with ``run``; its result."""
    try:
        batch = next(runs)
        while True:
            batch = runs.send([run(spec) for spec in batch])
    except StopIteration as stop:
        return stop.value
