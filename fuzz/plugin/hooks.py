"""pytest plugin: ``--prefix-target NAME`` runs the suite's packaged tests on a kernel, in any
repository (docs/plugin.md).

Registered through the ``pytest11`` entry point ``prefix_referee``. Without
``--prefix-target`` it does nothing, so an engine's own tests and the suite's own are
collected as before. With it, the packaged test file (:data:`SUITE_FILES`, installed inside
the package) is appended to pytest's collection arguments, once, unless the command line
names it already; its ``pytest_generate_tests`` parametrizes the tests by the requested
targets (:func:`requested_targets`). Every xdist worker configures itself from the same
command line, so each appends the same absolute path and collects the same items.

The hypothesis profile (``--prefix-profile``, :mod:`fuzz.plugin.profiles`) applies to the packaged
tests only: the session's loaded profile, which the engine's own tests use, is left alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from fuzz.plugin.profiles import HYPOTHESIS_PROFILES, default_hypothesis_profile

SUITE_FILES = (Path(__file__).resolve().parent / "suite" / "test_target.py",)
# What the packaged tests' node ids are relative to: the directory holding the package.
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]

_TARGETS = pytest.StashKey[list[str]]()
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
    group.addoption("--prefix-kv-dtype", choices=("float8_e4m3fn", "float8_e5m2"),
                    default=None, help="draw the random cases with an FP8 K/V cache of this "
                                       "dtype and float32 descales (docs/contract.md)")


def _check_name(name: str) -> None:
    """A registered or ``fault:`` name must exist; a ``module:callable`` is loaded when its
    tests run, after pytest has set up sys.path (its failure to load is then a skip)."""
    from verify.targets import UnknownTargetError, get_target, target_names

    if name in target_names() or name.startswith("fault:") or ":" not in name:
        try:
            get_target(name)
        except UnknownTargetError as exc:
            raise pytest.UsageError(f"--prefix-target: {exc}") from None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    names = list(dict.fromkeys(config.getoption("prefix_targets")))
    if not names:
        return
    # Before anything imports triton: without CUDA, Triton kernels run under the interpreter.
    from verify.kernels.interpreter import use_interpreter_without_cuda

    use_interpreter_without_cuda()
    for name in names:
        _check_name(name)
    examples = config.getoption("prefix_examples")
    if examples is not None and examples < 1:
        raise pytest.UsageError(f"--prefix-examples: must be at least 1, got {examples}")
    profile = config.getoption("prefix_profile") or default_hypothesis_profile()
    chosen = HYPOTHESIS_PROFILES[profile]
    config.stash[_TARGETS] = names
    config.stash[_PROFILE] = profile
    config.stash[_SETTINGS] = chosen if examples is None else settings(chosen,
                                                                       max_examples=examples)
    here = config.invocation_params.dir
    named = {(here / arg.split("::")[0]).resolve() for arg in config.args}
    config.args.extend(str(path) for path in SUITE_FILES if path not in named)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector
                                ) -> pytest.Module | None:
    """The packaged tests get the node ids they have in a checkout
    (``fuzz/plugin/suite/test_target.py::...``) wherever the package is installed: pytest gives a
    file outside the rootdir an empty one, which JUnit reports and ``--deselect`` cannot use."""
    if module_path not in SUITE_FILES or not requested_targets(parent.config):
        return None
    nodeid = module_path.relative_to(_PACKAGE_ROOT).as_posix()
    return pytest.Module.from_parent(parent, path=module_path, nodeid=nodeid)


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
