"""Every planted fault (one per real bug, docs/bugs.md) is caught within the CI example budget.

This is the suite's honesty check: the strategies, the reference and the policy
together must turn each bug into a failing verdict, and the diagnosis must point
at the layout that exposes it.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, find, settings

from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    CPU_SPACE,
    FP8_ADVERSARIAL_CASES,
    cases,
)
from prefix_referee.verify import CaseSpec, materialize
from prefix_referee.verify.runner import Status, TruthCache, evaluate
from prefix_referee.verify.targets import get_target
from prefix_referee.verify.targets.faults import FAULTS, FP8_FAULTS

# The gate's budget per fault: the CI profile's example count.
BUDGET = settings(max_examples=settings().max_examples, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], deadline=None)


def _outcome(name: str, spec: CaseSpec):
    return evaluate(get_target(f"fault:{name}"), materialize(spec), TruthCache())


def _exposing_case(name: str) -> CaseSpec:
    """An adversarial layout that exposes the fault, else the first generated one (an FP8
    fault can fail only on the layouts with an FP8 cache)."""
    layouts = FP8_ADVERSARIAL_CASES if name in FP8_FAULTS else ADVERSARIAL_CASES
    for spec in layouts.values():
        if _outcome(name, spec).failed:
            return spec
    return find(cases(CPU_SPACE), lambda spec: _outcome(name, spec).failed, settings=BUDGET)


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_caught_and_located(name: str) -> None:
    outcome = _outcome(name, _exposing_case(name))
    assert outcome.status == Status.FAIL and outcome.verdict is not None
    text = outcome.summary()
    assert "worst: request" in text and "position" in text and "sees keys" in text


@pytest.mark.parametrize("name", FP8_FAULTS)
def test_fp8_fault_is_drawn_by_a_space_with_an_fp8_cache(name: str) -> None:
    """The FP8 faults fail only on an FP8 cache, which the fuzzer draws when asked for one
    (``--kv-dtype``): its space finds each within the budget, adversarial layouts aside."""
    space = CPU_SPACE.narrowed(kv_dtypes=("float8_e4m3fn",), max_seq_len=24, tile_edges=())
    spec = find(cases(space), lambda spec: _outcome(name, spec).failed, settings=BUDGET)
    assert spec.kv_dtype == "float8_e4m3fn"
    assert _outcome(name, spec.with_changes(kv_dtype=None, kv_scale="tensor")).status == (
        Status.PASS)
