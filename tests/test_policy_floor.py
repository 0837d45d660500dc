"""The float32 floor of the policy: a correct float32 kernel never fails on rounding, and
planted faults in float32 are still caught.

In float32 the low-precision baseline is nearly exact, so twice its error is below what
rounding costs any correct online-softmax kernel (its float32 scores, its accumulation
over the visible keys): the allowance never drops under that bound (docs/semantics.md).
"""

from __future__ import annotations

from hypothesis import Phase, find, given, settings

from prefix_referee.fuzz.cases.strategies import CPU_SPACE, cases
from prefix_referee.verify import CaseSpec, materialize
from prefix_referee.verify.compare import BASELINE_MULTIPLE, check, expected
from prefix_referee.verify.runner import Status, evaluate
from prefix_referee.verify.targets import get_target
from prefix_referee.verify.targets.faults import FAULTS
from tests.online_softmax import online_softmax

FLOAT32 = CPU_SPACE.narrowed(dtypes=("float32",), head_dims=(32, 64, 128))
PEAKY = FLOAT32.narrowed(value_distributions=("peaky", "outliers"))
BUDGET = settings(max_examples=settings().max_examples, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], deadline=None)


@given(spec=cases(PEAKY))
def test_a_correct_float32_kernel_passes_on_peaky_cases(spec: CaseSpec) -> None:
    case = materialize(spec)
    verdict = check(case, *online_softmax(case), expected(case))
    assert verdict.passed, verdict.summary() + "\ncase: " + spec.to_json()


def _beyond_baseline(spec: CaseSpec) -> bool:
    case = materialize(spec)
    verdict = check(case, *online_softmax(case), expected(case))
    return verdict.passed and verdict.out_ratio > BASELINE_MULTIPLE


def test_the_floor_is_what_lets_it_pass() -> None:
    """Non-vacuity: cases exist where the kernel is beyond 2x the float32 baseline (about
    one in thirty peaky cases)."""
    find(cases(PEAKY), _beyond_baseline, settings=settings(BUDGET, max_examples=300))


def test_planted_faults_are_caught_in_float32() -> None:
    for name in ("chunk_local_position", "causal_tile_key_loop", "gqa_head_modulo",
                 "exclusive_range_end", "lse_base2"):
        target = get_target(f"fault:{name}")
        find(cases(FLOAT32),
             lambda spec, t=target: evaluate(t, materialize(spec)).status == Status.FAIL,
             settings=BUDGET)
    assert set(FAULTS) >= {"chunk_local_position", "lse_base2"}
