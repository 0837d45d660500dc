"""The referee's tests of one kernel, collected by the pytest plugin per ``--prefix-target``.

* ``test_matches_reference``: random layouts from the device's space (cpu or gpu),
  narrowed to what the target declares it accepts, and the adversarial layouts as
  explicit examples; every case must pass the policy, or fail only with a finding
  ``--prefix-expect`` accepts; at least ``--prefix-min-cases`` random cases must be judged.
* ``test_golden``: every golden case the exact targets pass, an exact target must pass too
  (an approximate one is held to the approximation it claims by the property test instead).
* ``test_expected_finding``: each expected finding still reproduces (else it is stale:
  fixed? remove it from the file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from prefix_referee.fuzz.cases.spaces import SPACES, default_space, space_for
from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES, cases, with_adversarial_examples
from prefix_referee.fuzz.golden.replay import expectations, golden_files
from prefix_referee.fuzz.plugin.hooks import (
    expected_for,
    hypothesis_settings,
    min_cases,
    requested_targets,
)
from prefix_referee.fuzz.records.findings import ExpectedFinding
from prefix_referee.fuzz.testing import assert_matches_reference, default_device
from prefix_referee.verify.case import CaseSpec, read_case
from prefix_referee.verify.runner import Status
from prefix_referee.verify.target import Target
from prefix_referee.verify.targets import get_target


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    targets = requested_targets(metafunc.config)
    if "prefix_target" in metafunc.fixturenames:
        metafunc.parametrize("prefix_target", targets)
    if "golden_path" in metafunc.fixturenames:
        metafunc.parametrize("golden_path", golden_files(), ids=lambda path: path.stem)
    if "expected_finding" in metafunc.fixturenames:
        expected = [e for name in targets for e in expected_for(metafunc.config, name)]
        metafunc.parametrize("expected_finding", expected,
                             ids=[f"{e.target}-{e.identity}" for e in expected])


def _runnable(name: str) -> tuple[Target, str]:
    """The target and the device it runs on here (the plugin checked both at start)."""
    target = get_target(name)
    return target, default_device(target)


def test_matches_reference(prefix_target: str, request: pytest.FixtureRequest) -> None:
    target, device = _runnable(prefix_target)
    base = SPACES[default_space(device)]
    kv_dtype = request.config.getoption("prefix_kv_dtype")
    if kv_dtype is not None:
        base = base.narrowed(kv_dtypes=(kv_dtype,))
    space = space_for(target.capabilities, base)
    if space is None:
        pytest.fail(f"{prefix_target}: accepts none of the {device} space's head dims, "
                    "dtypes, kv dtypes or page sizes", pytrace=False)
    expected = expected_for(request.config, prefix_target)
    judged: set[str] = set()

    adversarial = {spec.to_json() for spec in ADVERSARIAL_CASES.values()}

    @hypothesis_settings(request.config)
    @given(spec=cases(space))
    @with_adversarial_examples
    def check(spec: CaseSpec) -> None:
        # An adversarial layout outside the target's declared capabilities is skipped.
        outcome = assert_matches_reference(target, spec, device=device, allow_skip=True,
                                           expected=expected)
        if outcome.status != Status.SKIP and spec.to_json() not in adversarial:
            judged.add(spec.to_json())

    check()
    wanted = min_cases(request.config)
    if len(judged) < wanted:
        pytest.fail(f"{prefix_target} judged only {len(judged)} random cases, fewer than "
                    f"--prefix-min-cases {wanted}: it declines the others (its declared "
                    "capabilities) or the budget (--prefix-examples) is too small",
                    pytrace=False)


def test_golden(prefix_target: str, golden_path: Path) -> None:
    target, device = _runnable(prefix_target)
    if not target.exact:
        pytest.skip(f"{prefix_target}: approximate by design, judged against its approximation by "
                    "test_matches_reference")
    spec = read_case(golden_path)
    if expectations(spec).get("reference") != Status.PASS:
        pytest.skip("the exact targets are not held to this case")
    outcome = assert_matches_reference(target, spec, device=device, allow_skip=True)
    if outcome.status == Status.SKIP:
        pytest.skip(outcome.reason)


def test_expected_finding(expected_finding: ExpectedFinding) -> None:
    """An expected finding must still reproduce: once its case passes, the bug is fixed and
    the entry goes (the file only ever shrinks)."""
    target, device = _runnable(expected_finding.target)
    outcome = assert_matches_reference(target, expected_finding.spec, device=device,
                                       allow_skip=True, expected=[expected_finding])
    if outcome.status == Status.SKIP:
        pytest.fail(f"stale: {expected_finding.identity} in {expected_finding.path}: "
                    f"{target.name} declines its case here ({outcome.reason})", pytrace=False)
    if not outcome.failed:
        pytest.fail(f"stale: {expected_finding.identity} in {expected_finding.path} no longer "
                    "reproduces: fixed? remove it from the file", pytrace=False)
