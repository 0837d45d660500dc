"""The tolerance policy: the only place that decides pass or fail.

FlashAttention's rule (DESIGN.md section 4): a target's max error against the
float64 reference must stay within ``BASELINE_MULTIPLE`` times the max error of a
plain PyTorch implementation computed in the input dtype, plus an absolute
slack of one output ULP at the output's scale. The LSE is held to the same rule
separately; its slack is the rounding any kernel makes in its float32 scores
(a dot product of ``head_dim`` terms), since the LSE is a smooth max of them and
inherits that error however exactly it is formed. A failure names the worst
element in the terms a kernel engineer debugs in: request, query position, head,
where the query sits relative to the image ranges, and which keys it should see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from references import ScoreBias, lowprec_attention, reference_attention
from verify.mask import request_mask
from verify.materialize import MaterializedCase, RequestView

# FlashAttention's tests allow a kernel twice the error of the low-precision baseline.
BASELINE_MULTIPLE = 2.0
# Absolute slack, in ULPs of the output dtype at the largest reference magnitude.
ATOL_ULPS = 1.0


@dataclass(frozen=True)
class Expected:
    """The float64 truth for a case and the low-precision baseline's distance from it."""

    out: Tensor
    lse: Tensor
    baseline_out_error: float
    baseline_lse_error: float
    score_rounding: float  # float32 rounding of the largest score, the LSE's slack


def score_rounding(case: MaterializedCase) -> float:
    """Typical float32 error of one score: sqrt(D) * u * scale * max|q| * max|k|.

    Higham's probabilistic bound on a D-term dot product, with Cauchy-Schwarz
    bounding the sum of |q_d k_d| by the largest norms; a softcap only shrinks it.
    """
    if not case.q.numel() or not case.k.numel():
        return 0.0
    q_norm = float(case.q.double().norm(dim=-1).max())
    k_norm = float(case.k.double().norm(dim=-1).max())
    return (case.head_dim ** 0.5 * torch.finfo(torch.float32).eps * case.softmax_scale
            * q_norm * k_norm)


