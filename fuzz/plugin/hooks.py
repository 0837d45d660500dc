"""pytest plugin: ``--prefix-target NAME`` runs the suite's packaged tests on a kernel, in any
repository (docs/plugin.md).

Registered through the ``pytest11`` entry point ``prefix_referee``. Without
``--prefix-target`` it does nothing, so an engine's own tests and the suite's own are
collected as before. With it, the packaged test file (:data:`SUITE_FILES`, installed inside
the package) is appended to pytest's collection arguments, once, unless the command line
names it already; its ``pytest_generate_tests`` parametrizes the tests by the requested
targets (:func:`requested_targets`). Every xdist worker configures itself from the same
command line, so each appends the same absolute path and collects the same items.

The plugin fails closed: a target that does not load or cannot run here is a usage error,
and a target that judges fewer than ``--prefix-min-cases`` random cases fails, so a gate
that tested nothing never passes. ``--prefix-expect`` names expected findings
(docs/plugin.md): accepted while they reproduce, a failing test once they do not.

The hypothesis profile (``--prefix-profile``, :mod:`fuzz.plugin.profiles`) applies to the
packaged tests only: the session's loaded profile, which the engine's own tests use, is
left alone. The suite is imported only once ``--prefix-target`` is given.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from prefix_referee.fuzz.plugin.profiles import HYPOTHESIS_PROFILES, default_hypothesis_profile

if TYPE_CHECKING:
    from prefix_referee.fuzz.records.findings import ExpectedFinding

# A target judging fewer random cases fails: the plugin's runs are short, so fewer than the
# fuzzer's default (prefix-fuzz --min-cases).
DEFAULT_MIN_CASES = 10

SUITE_FILES = (Path(__file__).resolve().parent / "suite" / "test_target.py",)
SUITE_MODULE = "prefix_referee.fuzz.plugin.suite.test_target"
# What the packaged tests' node ids are relative to: the directory holding the package.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_TARGETS = pytest.StashKey[list[str]]()
_EXPECTED = pytest.StashKey[list["ExpectedFinding"]]()
_SETTINGS = pytest.StashKey[settings]()
_PROFILE = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("prefix-referee", "prefix-attention referee (docs/plugin.md)")
    group.addoption("--prefix-target", action="append", default=[], metavar="NAME",
                    dest="prefix_targets",
                    help="run the referee's property tests and golden replay on this kernel "
                         "(repeatable): a registered name such as sdpa, fault:<name>, or "
                         "module:callable")
    group.addoption("--prefix-profile", choices=sorted(HYPOTHESIS_PROFILES), default=None,
                    help="the hypothesis profile of those tests (default: ci under CI, "
                         "else dev)")
    group.addoption("--prefix-examples", type=int, default=None, metavar="N",
                    help="random cases per target, overriding the profile's budget (the "
                         "adversarial layouts always run too)")
    group.addoption("--prefix-min-cases", type=int, default=DEFAULT_MIN_CASES, metavar="N",
                    help="a target that judges fewer cases (declining the others) fails "
                         "(default: %(default)s)")
    group.addoption("--prefix-expect", action="append", default=[], type=Path, metavar="FILE",
                    dest="prefix_expect",
                    help="expected findings (the findings/<target>.json prefix-fuzz "
                         "writes): accepted while they reproduce, stale when they no longer "
                         "do; repeatable")
    group.addoption("--prefix-kv-dtype", choices=("float8_e4m3fn", "float8_e5m2"),
                    default=None, help="draw the random cases with an FP8 K/V cache of this "
                                       "dtype and float32 descales (docs/contract.md)")


def _check_target(name: str) -> None:
    """The target must load and run here: a gate that tested nothing must not pass. (pytest
    has put ``pythonpath`` and, under ``python -m pytest``, the working directory on
    sys.path by now, so a ``module:callable`` imports as its tests would.)"""
    from prefix_referee.fuzz.testing import default_device
    from prefix_referee.verify.targets import UnknownTargetError, get_target

    try:
        target = get_target(name)
    except UnknownTargetError as exc:
        raise pytest.UsageError(f"--prefix-target: {exc}") from None
    reason = target.unavailable_reason()
    device = default_device(target)
    if reason is None and device not in target.capabilities.devices:
        reason = f"it runs on {', '.join(sorted(target.capabilities.devices))}, not on {device}"
    if reason is not None:
        raise pytest.UsageError(f"--prefix-target {name} cannot run here: {reason}")


def _expected(config: pytest.Config, names: list[str]) -> list[ExpectedFinding]:
    from prefix_referee.fuzz.records.findings import ExpectationError, expected_findings

    try:
        found = expected_findings(config.getoption("prefix_expect"))
    except ExpectationError as exc:
        raise pytest.UsageError(f"--prefix-expect: {exc}") from None
    strangers = sorted({e.target for e in found} - set(names))
    if strangers:
        raise pytest.UsageError(f"--prefix-expect: findings of {strangers[0]}, which is not a "
                                "--prefix-target")
    return found


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    names = list(dict.fromkeys(config.getoption("prefix_targets")))
    if not names:
        return
    # Before anything imports triton: without CUDA, Triton kernels run under the interpreter.
    from prefix_referee.verify.kernels.interpreter import use_interpreter_without_cuda

    use_interpreter_without_cuda()
    for name in names:
        _check_target(name)
    examples = config.getoption("prefix_examples")
    for option, value in (("--prefix-examples", examples),
                          ("--prefix-min-cases", config.getoption("prefix_min_cases"))):
        if value is not None and value < 1:
            raise pytest.UsageError(f"{option}: must be at least 1, got {value}")
    config.stash[_EXPECTED] = _expected(config, names)
    profile = config.getoption("prefix_profile") or default_hypothesis_profile()
    chosen = HYPOTHESIS_PROFILES[profile]
    config.stash[_TARGETS] = names
    config.stash[_PROFILE] = profile
    config.stash[_SETTINGS] = chosen if examples is None else settings(chosen,
                                                                       max_examples=examples)
    here = config.invocation_params.dir
    named = {(here / arg.split("::")[0]).resolve() for arg in config.args}
    config.args.extend(str(path) for path in SUITE_FILES if path not in named)


class _SuiteModule(pytest.Module):
    """The packaged tests, imported by their package's name: from a checkout, pytest would
    import the file under its folder's old top-level name (``fuzz.plugin...``)."""

    def _getobj(self) -> ModuleType:
        return importlib.import_module(SUITE_MODULE)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector
                                ) -> pytest.Module | None:
    """The packaged tests get the node ids they have in a checkout
    (``fuzz/plugin/suite/test_target.py::...``) wherever the package is installed: pytest gives a
    file outside the rootdir an empty one, which JUnit reports and ``--deselect`` cannot use."""
    if module_path not in SUITE_FILES or not requested_targets(parent.config):
        return None
    nodeid = module_path.relative_to(_PACKAGE_ROOT).as_posix()
    return _SuiteModule.from_parent(parent, path=module_path, nodeid=nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without expected findings there is no ``test_expected_finding`` to run (not even the
    skipped item of an empty parametrization)."""
    if not requested_targets(config) or config.stash.get(_EXPECTED, []):
        return
    unused = [i for i in items if getattr(i, "originalname", "") == "test_expected_finding"]
    if unused:
        config.hook.pytest_deselected(items=unused)
        items[:] = [i for i in items if i not in unused]


def pytest_report_header(config: pytest.Config) -> str | None:
    if not requested_targets(config):
        return None
    return (f"prefix-referee: targets {', '.join(requested_targets(config))}; "
            f"hypothesis profile {config.stash[_PROFILE]}, "
            f"{config.stash[_SETTINGS].max_examples} random cases per target")


def requested_targets(config: pytest.Config) -> list[str]:
    """The ``--prefix-target`` names, in order, without repeats (empty: the plugin is off)."""
    return config.stash.get(_TARGETS, [])


def hypothesis_settings(config: pytest.Config) -> settings:
    """The settings the packaged property tests run with."""
    return config.stash[_SETTINGS]


def expected_for(config: pytest.Config, target: str) -> list[ExpectedFinding]:
    """The expected findings of ``target`` (``--prefix-expect``)."""
    return [e for e in config.stash.get(_EXPECTED, []) if e.target == target]


def min_cases(config: pytest.Config) -> int:
    return config.getoption("prefix_min_cases")
