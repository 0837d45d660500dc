"""For an engine's own tests: judge its kernel on a case, and draw cases the way the suite does.

An engine keeps its tests in its repository and asserts against the suite's float64
reference and tolerance policy (docs/plugin.md)::

    from hypothesis import given
    from prefix_referee.fuzz.testing import CPU_SPACE, assert_matches_reference, cases, space_for

    @given(spec=cases(space_for(my_kernel.capabilities, CPU_SPACE)))
    def test_my_kernel(spec):
        assert_matches_reference(my_kernel, spec)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefix_referee.fuzz.cases.models import MODELS
from prefix_referee.fuzz.cases.spaces import SPACES, default_space, space_for
from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    CPU_SPACE,
    GPU_SPACE,
    Space,
    cases,
    with_adversarial_examples,
)
from prefix_referee.fuzz.loop.triage import run_sync, triage
from prefix_referee.fuzz.records.findings import ExpectedFinding
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import CaseSpec, read_case
from prefix_referee.verify.materialize import MaterializedCase, materialize
from prefix_referee.verify.runner import Outcome, Status, evaluate
from prefix_referee.verify.target import Target
from prefix_referee.verify.targets import get_target, prefix_kernel
from prefix_referee.verify.targets.external import ExternalTarget

# The names SPACES and default_space had before; kept importable for one release.
PROFILES = SPACES
default_profile = default_space

Kernel = Callable[[MaterializedCase], tuple[Tensor, Tensor | None]]


def as_target(target: str | Target | Kernel) -> Target:
    """A registered name (``sdpa``, ``fault:<name>``, ``module:callable``), a
    :class:`Target`, or a kernel function ``f(case) -> (out, lse_or_None)``, as a Target."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return get_target(target)
    name = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"
    return ExternalTarget(name, target)


def default_device(target: Target) -> str:
    """Where a case runs unless told: on CUDA when it is here and the target runs there."""
    on_cuda = torch.cuda.is_available() and "cuda" in target.capabilities.devices
    return "cuda" if on_cuda else "cpu"


def assert_matches_reference(target: str | Target | Kernel,
                             case: CaseSpec | Mapping[str, Any] | MaterializedCase | str | Path,
                             *, device: str | None = None, allow_skip: bool = False,
                             expected: Sequence[ExpectedFinding] = ()) -> Outcome:
    """Run ``target`` on ``case`` and judge it with the suite's policy; the Outcome.

    ``case``: a spec, its JSON mapping (or a file or JSON string), or a materialized case
    (it keeps its device). Raises AssertionError with the diagnosis (request, position,
    head, what the query should see) and the case JSON when the target fails or errs; also
    when it does not run the case (unavailable here, or a case outside its declared
    capabilities) unless ``allow_skip``, since a test that runs nothing must not pass.
    A failure whose finding (its symptom and cause, found by triage) is one of
    ``expected`` is returned instead; the error names any other finding.
    """
    runner = as_target(target)
    if not isinstance(case, MaterializedCase):
        case = materialize(read_case(case), device or default_device(runner))
    outcome = evaluate(runner, case)
    if outcome.status == Status.PASS or (allow_skip and outcome.status == Status.SKIP):
        return outcome
    finding = ""
    if expected and outcome.failed:
        diagnosis = run_sync(
            triage(case.spec, outcome,
                   lambda spec: runner.unsupported_reason(spec, case.device.type) is None),
            lambda spec: evaluate(runner, materialize(spec, case.device)))
        if diagnosis.identity in {e.identity for e in expected}:
            return outcome
        finding = f"\nfinding: {diagnosis.identity}: {diagnosis.words} (not expected)"
    raise AssertionError(f"{outcome.summary()}{finding}\ncase: {case.spec.to_json()}")


__all__ = [
    "ADVERSARIAL_CASES",
    "CPU_SPACE",
    "GPU_SPACE",
    "MODELS",
    "SPACES",
    "Capabilities",
    "Space",
    "as_target",
    "assert_matches_reference",
    "cases",
    "default_device",
    "default_space",
    "prefix_kernel",
    "space_for",
    "with_adversarial_examples",
]