def expected(case: MaterializedCase, score_bias: ScoreBias | None = None) -> Expected:
    """Reference and baseline for ``case`` (with an optional model log-weight)."""
    out, lse = reference_attention(case, score_bias=score_bias)
    base_out, base_lse = lowprec_attention(case, score_bias=score_bias)
    return Expected(out, lse, _max_abs(base_out.double() - out),
                    _max_abs(_finite_diff(base_lse.double(), lse)), score_rounding(case))


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of ``dtype`` at ``|x|`` (subnormals get the smallest normal's)."""
    info = torch.finfo(dtype)
    magnitude = x.abs().double().clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def _max_abs(t: Tensor) -> float:
    return float(t.abs().max()) if t.numel() else 0.0


def _finite_diff(a: Tensor, b: Tensor) -> Tensor:
    """a - b where both are finite, 0 where both are the same infinity."""
    same_inf = torch.isinf(a) & torch.isinf(b) & (a == b)
    return torch.where(same_inf, torch.zeros_like(a), a - b)


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

    def __str__(self) -> str:
        what = "lse" if self.column is None else f"out[..., {self.column}]"
        return (f"request {self.request}, query {self.query_index} (position {self.position}), "
                f"head {self.head}, {self.where}, sees {self.visible}: "
                f"{what} expected {self.expected:.6g}, got {self.got:.6g}")


def locate(case: MaterializedCase, row: int, head: int, expected_value: float,
           got_value: float, column: int | None = None) -> Location:
    """Place packed query ``row`` of ``case`` in its request and describe its mask row."""
    view: RequestView = next(v for v in case.requests()
                             if v.q_start <= row < v.q_start + v.query_len)
    i = row - view.q_start
    spec_request = case.spec.requests[view.index]
    mask_row = request_mask(case.spec, spec_request, query_rows=slice(i, i + 1))[0]
    spans = _spans(mask_row)
    visible = ", ".join(f"keys [{a}, {b}]" for a, b in spans) or "no key"
    return Location(view.index, i, view.context_len + i, head,
                    describe_position(view.context_len + i, view.ranges), visible,
                    expected_value, got_value, column)


@dataclass
class Verdict:
    """The outcome of one target on one case, with the numbers behind it."""

    passed: bool
    problems: list[str] = field(default_factory=list)
    out_error: float = 0.0
    baseline_error: float = 0.0
    allowed_error: float = 0.0
    ratio: float = 0.0  # the larger of out_ratio and lse_ratio
    out_ratio: float = 0.0  # out_error / max(baseline_error, atol)
    ulp_error: float = 0.0
    lse_error: float | None = None
    lse_allowed_error: float | None = None
    lse_ratio: float | None = None  # lse_error / max(baseline lse error, lse atol)
    worst: Location | None = None

    def summary(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        numbers = (f"max err {self.out_error:.3g} (allowed {self.allowed_error:.3g}, "
                   f"ratio {self.out_ratio:.2f} x baseline, {self.ulp_error:.1f} ulp)")
        if self.lse_error is not None:
            numbers += (f", lse err {self.lse_error:.3g} (allowed {self.lse_allowed_error:.3g}, "
                        f"ratio {self.lse_ratio:.2f} x baseline)")
        lines = [f"{head}: {numbers}", *self.problems]
        if self.worst is not None and not self.passed:
            lines.append(f"worst: {self.worst}")
        return "\n".join(lines)


def _worst_out(case: MaterializedCase, out: Tensor, ref: Tensor, err: Tensor) -> Location:
    flat = int(torch.argmax(torch.nan_to_num(err, nan=math.inf)))
    row, head, col = torch.unravel_index(torch.tensor(flat), err.shape)
    row, head, col = int(row), int(head), int(col)
    return locate(case, row, head, float(ref[row, head, col]), float(out[row, head, col]), col)


def check(case: MaterializedCase, out: Tensor, lse: Tensor | None, truth: Expected) -> Verdict:
    """Apply the policy to a target's ``out`` and optional ``lse``."""
    want_shape = tuple(truth.out.shape)
    if tuple(out.shape) != want_shape:
        return Verdict(False, [f"out has shape {tuple(out.shape)}, expected {want_shape}"])
    problems = []
    if out.dtype != case.dtype:
        problems.append(f"out dtype {out.dtype}, expected the input dtype {case.dtype}")
    got = out.detach().to(truth.out.device, torch.float64)
    err = (got - truth.out).abs()
    scale = float(truth.out.abs().max()) if truth.out.numel() else 0.0
    atol = ATOL_ULPS * float(ulp(torch.tensor(scale), case.dtype))
    verdict = Verdict(True, problems, baseline_error=truth.baseline_out_error)
    verdict.allowed_error = BASELINE_MULTIPLE * truth.baseline_out_error + atol
    if got.numel():
        nonfinite = ~torch.isfinite(got)
        verdict.out_error = math.inf if bool(nonfinite.any()) else float(err.max())
        if bool(nonfinite.any()):
            problems.append(f"out has {int(nonfinite.sum())} non-finite values")
        floor = ulp(torch.tensor(scale / 64), case.dtype)
        verdict.ulp_error = float((err / torch.maximum(ulp(truth.out, case.dtype), floor)).max())
        verdict.out_ratio = verdict.out_error / max(truth.baseline_out_error, atol)
        verdict.worst = _worst_out(case, got, truth.out, err)
        if verdict.out_error > verdict.allowed_error:
            problems.append(f"out error {verdict.out_error:.3g} exceeds "
                            f"{BASELINE_MULTIPLE:g} x baseline {truth.baseline_out_error:.3g} "
                            f"+ atol {atol:.3g}")
    if lse is not None:
        _check_lse(case, lse, truth, verdict)
    verdict.ratio = max(verdict.out_ratio, verdict.lse_ratio or 0.0)
    verdict.passed = not problems
    return verdict


def _check_lse(case: MaterializedCase, lse: Tensor, truth: Expected, verdict: Verdict) -> None:
    want_shape = tuple(truth.lse.shape)
    if tuple(lse.shape) != want_shape:
        verdict.problems.append(f"lse has shape {tuple(lse.shape)}, expected {want_shape}")
        return
    got = lse.detach().to(truth.lse.device, torch.float64)
    empty = torch.isneginf(truth.lse)
    bad_empty = empty & ~torch.isneginf(got)
    if bool(bad_empty.any()):
        verdict.problems.append(f"lse of {int(bad_empty.sum())} rows with no visible key is not "
                                "-inf")
    bad = ~empty & ~torch.isfinite(got)
    if bool(bad.any()):
        verdict.problems.append(f"lse has {int(bad.sum())} non-finite values where the "
                                "reference is finite")
    diff = torch.where(empty | ~torch.isfinite(got), torch.zeros_like(got), got - truth.lse).abs()
    verdict.lse_error = _max_abs(diff) if not bool((bad | bad_empty).any()) else math.inf
    lse_scale = torch.tensor(_max_abs(torch.where(empty, 0.0, truth.lse)))
    atol = max(ATOL_ULPS * float(ulp(lse_scale, torch.float32)), truth.score_rounding)
    verdict.lse_allowed_error = BASELINE_MULTIPLE * truth.baseline_lse_error + atol
    verdict.lse_ratio = verdict.lse_error / max(truth.baseline_lse_error, atol)
    if verdict.lse_error > verdict.lse_allowed_error:
        verdict.problems.append(f"lse error {verdict.lse_error:.3g} exceeds "
                                f"{BASELINE_MULTIPLE:g} x baseline {truth.baseline_lse_error:.3g} "
                                f"+ atol {atol:.3g}")
        if verdict.out_error <= verdict.allowed_error and got.numel():
            flat = int(torch.argmax(torch.nan_to_num(diff, nan=math.inf)))
            head, row = divmod(flat, got.shape[1])
            verdict.worst = locate(case, row, head, float(truth.lse[head, row]),
                                   float(got[head, row]))
