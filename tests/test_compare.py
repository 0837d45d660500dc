"""The tolerance policy itself: what it accepts, what it rejects, how it reports."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES
from prefix_referee.verify import materialize, parse_case
from prefix_referee.verify.compare import (
    ATOL_ULPS,
    BASELINE_MULTIPLE,
    check,
    describe_position,
    expected,
    ulp,
)

SPEC = ADVERSARIAL_CASES["chunk_starts_inside_range"]


@pytest.fixture(scope="module")
def case_and_truth():
    case = materialize(SPEC)
    return case, expected(case)


def _exact(case, truth):
    return truth.out.to(case.dtype), truth.lse.float()


def test_rounded_reference_passes(case_and_truth) -> None:
    case, truth = case_and_truth
    verdict = check(case, *_exact(case, truth), truth)
    assert verdict.passed and verdict.ulp_error <= 0.5 + 1e-9


def test_error_just_over_the_allowance_fails(case_and_truth) -> None:
    case, truth = case_and_truth
    out, lse = _exact(case, truth)
    verdict = check(case, out, lse, truth)
    bumped = out.double()
    bumped[3, 1, 5] += 1.5 * verdict.allowed_error
    failing = check(case, bumped.to(case.dtype), lse, truth)
    assert not failing.passed and failing.out_error > failing.allowed_error
    assert failing.worst is not None and failing.worst.head == 1 and failing.worst.column == 5


def test_allowance_is_the_flashattention_rule(case_and_truth) -> None:
    case, truth = case_and_truth
    verdict = check(case, *_exact(case, truth), truth)
    atol = ATOL_ULPS * float(ulp(truth.out.abs().max(), case.dtype))
    assert verdict.allowed_error == pytest.approx(
        BASELINE_MULTIPLE * truth.baseline_out_error + atol)


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_non_finite_output_fails_and_is_located(case_and_truth, poison: float) -> None:
    case, truth = case_and_truth
    out, lse = _exact(case, truth)
    out = out.clone()
    out[7, 2, 0] = poison
    verdict = check(case, out, lse, truth)
    assert not verdict.passed and "non-finite" in verdict.summary()
    assert (verdict.worst.request, verdict.worst.query_index, verdict.worst.head) == (0, 7, 2)


def test_shape_and_dtype_mismatch_fail(case_and_truth) -> None:
    case, truth = case_and_truth
    out, lse = _exact(case, truth)
    assert "shape" in check(case, out[:-1], lse, truth).summary()
    assert "dtype" in check(case, out.float(), lse, truth).summary()
    assert "lse has shape" in check(case, out, lse.T, truth).summary()


def test_lse_is_judged_separately(case_and_truth) -> None:
    case, truth = case_and_truth
    out, lse = _exact(case, truth)
    verdict = check(case, out, lse / math.log(2), truth)  # base-2 LSE
    assert not verdict.passed and "lse error" in verdict.summary()
    assert verdict.worst is not None and verdict.worst.column is None


def test_lse_of_an_empty_row_must_be_minus_inf() -> None:
    case = materialize(parse_case({"requests": [{"query_len": 2}], "num_heads": 1,
                                   "head_dim": 4, "dtype": "float32"}))
    lo, hi = case.layout.rows_lo.clone(), case.layout.rows_hi.clone()
    lo[1], hi[1] = 1, 0  # row 1 sees no key
    case = replace(case, layout=replace(case.layout, rows_lo=lo, rows_hi=hi))
    truth = expected(case)
    out, lse = _exact(case, truth)
    assert check(case, out, lse, truth).passed
    for wrong in (math.inf, 0.0, math.nan):
        bad = lse.clone()
        bad[0, 1] = wrong
        assert "no visible key is not -inf" in check(case, out, bad, truth).summary()


def test_ulp_is_the_spacing_of_the_dtype() -> None:
    x = torch.tensor([0.3, 1.0, 5.5, -70.0])
    step = torch.nextafter(x.abs(), torch.tensor(math.inf)) - x.abs()
    torch.testing.assert_close(ulp(x, torch.float32).float(), step)
    for dtype in (torch.bfloat16, torch.float16):
        assert float(ulp(torch.tensor(1.0), dtype)) == torch.finfo(dtype).eps
        assert float(ulp(torch.tensor(-3.0), dtype)) == 2 * torch.finfo(dtype).eps


@pytest.mark.parametrize(("position", "where"), [
    (2, "before range [5, 9]"), (5, "inside range [5, 9]"), (11, "after range [5, 9]"),
    (13, "before range [14, 20]"), (20, "inside range [14, 20]"),
])
def test_describe_position(position: int, where: str) -> None:
    assert describe_position(position, ((5, 9), (14, 20))) == where
    assert describe_position(position, ()) == "no image ranges"


def test_float32_diagnoses_print_enough_digits_and_the_layout_fact() -> None:
    spec = parse_case({"requests": [{"context_len": 30, "query_len": 6, "ranges": [[28, 80]]}],
                       "num_heads": 2, "head_dim": 16, "dtype": "float32"})
    case = materialize(spec)
    truth = expected(case)
    out, lse = _exact(case, truth)
    out = out.clone()
    out[2, 1, 3] += 1e-3
    verdict = check(case, out, lse, truth)
    assert not verdict.passed and "reaches past seq_len" in verdict.worst.fact
    text = verdict.summary()
    assert "range [28, 80] reaches past seq_len 36" in text
    expected_value = f"{verdict.worst.expected:.9g}"
    assert f"expected {expected_value}" in text and len(expected_value.strip("-.0")) >= 7


def test_a_non_finite_baseline_is_an_error_never_a_pass() -> None:
    """fp16 scores past 65504 overflow in the baseline: the case cannot be judged."""
    spec = parse_case({"requests": [{"query_len": 8}], "num_heads": 1, "head_dim": 64,
                       "dtype": "float16", "softmax_scale": 1e4, "value_distribution": "peaky"})
    case = materialize(spec)
    truth = expected(case)
    for out in (truth.out.to(case.dtype), truth.out.to(case.dtype) + 1):
        verdict = check(case, out, truth.lse.float(), truth)
        assert not verdict.passed and not verdict.judgeable and verdict.kind == "unjudgeable"
