"""The tolerance policy: the only place that decides pass or fail (docs/semantics.md).

FlashAttention's rule: a target's max error against the float64 reference must stay
within ``BASELINE_MULTIPLE`` times the max error of a plain PyTorch implementation
computed in the input dtype, plus an absolute slack of one output ULP at the output's
scale. No element's allowance drops below what rounding costs a correct kernel there
(the rounding floor, plus the same ULP): its weights rounded to the input dtype for
``P @ V`` (as every FlashAttention kernel does), each weight carrying the float32 rounding
of its exponent (about eps |score|), and the accumulation over the visible keys; all scale
with ``sum_j p_j |v_j|``, the reference's attention over ``|V|``. Where the baseline's own
error is a max over few elements (a decode row) or nearly zero (float32), this floor is
what keeps a correct kernel from failing on rounding alone.
The LSE is held to the same rule separately; its slack is the float32 rounding of a
``head_dim``-term dot product, since the LSE is a smooth max of the scores and inherits
that error however exactly it is formed. With an FP8 cache it also covers the keys held
in the query dtype: the baseline pays that rounding too, but a single draw of it, which
its own score rounding can cancel.

A packed batch is judged case by case (each with its own baseline, scale and slack, as
if alone) through segmented reductions on the device, with one host transfer. Nothing
non-finite passes: a non-finite reference, baseline or allowance is an error of the case.
A failure names the worst element in the terms a kernel engineer debugs in: request,
query position, head, where the query sits relative to the image ranges, which keys it
should see, and the layout fact behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
from torch import Tensor

from prefix_referee.references import Batch, LogWeight, lowprec_attention, reference_attention
from prefix_referee.verify.mask import request_mask
from prefix_referee.verify.materialize import MaterializedCase, RequestView

# FlashAttention's tests allow a kernel twice the error of the low-precision baseline.
BASELINE_MULTIPLE = 2.0
# Absolute slack, in ULPs of the output dtype at the largest reference magnitude.
ATOL_ULPS = 1.0
FLOAT32_EPS = torch.finfo(torch.float32).eps
# Significant digits that tell two values of a dtype apart in a diagnosis.
DIGITS = {torch.float32: 9, torch.float16: 5, torch.bfloat16: 4, torch.float64: 17}
POLICY = {"baseline_multiple": BASELINE_MULTIPLE, "atol_ulps": ATOL_ULPS,
          "rounding_floor": "2 x sum_j p_j |v_j| x (u_dtype + eps32 x (sqrt(visible keys) "
                            "+ 2 max|score|)) per element",
          "lse_slack": "sqrt(D) eps32 scale max|q| max|k| (float32 score rounding), plus "
                       "with an FP8 cache max|LSE(keys in the query dtype) - LSE| (keys "
                       "held in the query dtype)"}


@dataclass(frozen=True)
class Segment:
    """One case of a (packed) batch: query rows ``[r0, r1)``, key rows ``[k0, k1)``."""

    r0: int
    r1: int
    k0: int
    k1: int


def whole(case: MaterializedCase) -> Segment:
    return Segment(0, case.q.shape[0], 0, case.k.shape[0])


def _row_max(t: Tensor) -> Tensor:
    """Per query row, the max over every other dim; NaN counts as +inf. ``t`` is (rows, ...)
    or, for LSE-shaped tensors, pass ``t.T``."""
    t = torch.nan_to_num(t, nan=math.inf)
    return t.reshape(t.shape[0], -1).amax(dim=1) if t.numel() else t.new_zeros(t.shape[0])


def _segment_max(values: Tensor, ids: Tensor, count: int) -> Tensor:
    """Max of ``values`` per segment id (0 where a segment has none)."""
    out = torch.zeros(count, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, ids, values, "amax", include_self=True)


def _finite_diff(a: Tensor, b: Tensor) -> Tensor:
    """|a - b| where both are finite, 0 where both are the same infinity, inf otherwise."""
    same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    diff = (a - b).abs()
    return torch.where(same_inf, torch.zeros_like(diff), torch.nan_to_num(diff, nan=math.inf))


@dataclass(frozen=True)
class Expected:
    """The float64 truth of a case, the low-precision baseline, and per-row facts the
    policy scales by (all on the case's device)."""

    out: Tensor
    lse: Tensor
    abs_out: Tensor  # sum_j p_j |v_j|: what rounding an element's weights can cost
    base_out: Tensor
    base_lse: Tensor
    row_scale: Tensor  # max |reference out| per query row
    row_base_error: Tensor  # max |baseline - reference| per row
    row_base_lse_error: Tensor
    row_lse_scale: Tensor  # |reference lse| per row (finite rows)
    row_q_norm: Tensor  # max over heads of |q| per query row
    row_held_keys: Tensor  # FP8 caches: what keys held in the query dtype move the LSE
    row_width: Tensor  # visible keys per row
    key_norm: Tensor  # max over heads of |k| per key row
    row_nonfinite: Tensor  # the reference or baseline is not finite in this row

    @property
    def baseline_out_error(self) -> float:
        return float(self.row_base_error.max()) if self.row_base_error.numel() else 0.0


def _row_any(bad: Tensor) -> Tensor:
    """Per query row of a (rows, ...) boolean tensor: is any element set?"""
    return bad.reshape(bad.shape[0], -1).any(dim=1) if bad.numel() else bad.new_zeros(
        bad.shape[0])


def expected(case: MaterializedCase, bias: LogWeight | None = None) -> Expected:
    """Reference and baseline for ``case`` (with an optional approximation's log-weight)."""
    batch = case.batch(bias)
    # One reference pass over [V, |V|]: the output and what its weights' rounding can cost.
    both, lse = reference_attention(replace(batch, v=torch.cat([batch.v, batch.v.abs()], -1)))
    out, abs_out = both.split(case.head_dim_v, dim=-1)
    base_out, base_lse = lowprec_attention(batch)
    unjudgeable = (_row_any(~torch.isfinite(out)) | _row_any(~torch.isfinite(base_out))
                   | _row_any((torch.isnan(lse) | torch.isposinf(lse)).T)
                   | _row_any((torch.isnan(base_lse) | torch.isposinf(base_lse)).T))
    return Expected(
        out=out, lse=lse, abs_out=abs_out, base_out=base_out, base_lse=base_lse,
        row_scale=_row_max(out.abs()),
        row_base_error=_row_max((base_out.double() - out).abs()),
        row_base_lse_error=_row_max(_finite_diff(base_lse.double(), lse).T),
        row_lse_scale=_row_max(torch.where(torch.isfinite(lse), lse.abs(), 0.0).T),
        row_q_norm=_row_max(torch.linalg.vector_norm(case.q.double(), dim=-1)),
        row_held_keys=_held_keys(case, batch, lse),
        row_width=(case.layout.rows_hi - case.layout.rows_lo + 1).clamp_min(0).to(case.device),
        key_norm=_row_max(torch.linalg.vector_norm(batch.k.double(), dim=-1)),
        row_nonfinite=unjudgeable,
    )


def _held_keys(case: MaterializedCase, batch: Batch, lse: Tensor) -> Tensor:
    """Per query row, how far the LSE over an FP8 cache's dequantized keys rounded to the
    query dtype (as a kernel that feeds its dots in that dtype holds them) lies from the
    reference's over the exact keys; 0 without an FP8 cache, and where the rounded keys
    overflow (a kernel holding them so is wrong there: nothing excuses it)."""
    if not case.fp8_kv:
        return torch.zeros(case.q.shape[0], dtype=torch.float64, device=case.device)
    held = replace(batch, k=batch.k.to(case.dtype).double(), v=batch.v[..., :1])
    moved = _finite_diff(reference_attention(held)[1], lse)
    return _row_max(torch.where(torch.isfinite(moved), moved, 0.0).T)


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of ``dtype`` at ``|x|`` (subnormals get the smallest normal's)."""
    info = torch.finfo(dtype)
    magnitude = x.abs().double().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


@dataclass(frozen=True)
class Location:
    """One output element, placed in the layout."""

    request: int
    query_index: int
    position: int
    head: int
    where: str
    visible: str
    expected: float
    got: float
    column: int | None = None
    fact: str = ""  # the layout fact behind the location, if one stands out
    digits: int = 6

    def __str__(self) -> str:
        what = "lse" if self.column is None else f"out[..., {self.column}]"
        fact = f" ({self.fact})" if self.fact else ""
        return (f"request {self.request}, query {self.query_index} (position {self.position}), "
                f"head {self.head}, {self.where}{fact}, sees {self.visible}: "
                f"{what} expected {self.expected:.{self.digits}g}, "
                f"got {self.got:.{self.digits}g}")


def _spans(row: Tensor) -> list[tuple[int, int]]:
    """Inclusive runs of True in a boolean vector."""
    idx = torch.nonzero(row).flatten().tolist()
    spans: list[tuple[int, int]] = []
    for j in idx:
        if spans and spans[-1][1] == j - 1:
            spans[-1] = (spans[-1][0], j)
        else:
            spans.append((j, j))
    return spans


def describe_position(position: int, ranges: tuple[tuple[int, int], ...]) -> str:
    """'inside range [s, e]', 'before range [s, e]', 'after range [s, e]' or 'no ranges'."""
    if not ranges:
        return "no image ranges"
    holding = [r for r in ranges if r[0] <= position <= r[1]]
    if holding:
        return "inside range " + ", ".join(f"[{s}, {e}]" for s, e in holding)
    s, e = min(ranges, key=lambda r: min(abs(position - r[0]), abs(position - r[1])))
    return f"{'before' if position < s else 'after'} range [{s}, {e}]"


def layout_fact(view: RequestView, position: int) -> str:
    """What about the query's layout a kernel most likely got wrong, or ''."""
    for s, e in view.ranges:
        if s <= position <= e and e >= view.seq_len:
            return f"range [{s}, {e}] reaches past seq_len {view.seq_len}"
    for s, e in view.ranges:
        if s <= position <= e and s < view.context_len <= e:
            return (f"the chunk starts inside range [{s}, {e}] "
                    f"(context_len {view.context_len})")
    return ""


def locate(case: MaterializedCase, row: int, head: int, expected_value: float,
           got_value: float, column: int | None = None) -> Location:
    """Place packed query ``row`` of ``case`` in its request and describe its mask row."""
    view: RequestView = next(v for v in case.requests()
                             if v.q_start <= row < v.q_start + v.query_len)
    i = row - view.q_start
    mask_row = request_mask(case.spec, case.spec.requests[view.index],
                            query_rows=slice(i, i + 1))[0]
    visible = ", ".join(f"keys [{a}, {b}]" for a, b in _spans(mask_row)) or "no key"
    position = view.context_len + i
    digits = DIGITS[case.dtype] if column is not None else DIGITS[torch.float32]
    return Location(view.index, i, position, head, describe_position(position, view.ranges),
                    visible, expected_value, got_value, column, layout_fact(view, position),
                    digits)


@dataclass
class Verdict:
    """The outcome of one target on one case, with the numbers behind it.

    ``kind`` says what went wrong (``out``, ``lse``, ``nonfinite``, ``empty-rows``,
    ``contract``, ``unjudgeable``; empty when it passed).
    """

    passed: bool
    problems: list[str] = field(default_factory=list)
    out_error: float = 0.0
    baseline_error: float = 0.0
    allowed_error: float = 0.0
    ratio: float = 0.0  # the larger of out_ratio and lse_ratio
    out_ratio: float = 0.0  # out_error / max(baseline_error, atol)
    ulp_error: float = 0.0
    scale_ulps: float = 0.0  # out_error in ULPs of the dtype at the output's largest value
    lse_error: float | None = None
    lse_allowed_error: float | None = None
    lse_ratio: float | None = None  # lse_error / max(baseline lse error, lse atol)
    worst: Location | None = None
    kind: str = ""
    judgeable: bool = True  # False: the referee itself could not judge the case
    symptoms: tuple[str, ...] = ()  # the checks that failed: "out" and/or "lse"
    out_scale: float = 0.0  # the reference output's largest magnitude
    lse_scale: float = 0.0  # the reference LSE's largest magnitude

    def summary(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        if self.kind in ("contract", "unjudgeable"):  # no error to report: only what is wrong
            return "\n".join([f"{head}: {self.kind}", *self.problems])
        numbers = (f"max err {self.out_error:.3g} (allowed {self.allowed_error:.3g}, "
                   f"ratio {self.out_ratio:.2f} x baseline, {self.ulp_error:.1f} ulp)")
        if self.lse_error is not None:
            numbers += (f", lse err {self.lse_error:.3g} (allowed {self.lse_allowed_error:.3g}, "
                        f"ratio {self.lse_ratio:.2f} x baseline)")
        lines = [f"{head}: {numbers}", *self.problems]
        if self.worst is not None and not self.passed:
            lines.append(f"worst: {self.worst}")
        return "\n".join(lines)


class SegmentNumbers(NamedTuple):
    """One segment's numbers as :func:`judge` transfers them: per-row and per-key maxima
    over the segment (flags are 1.0 or 0.0). The LSE fields are None when the LSE is not
    judged."""

    out_error: float  # max |got - reference|
    beyond_floor: float  # max error of the elements past their rounding floor (0 elsewhere)
    ulp_error: float  # max error in ULPs at each element (never finer than 1/64 of its row)
    nonfinite: float  # out has a non-finite value
    scale: float  # max |reference out|
    base_error: float  # max |baseline - reference|
    base_lse_error: float
    lse_scale: float  # max |reference lse| (finite rows)
    q_norm: float  # max |q|
    held_keys: float  # max LSE move of keys held in the query dtype (FP8 caches; else 0)
    truth_nonfinite: float  # the reference or baseline is not finite
    key_norm: float  # max |k| over the segment's keys
    lse_error: float | None = None
    lse_bad_empty: float | None = None  # lse of a row with no visible key is not -inf
    lse_bad_finite: float | None = None  # lse not finite where the reference is


def _contract_problems(case: MaterializedCase, out: object, lse: object, truth: Expected,
                       wants_lse: bool) -> list[str]:
    """What is wrong with the type, device, dtype or shape of a target's results."""
    problems = []
    for name, value, shape in (("out", out, tuple(truth.out.shape)),
                               ("lse", lse, tuple(truth.lse.shape))):
        if name == "lse" and not wants_lse:
            continue
        if not isinstance(value, Tensor):
            problems.append(f"{name} is a {type(value).__name__}, expected a torch.Tensor")
            continue
        if value.device != case.device:
            problems.append(f"{name} is on {value.device}, expected {case.device}")
        if tuple(value.shape) != shape:
            problems.append(f"{name} has shape {tuple(value.shape)}, expected {shape}")
    if isinstance(out, Tensor) and out.dtype != case.dtype:
        problems.append(f"out dtype {out.dtype}, expected the input dtype {case.dtype}")
    if wants_lse and isinstance(lse, Tensor) and not lse.is_floating_point():
        problems.append(f"lse dtype {lse.dtype}, expected a floating dtype (float32)")
    return problems


def judge(case: MaterializedCase, out: object, lse: object, truth: Expected,
          segments: list[Segment] | None = None, wants_lse: bool = True,
          with_batch: bool = False) -> list[Verdict]:
    """Apply the policy to a target's ``out`` (and ``lse``) for every segment (default: the
    whole case as one); ``with_batch`` appends the verdict of the whole batch.

    The whole batch's numbers are the maxima of its segments' (every reduction is a max),
    so judging it costs no second pass over the tensors.
    """
    segments = segments or [whole(case)]
    problems = _contract_problems(case, out, lse, truth, wants_lse)
    if problems:
        return [Verdict(False, list(problems), kind="contract")
                for _ in range(len(segments) + with_batch)]
    device = case.device
    count = len(segments)
    row_ids = torch.repeat_interleave(
        torch.arange(count, device=device),
        torch.tensor([s.r1 - s.r0 for s in segments], device=device))
    key_ids = torch.repeat_interleave(
        torch.arange(count, device=device),
        torch.tensor([s.k1 - s.k0 for s in segments], device=device))
    rows = slice(segments[0].r0, segments[-1].r1)
    keys = slice(segments[0].k0, segments[-1].k1)
    got = out.detach().double()[rows]
    ref = truth.out[rows]
    err = torch.nan_to_num((got - ref).abs(), nan=math.inf)
    scale = _segment_max(truth.row_scale[rows], row_ids, count)[row_ids]
    floor = (_rounding_floor(case, truth, rows,
                             _segment_max(truth.key_norm[keys], key_ids, count)[row_ids])
             + ATOL_ULPS * ulp(scale, case.dtype)[:, None, None])
    # ULPs at each element, but never finer than at 1/64 of its row's largest value.
    finest = ulp(truth.row_scale[rows] / 64, case.dtype)[:, None, None]
    # Per query row and per key row, the columns of SegmentNumbers (reduced per segment).
    row_columns = {
        "out_error": _row_max(err),
        "beyond_floor": _row_max(torch.where(err > floor, err, 0.0)),
        "ulp_error": _row_max(err / torch.maximum(ulp(ref, case.dtype), finest)),
        "nonfinite": _row_max((~torch.isfinite(got)).to(torch.uint8)).double(),
        "scale": truth.row_scale[rows],
        "base_error": truth.row_base_error[rows],
        "base_lse_error": truth.row_base_lse_error[rows],
        "lse_scale": truth.row_lse_scale[rows],
        "q_norm": truth.row_q_norm[rows],
        "held_keys": truth.row_held_keys[rows],
        "truth_nonfinite": truth.row_nonfinite[rows].double(),
    }
    key_columns = {"key_norm": truth.key_norm[keys]}
    if wants_lse:
        got_lse = lse.detach().double()[:, rows]
        empty = torch.isneginf(truth.lse[:, rows])
        row_columns["lse_error"] = _row_max(_finite_diff(got_lse, truth.lse[:, rows]).T)
        row_columns["lse_bad_empty"] = _row_max(
            (empty & ~torch.isneginf(got_lse)).T.to(torch.uint8)).double()
        row_columns["lse_bad_finite"] = _row_max(
            (~empty & ~torch.isfinite(got_lse)).T.to(torch.uint8)).double()
    per_row = torch.stack([_segment_max(c.double(), row_ids, count)
                           for c in row_columns.values()], dim=1)
    per_key = torch.stack([_segment_max(c.double(), key_ids, count)
                           for c in key_columns.values()], dim=1)
    table = torch.cat([per_row, per_key], dim=1)
    names = [*row_columns, *key_columns]
    if with_batch:
        segments = [*segments, Segment(rows.start, rows.stop, keys.start, keys.stop)]
        table = torch.cat([table, table.amax(dim=0, keepdim=True)])
    return [_verdict(case, segment, SegmentNumbers(**dict(zip(names, numbers, strict=True))),
                     got, floor, lse if wants_lse else None, truth, rows.start)
            for segment, numbers in zip(segments, table.tolist(), strict=True)]  # one transfer


def _rounding_floor(case: MaterializedCase, truth: Expected, rows: slice, key_norm: Tensor
                    ) -> Tensor:
    """Per element, what rounding costs a correct kernel there (docstring of this module):
    ``BASELINE_MULTIPLE x sum_j p_j |v_j| x (u_dtype + eps32 (sqrt(visible keys) +
    2 max|score|))``, with the row's query norm and its case's largest key norm; the
    caller adds the output ULP every allowance has."""
    score = case.softmax_scale * truth.row_q_norm[rows] * key_norm
    if case.softcap is not None:
        score = score.clamp_max(case.softcap)
    width = truth.row_width[rows].double()
    per_row = (torch.finfo(case.dtype).eps / 2
               + FLOAT32_EPS * (width.sqrt() + 2 * score))
    return BASELINE_MULTIPLE * truth.abs_out[rows] * per_row[:, None, None]


def check(case: MaterializedCase, out: object, lse: object, truth: Expected) -> Verdict:
    """Apply the policy to one whole case (``lse`` None: not judged)."""
    return judge(case, out, lse, truth, wants_lse=lse is not None)[0]


def _verdict(case: MaterializedCase, segment: Segment, numbers: SegmentNumbers, got: Tensor,
             floor: Tensor, lse: Tensor | None, truth: Expected, row_offset: int) -> Verdict:
    dtype = case.dtype
    scale_ulp = float(ulp(torch.tensor(numbers.scale), dtype))
    atol = ATOL_ULPS * scale_ulp
    allowed = BASELINE_MULTIPLE * numbers.base_error + atol
    verdict = Verdict(True, baseline_error=numbers.base_error, allowed_error=allowed,
                      out_error=numbers.out_error, ulp_error=numbers.ulp_error,
                      scale_ulps=numbers.out_error / scale_ulp, out_scale=numbers.scale,
                      lse_scale=numbers.lse_scale)
    if numbers.truth_nonfinite or not math.isfinite(allowed):
        verdict.passed, verdict.judgeable, verdict.kind = False, False, "unjudgeable"
        verdict.problems.append("the float64 reference or the baseline is not finite here: "
                                "the referee cannot judge this case")
        return verdict
    verdict.out_ratio = numbers.out_error / max(numbers.base_error, atol)
    rows = slice(segment.r0 - row_offset, segment.r1 - row_offset)
    beyond = numbers.beyond_floor > allowed
    element_floor = 0.0
    if (numbers.nonfinite or beyond) and segment.r1 > segment.r0:
        reference = truth.out[segment.r0:segment.r1]
        verdict.worst, element_floor = _worst_out(case, got[rows], reference, floor[rows],
                                                  segment.r0)
    kinds = []
    if numbers.nonfinite:
        verdict.problems.append("out has non-finite values")
        kinds.append("nonfinite")
    if beyond:
        verdict.problems.append(
            f"out error {numbers.beyond_floor:.3g} exceeds {BASELINE_MULTIPLE:g} x baseline "
            f"{numbers.base_error:.3g} + atol {atol:.3g}, and the element's rounding floor + "
            f"atol {element_floor:.3g}")
        kinds.append("out")
    out_kinds = len(kinds)
    if lse is not None and numbers.lse_error is not None:
        rounding = (math.sqrt(case.head_dim) * FLOAT32_EPS * case.softmax_scale
                    * numbers.q_norm * numbers.key_norm + numbers.held_keys)
        lse_atol = max(ATOL_ULPS * float(ulp(torch.tensor(numbers.lse_scale), torch.float32)),
                       rounding)
        verdict.lse_error = numbers.lse_error
        verdict.lse_allowed_error = BASELINE_MULTIPLE * numbers.base_lse_error + lse_atol
        verdict.lse_ratio = numbers.lse_error / max(numbers.base_lse_error, lse_atol)
        if numbers.lse_bad_empty:
            verdict.problems.append("lse of rows with no visible key is not -inf")
            kinds.append("empty-rows")
        if numbers.lse_bad_finite:
            verdict.problems.append("lse has non-finite values where the reference is finite")
            kinds.append("nonfinite")
        if numbers.lse_error > verdict.lse_allowed_error:
            verdict.problems.append(
                f"lse error {numbers.lse_error:.3g} exceeds {BASELINE_MULTIPLE:g} x baseline "
                f"{numbers.base_lse_error:.3g} + atol {lse_atol:.3g}")
            kinds.append("lse")
            if not beyond and not numbers.nonfinite:
                verdict.worst = _worst_lse(case, lse[:, segment.r0:segment.r1],
                                           truth.lse[:, segment.r0:segment.r1], segment.r0)
    verdict.ratio = max(verdict.out_ratio, verdict.lse_ratio or 0.0)
    verdict.symptoms = ("out",) * bool(out_kinds) + ("lse",) * (len(kinds) > out_kinds)
    verdict.passed = not verdict.problems
    verdict.kind = kinds[0] if kinds else ""
    return verdict


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    """The index of element ``flat`` of a tensor of ``shape``."""
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def _worst_out(case: MaterializedCase, got: Tensor, ref: Tensor, floor: Tensor,
               first_row: int) -> tuple[Location, float]:
    """The element furthest past its rounding floor (the largest error if none is), and
    that element's floor."""
    err = torch.nan_to_num((got - ref).abs(), nan=math.inf)
    beyond = torch.where(err > floor, err, 0.0)
    worst = beyond if bool(beyond.any()) else err
    row, head, col = _unravel(int(torch.argmax(worst)), worst.shape)
    return (locate(case, first_row + row, head, float(ref[row, head, col]),
                   float(got[row, head, col]), col), float(floor[row, head, col]))


def _worst_lse(case: MaterializedCase, got: Tensor, ref: Tensor, first_row: int) -> Location:
    diff = _finite_diff(got.double(), ref)
    head, row = _unravel(int(torch.argmax(diff)), diff.shape)
    return locate(case, first_row + row, head, float(ref[head, row]), float(got[head, row]))
