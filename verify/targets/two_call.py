"""The two-call decompositions of prefix attention, over any :class:`verify.targets.engines.Engine`.

``two_call_<engine>`` (what engines on FA2/FA3 ship; docs/two_call.md):

* call A: causal over every query (keys ``[0, p]``, or ``[p - W + 1, p]`` with a window);
* call B: per (request, image range ``(s, e)``), the queries at ``s <= p <= e`` against
  keys ``[s, min(e, seq_len - 1)]``, non-causal (windowed under
  ``clamp_ranges_to_window``, where the range term is windowed too);
* ``merge_attn_states`` of A and B (Triton on CUDA, torch otherwise).

The merge counts the keys both calls read twice, so this is *not* exact attention: it is
judged against the approximation it makes, exactly: :func:`overlap_weight` (``ln 2`` on
the overlap keys).

``replace_<engine>`` is exact: a query inside ``(s, e)`` sees exactly the keys
``[0, min(e, seq_len - 1)]`` (windowed under ``clamp_ranges_to_window``), so one dense
call over those keys replaces call A for it, with no merge.

Queries of call B and of the replacement call always end at the last key they read, so
the engine's bottom-right alignment puts each at its absolute position, including in a
chunk that starts inside an image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from prefix_referee.references import LogWeight
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.kernels.merge_states import (
    merge_attn_states_torch,
    merge_attn_states_triton,
)
from prefix_referee.verify.mask import overlap_weight
from prefix_referee.verify.materialize import MaterializedCase, cumulative_lengths
from prefix_referee.verify.target import Target
from prefix_referee.verify.targets.engines import ENGINES, Engine


@dataclass(frozen=True)
class RangeSpan:
    """The queries of one request inside one image range (absolute positions, inclusive).

    ``last`` is ``min(e, seq_len - 1)``: the last such query and the last key read for it.
    """

    q_start: int  # packed row of the request's first query
    k_start: int  # packed row of the request's first key
    context_len: int
    range_start: int
    range_end: int
    first: int
    last: int


def range_spans(case: MaterializedCase) -> list[RangeSpan]:
    """Every (request, range) that holds at least one query of this chunk."""
    spans = []
    for view in case.requests():
        for s, e in view.ranges:
            first, last = max(s, view.context_len), min(e, view.seq_len - 1)
            if first <= last:
                spans.append(RangeSpan(view.q_start, view.k_start, view.context_len, s, e,
                                       first, last))
    return spans


def _window(sliding_window: int | None) -> dict[str, int]:
    """The engine keyword for a window, passed only when one applies (see engines.py)."""
    return {} if sliding_window is None else {"sliding_window": sliding_window}


def _dense_per_span(case: MaterializedCase, engine: Engine, spans: list[RangeSpan],
                    key_starts: list[int], sliding_window: int | None
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """One packed dense call: each span's queries against keys ``[key_start, last]``.

    Returns the call's ``out``, ``lse`` and the packed query rows they belong to.
    """
    q_rows, k_rows = [], []
    for span, key_start in zip(spans, key_starts, strict=True):
        q0 = span.q_start + span.first - span.context_len
        q_rows.append(torch.arange(q0, q0 + span.last - span.first + 1))
        k_rows.append(torch.arange(span.k_start + key_start, span.k_start + span.last + 1))

    q_index = torch.cat(q_rows).to(case.device)
    k_index = torch.cat(k_rows).to(case.device)
    out, lse = engine.dense(
        case.q[q_index], case.k[k_index], case.v[k_index],
        cumulative_lengths([len(r) for r in q_rows]).to(case.device),
        cumulative_lengths([len(r) for r in k_rows]).to(case.device),
        max(map(len, q_rows)), max(map(len, k_rows)), case.softmax_scale,
        softcap=case.softcap, **_window(sliding_window))
    return out, lse, q_index


def _causal_call(case: MaterializedCase, engine: Engine) -> tuple[Tensor, Tensor]:
    return engine.causal(case.q, case.k, case.v, case.cu_seqlens_q, case.cu_seqlens_k,
                         case.max_seqlen_q, case.max_seqlen_k, case.softmax_scale,
                         softcap=case.softcap, **_window(case.sliding_window))


def _merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """The Triton merge engines ship, on CUDA; torch's on CPU and for float64 partials."""
    on_cuda = out_a.is_cuda and lse_a.dtype == torch.float32  # the kernel takes float32 LSEs
    merge = merge_attn_states_triton if on_cuda else merge_attn_states_torch
    return merge(out_a, lse_a, out_b, lse_b)


