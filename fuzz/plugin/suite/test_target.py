"""The referee's tests of one kernel, collected by the pytest plugin per ``--prefix-target``.

* ``test_matches_reference``: random layouts from the device's space (cpu or gpu),
  narrowed to what the target declares it accepts, and the adversarial layouts as
  explicit examples; every case must pass the policy.
* ``test_golden``: every golden case the exact targets pass, an exact target must pass too
  (an approximate one is held to the approximation it claims by the property test instead).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from fuzz.cases.spaces import SPACES, default_space, space_for
from fuzz.cases.strategies import cases, with_adversarial_examples
from fuzz.golden.replay import expectations, golden_files
from fuzz.plugin.hooks import hypothesis_settings, requested_targets
from fuzz.testing import assert_matches_reference, default_device
from verify.case import CaseSpec, read_case
from verify.runner import Status
from verify.target import Target
from verify.targets import get_target


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "prefix_target" in metafunc.fixturenames:
        metafunc.parametrize("prefix_target", requested_targets(metafunc.config))
    if "golden_path" in metafunc.fixturenames:
        metafunc.parametrize("golden_path", golden_files(), ids=lambda path: path.stem)


def _runnable(name: str) -> tuple[Target, str]:
    """The target and the device it runs on here, or skip with the reason it cannot."""
    target = get_target(name)
    reason = target.unavailable_reason()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    device = default_device(target)
    if device not in target.capabilities.devices:
        pytest.skip(f"{name}: runs on {', '.join(sorted(target.capabilities.devices))}, "
                    f"not on {device}")
    return target, device


def test_matches_reference(prefix_target: str, request: pytest.FixtureRequest) -> None:
    target, device = _runnable(prefix_target)
    base = SPACES[default_space(device)]
    kv_dtype = request.config.getoption("prefix_kv_dtype")
    if kv_dtype is not None:
        base = base.narrowed(kv_dtypes=(kv_dtype,))
    space = space_for(target.capabilities, base)
    if space is None:
        pytest.skip(f"{prefix_target}: accepts none of the {device} space's head dims, "
                    "dtypes, kv dtypes or page sizes")

    @hypothesis_settings(request.config)
    @given(spec=cases(space))
    @with_adversarial_examples
    def check(spec: CaseSpec) -> None:
        # An adversarial layout outside the target's declared capabilities is skipped.
        assert_matches_reference(target, spec, device=device, allow_skip=True)

    check()


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
