"""The two-call family: right against its approximation, its error visible, its faults caught.

``two_call_<engine>`` is judged against its approximation computed exactly (ln 2 on the
overlap keys) and ``replace_<engine>`` against the exact mask, both by the one policy.
Float64 checks hold the decomposition to its approximation and the overlap error to its
identities. Planted faults show both verdicts can fail: the two-call path claiming to be
exact, and broken decompositions judged against the approximation.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, find, given, settings

from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    CPU_SPACE,
    cases,
    with_adversarial_examples,
)
from prefix_referee.golden import TWO_CALL_SUMMARY
from prefix_referee.references import reference_attention
from prefix_referee.verify import CaseSpec, materialize, parse_case
from prefix_referee.verify.compare import ulp
from prefix_referee.verify.gpu import fa4_unavailable_reason
from prefix_referee.verify.mask import overlap_weight
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.runner import Status, TruthCache, evaluate
from prefix_referee.verify.targets import Target, get_target, target_names
from prefix_referee.verify.targets.engines import (
    REFERENCE_ENGINE,
    SDPA_ENGINE,
    Engine,
    reference_call,
    sdpa_call,
)
from prefix_referee.verify.targets.two_call import (
    RangeSpan,
    ReplaceTarget,
    TwoCallTarget,
    range_spans,
)
from prefix_referee.verify.two_call_analysis.error import (
    TV_BOUND,
    matches_two_call_approximation,
    measure,
)
from prefix_referee.verify.two_call_analysis.report import main

ENGINES = ("reference", "sdpa", "fa4")
CPU_DECOMPOSITIONS = ("two_call_reference", "two_call_sdpa", "replace_reference", "replace_sdpa")
# Float64 agreement of two computations of the same quantity (values are O(1) to O(100)).
FLOAT64_TOLERANCE = 1e-12
# The gate's budget for finding a case that exposes a planted fault.
BUDGET = settings(max_examples=settings().max_examples, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], deadline=None)


def has_query_in_range(case: MaterializedCase) -> bool:
    return bool(range_spans(case))


# --- registry and declared limits --------------------------------------------------------


def test_all_six_targets_are_registered_with_their_claims() -> None:
    windowed = materialize(ADVERSARIAL_CASES["window_shorter_than_range"])  # sliding window 8
    for engine in ENGINES:
        two_call, exact = get_target(f"two_call_{engine}"), get_target(f"replace_{engine}")
        bias = two_call.approximation_bias(windowed)
        assert not two_call.exact and bias is not None and bias.weight == math.log(2)
        assert exact.exact and exact.approximation_bias(windowed) is None
    assert {f"{k}_{e}" for k in ("two_call", "replace") for e in ENGINES} <= set(target_names())


@pytest.mark.parametrize("name", ["two_call_fa4", "replace_fa4"])
def test_fa4_engine_targets_report_why_they_cannot_run(name: str) -> None:
    assert get_target(name).unavailable_reason() == fa4_unavailable_reason()


@pytest.mark.parametrize("name, spec, words", [
    ("replace_reference", ADVERSARIAL_CASES["window_shorter_than_range"],
     "clamped_windows"),
    ("two_call_reference", parse_case({"requests": [{"query_len": 9, "ranges": [[1, 6], [3, 8]]}],
                                       "num_heads": 2, "head_dim": 16, "dtype": "bfloat16",
                                       "allow_overlapping_ranges": True}), "overlapping ranges"),
    ("two_call_sdpa", ADVERSARIAL_CASES["softcap_peaky_gqa4"], "softcap"),
])
def test_what_a_decomposition_cannot_do_skips_with_the_reason(name: str, spec: CaseSpec,
                                                              words: str) -> None:
    outcome = evaluate(get_target(name), materialize(spec))
    assert outcome.status == Status.SKIP and outcome.reason.startswith("unsupported:")
    assert words in outcome.reason


def test_engine_without_a_dense_window_declines_clamped_ranges() -> None:
    spec = ADVERSARIAL_CASES["window_clamps_range"]
    assert TwoCallTarget(REFERENCE_ENGINE).unsupported_reason(spec, "cpu") is None
    unwindowed = TwoCallTarget(replace(REFERENCE_ENGINE, dense_window=False))
    reason = unwindowed.unsupported_reason(spec, "cpu")
    assert reason is not None and "clamp_ranges_to_window" in reason


@pytest.mark.parametrize("call", [reference_call, sdpa_call])
def test_engine_rows_with_no_key_give_zero_and_minus_inf(call) -> None:
    """Causal, bottom-right aligned: with 3 queries and 1 key the first two see nothing."""
    q, k, v = torch.randn(3, 2, 16), torch.randn(1, 2, 16), torch.randn(1, 2, 16)
    cu_q, cu_k = torch.tensor([0, 3], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32)
    out, lse = call(q, k, v, cu_q, cu_k, 3, 1, 0.25, causal=True)
    assert torch.isneginf(lse[:, :2]).all() and torch.isfinite(lse[:, 2]).all()
    assert (out[:2] == 0).all() and torch.allclose(out[2].double(), v[0].double())


# --- the policy: two_call against its approximation, replace against the exact mask -------


@given(spec=cases(CPU_SPACE))
@with_adversarial_examples
def test_cpu_decompositions_pass_the_policy(spec: CaseSpec) -> None:
    case, truths = materialize(spec), TruthCache()
    for name in CPU_DECOMPOSITIONS:
        outcome = evaluate(get_target(name), case, truths)
        if outcome.status == Status.SKIP:
            assert outcome.reason.startswith("unsupported:"), outcome.reason
            continue
        assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()


@pytest.mark.parametrize("target, bias", [
    (TwoCallTarget(REFERENCE_ENGINE), overlap_weight),
    (ReplaceTarget(REFERENCE_ENGINE), None),
], ids=["two_call_is_its_approximation", "replace_is_exact"])
@given(spec=cases(CPU_SPACE))
@with_adversarial_examples
def test_float64_decomposition_equals_its_claim(target: Target, bias, spec: CaseSpec) -> None:
    """On the float64 engine there is no rounding to hide behind: equal to float64 precision."""
    if target.unsupported_reason(spec, "cpu"):
        return
    case = materialize(spec)
    out, lse = target.attend(case)
    want_out, want_lse = reference_attention(case.batch(None if bias is None else bias(case)))
    assert float((out - want_out).abs().max()) <= FLOAT64_TOLERANCE
    assert float((lse - want_lse).abs().max()) <= FLOAT64_TOLERANCE


# --- the identities of the overlap error ----------------------------------------------------


@given(spec=cases(CPU_SPACE))
@with_adversarial_examples
def test_overlap_error_identities(spec: CaseSpec) -> None:
    """lse shift = ln(1 + m), TV = m (1 - m) / (1 + m) <= 3 - 2 sqrt 2; zero outside images."""
    error = measure(materialize(spec))
    m = error.mass
    assert float((error.lse_shift - torch.log1p(m)).abs().max()) <= FLOAT64_TOLERANCE
    assert float((error.tv - m * (1 - m) / (1 + m)).abs().max()) <= FLOAT64_TOLERANCE
    assert float(error.tv.max()) <= TV_BOUND + FLOAT64_TOLERANCE
    outside = ~error.inside
    assert (m[:, outside] == 0).all()
    assert (error.abs_error[:, outside] <= FLOAT64_TOLERANCE).all()


# --- planted faults ------------------------------------------------------------------------


class ClaimsExact(TwoCallTarget):
    """The two-call path presented as exact attention (the bug docs/bugs.md warns about)."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.name, self.exact = f"claims_exact_{self.name}", True

    def approximation_bias(self, case: MaterializedCase) -> None:
        return None