def _range_window(case: MaterializedCase) -> int | None:
    """The window of the range term: only under clamp_ranges_to_window."""
    return case.sliding_window if case.clamp_ranges_to_window else None


class _Decomposition(Target):
    """A prefix-attention target assembled from an engine's plain causal and dense calls."""

    def __init__(self, engine: Engine, name: str, description: str, exact: bool) -> None:
        super().__init__(name, f"{engine.name} engine: {description}",
                         replace(engine.capabilities, overlapping_ranges=False), exact)
        self.engine = engine

    def unavailable_reason(self) -> str | None:
        return self.engine.unavailable_reason()

    def unsupported_reason(self, spec: CaseSpec, device: str) -> str | None:
        reason = self.engine.head_dim_reason(spec)
        if reason is not None:
            return reason
        if spec.clamp_ranges_to_window and not self.engine.dense_window:
            return (f"unsupported: clamp_ranges_to_window needs a windowed dense call, which "
                    f"the {self.engine.name} engine's dense call does not take")
        return super().unsupported_reason(spec, device)

    def compile_key(self, spec: CaseSpec) -> tuple | None:
        """What a compiling engine builds kernels for: its calls' dtype, head dims, GQA ratio
        and softcap, and whether they take a window (causal, and dense under the clamp)."""
        if not self.engine.compiles:
            return None
        return (spec.dtype, spec.head_dim, spec.value_dim, spec.num_heads // spec.num_kv_heads,
                spec.softcap, spec.sliding_window is not None, spec.clamp_ranges_to_window)

    @property
    def compiles(self) -> bool:
        return self.engine.compiles

    def spans(self, case: MaterializedCase) -> list[RangeSpan]:
        """The (request, range) pieces the dense calls cover."""
        return range_spans(case)

    def attend(self, case: MaterializedCase) -> tuple[Tensor, Tensor]:
        """``out`` and ``lse`` in the engine's precision (float64 for the reference engine)."""
        raise NotImplementedError

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        out, lse = self.attend(case)
        return out.to(case.dtype), lse.float()


class TwoCallTarget(_Decomposition):
    """Causal call + one dense call per image range + LSE merge (the approximation)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, f"two_call_{engine.name}",
                         "causal call, dense call per image range, LSE merge (overlap keys "
                         "[s, p] counted twice; judged against that approximation)", exact=False)

    def approximation_bias(self, case: MaterializedCase) -> LogWeight | None:
        return overlap_weight(case)

    def attend(self, case: MaterializedCase) -> tuple[Tensor, Tensor]:
        out_a, lse_a = _causal_call(case, self.engine)
        out_b = torch.zeros_like(out_a)
        lse_b = torch.full_like(lse_a, float("-inf"))  # queries outside images: B is empty
        spans = self.spans(case)
        if spans:
            out, lse, rows = _dense_per_span(case, self.engine, spans,
                                             [s.range_start for s in spans], _range_window(case))
            out_b[rows] = out.to(out_b.dtype)
            lse_b[:, rows] = lse.to(lse_b.dtype)
        return _merge(out_a, lse_a, out_b, lse_b)


class ReplaceTarget(_Decomposition):
    """Causal call; inside each image a dense call over ``[0, e]`` replaces it (exact)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, f"replace_{engine.name}",
                         "causal call; inside an image a dense call over keys [0, e] "
                         "replaces it (exact, no merge)", exact=True)
        # Without the clamp, a query inside an image sees [min(s, p - W + 1), e], which no
        # dense windowed call over [0, e] gives.
        self.capabilities = replace(self.capabilities,
                                    layout=self.capabilities.layout | {"clamped_windows"})

    def attend(self, case: MaterializedCase) -> tuple[Tensor, Tensor]:
        out, lse = _causal_call(case, self.engine)
        spans = self.spans(case)
        if spans:
            inside, inside_lse, rows = _dense_per_span(case, self.engine, spans, [0] * len(spans),
                                                       _range_window(case))
            out[rows] = inside.to(out.dtype)
            lse[:, rows] = inside_lse.to(lse.dtype)
        return out, lse


def two_call_reference() -> Target:
    return TwoCallTarget(ENGINES["reference"])


def two_call_sdpa() -> Target:
    return TwoCallTarget(ENGINES["sdpa"])


def two_call_fa4() -> Target:
    return TwoCallTarget(ENGINES["fa4"])


def replace_reference() -> Target:
    return ReplaceTarget(ENGINES["reference"])


def replace_sdpa() -> Target:
    return ReplaceTarget(ENGINES["sdpa"])


def replace_fa4() -> Target:
    return ReplaceTarget(ENGINES["fa4"])
