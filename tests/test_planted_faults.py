"""Every planted fault (one per real bug, docs/bugs.md) is caught within the CI example budget.

This is the suite's honesty check: the strategies, the reference and the policy
together must turn each bug into a failing verdict, and the diagnosis must point
at the layout that exposes it.
"""

from __future__ import annotations

import pytest
from hypothesis import Phase, find, settings

from fuzz.cases.strategies import ADVERSARIAL_CASES, CPU_SPACE, cases
from verify import CaseSpec, materialize
from verify.runner import Status, TruthCache, evaluate
from verify.targets import get_target
from verify.targets.faults import FAULTS

# The gate's budget per fault: the CI profile's example count.
BUDGET = settings(max_examples=settings().max_examples, derandomize=True, database=None,
                  phases=[Phase.explicit, Phase.generate], deadline=None)


def _outcome(name: str, spec: CaseSpec):
    return evaluate(get_target(f"fault:{name}"), materialize(spec), TruthCache())


def _exposing_case(name: str) -> CaseSpec:
    """An adversarial layout that exposes the fault, else the first generated one."""
    for spec in ADVERSARIAL_CASES.values():
        if _outcome(name, spec).failed:
            return spec
    return find(cases(CPU_SPACE), lambda spec: _outcome(name, spec).failed, settings=BUDGET)


@pytest.mark.parametrize("name", list(FAULTS))
def test_fault_is_caught_and_located(name: str) -> None:
    outcome = _outcome(name, _exposing_case(name))
    assert outcome.status == Status.FAIL and outcome.verdict is not None
    text = outcome.summary()
    assert "worst: request" in text and "position" in text and "sees keys" in text