@pytest.mark.parametrize("engine", [REFERENCE_ENGINE, SDPA_ENGINE], ids=["reference", "sdpa"])
@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=ADVERSARIAL_CASES.keys())
def test_two_call_claiming_exact_fails_and_is_recognised(engine: Engine, spec: CaseSpec) -> None:
    target = ClaimsExact(engine)
    if target.unsupported_reason(spec, "cpu"):
        pytest.skip("engine declines the case")
    case = materialize(spec)
    assert has_query_in_range(case)  # every adversarial layout has an image query
    outcome = evaluate(target, case)
    assert outcome.status == Status.FAIL, outcome.summary()
    assert "inside range" in outcome.verdict.worst.where, outcome.summary()
    assert matches_two_call_approximation(case, *target.run(case))


@given(spec=cases(CPU_SPACE))
def test_two_call_claiming_exact_fails_exactly_when_the_overlap_error_shows(spec: CaseSpec
                                                                            ) -> None:
    """Exact where no query is in an image; a failure wherever the approximation exceeds
    the allowance by more than the output's rounding (the float64 engine adds no other)."""
    case = materialize(spec)
    outcome = evaluate(ClaimsExact(REFERENCE_ENGINE), case)
    if not has_query_in_range(case):
        assert outcome.status == Status.PASS, outcome.summary()
        return
    error = measure(case)
    rounding = float(ulp(torch.tensor(error.out_scale), case.dtype))
    excess = float(error.abs_error.max()) - outcome.verdict.allowed_error
    # Within one rounding of the allowance either verdict is right; outside it, exactly one.
    if abs(excess) > rounding:
        assert ("out" in outcome.verdict.symptoms) == (excess > 0), outcome.summary()


class _ExclusiveEnd:
    """Ranges read as ``[s, e)``: the last image token gets no call B, the others miss key e."""

    def spans(self, case: MaterializedCase) -> list[RangeSpan]:
        shrunk = [replace(s, last=min(s.last, s.range_end - 1)) for s in range_spans(case)]
        return [s for s in shrunk if s.first <= s.last]


class TwoCallExclusiveEnd(_ExclusiveEnd, TwoCallTarget):
    pass


class ReplaceExclusiveEnd(_ExclusiveEnd, ReplaceTarget):
    pass


class TwoCallSkipsChunkInsideImage(TwoCallTarget):
    """Call B only for images that start in this chunk: a chunk that starts inside an image
    (its start cached) leaves its image queries purely causal."""

    def spans(self, case: MaterializedCase) -> list[RangeSpan]:
        return [s for s in range_spans(case) if s.range_start >= s.context_len]


def _dense_lse_base2(engine: Engine) -> Engine:
    """Call B reports its LSE in base 2 (as FA kernels keep it) and the merge takes it as ln."""

    def dense(*args, **kwargs):
        out, lse = engine.dense(*args, **kwargs)
        return out, lse / math.log(2.0)

    return replace(engine, name=f"{engine.name}_dense_lse_base2", dense=dense)


BROKEN = {
    "two_call_exclusive_end": TwoCallExclusiveEnd(REFERENCE_ENGINE),
    "replace_exclusive_end": ReplaceExclusiveEnd(REFERENCE_ENGINE),
    "two_call_skips_chunk_inside_image": TwoCallSkipsChunkInsideImage(REFERENCE_ENGINE),
    "two_call_dense_lse_base2": TwoCallTarget(_dense_lse_base2(REFERENCE_ENGINE)),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_decomposition_fails_against_its_claim(name: str) -> None:
    """Found on an adversarial layout, else within the CI budget of generated ones."""
    target = BROKEN[name]

    def fails(spec: CaseSpec) -> bool:
        return evaluate(target, materialize(spec), TruthCache()).status == Status.FAIL

    spec = next((s for s in ADVERSARIAL_CASES.values() if fails(s)), None) or find(
        cases(CPU_SPACE), fails, settings=BUDGET)
    outcome = evaluate(target, materialize(spec))
    assert outcome.status == Status.FAIL and "inside range" in outcome.verdict.worst.where, \
        outcome.summary()


# --- the report and its golden summary ------------------------------------------------------


def _flatten(value, path: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{path}.{key}")
                .items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{path}[{i}]")
                .items()}
    return {path: value}


def test_report_rederives_the_golden_summary(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--summary", str(tmp_path / "summary.json")]) == 0
    got = _flatten(json.loads((tmp_path / "summary.json").read_text()))
    want = _flatten(json.loads(TWO_CALL_SUMMARY.read_text()))
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert got[key] == value, key
    # Both rounded to the summary's digits: the worst TV lies within a rounding of the bound.
    assert want[".worst.max_tv"] <= want[".worst.max_tv_bound"] == pytest.approx(TV_BOUND)
    assert want[".worst.max_lse_shift"] <= math.log(2)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "length.png", "offset.png", "position.png", "temperature.png"]
