"""The gate for the suite as a library: the wheel built from this checkout, installed alone,
works from an empty directory. ``python -m prefix_referee.fuzz golden`` passes on the golden
cases it ships, and pytest, through the plugin's entry point, passes a user's correct kernel
(under xdist, with a JUnit report) and fails one that ignores the image ranges.

torch, hypothesis, pytest and xdist come from the running environment; only the package
comes from the wheel, and each subprocess checks that it imports that copy, not this
checkout (nor an editable install of one).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from shutil import copytree

import pytest

REPO = Path(__file__).resolve().parents[1]
# Top-level entries of a checkout that are not sources (caches, environments, outputs).
_OUTPUTS = {"build", "dist", "fuzz-out", "reports"}
# pip, the build and the inner pytest runs (torch imports included) stay well under this.
TIMEOUT = 300

USER_KERNELS = '''"""A user's kernels, in a directory that knows nothing of the suite's checkout."""

from prefix_referee.verify import mask
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.targets import get_target

REFERENCE = get_target("reference")


def correct(case):
    """Exact attention: the suite's reference, wrapped as a user's kernel."""
    return REFERENCE.run(case)


def causal_only(case):
    """Exact attention with every image range dropped: plain causal attention."""
    return REFERENCE.run(materialize(mask.causal_only(case.spec), case.device))
'''

# Prints where the package's modules and the plugin's entry point come from.
WHERE_FROM = '''from importlib.metadata import entry_points
import prefix_referee as ns
import prefix_referee.fuzz.plugin.hooks as hooks
from prefix_referee import fuzz, golden, references, verify
for module in (ns, fuzz, hooks, golden, references, verify):
    print(module.__file__)
(plugin,) = entry_points(group="pytest11", name="prefix_referee")
print(plugin.dist.locate_file(""))
'''


def _sources(directory: str, names: list[str]) -> set[str]:
    """What ``copytree`` leaves out: caches and build outputs, and at the top level hidden
    entries (.git, environments, caches) and outputs, so a stale build/ cannot leak in."""
    left_out = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
    if Path(directory) == REPO:
        left_out |= {n for n in names if n.startswith(".") or n in _OUTPUTS}
    return left_out


def _build_isolation() -> list[str]:
    """No build isolation (offline) when the environment has the build backend the project
    asks for; else pip fetches it from the index."""
    try:
        ready = int(version("setuptools").split(".")[0]) >= 77
    except PackageNotFoundError:
        ready = False
    return ["--no-build-isolation"] if ready else []


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of this checkout, installed alone into a fresh directory."""
    work = tmp_path_factory.mktemp("wheel")
    copytree(REPO, work / "source", ignore=_sources)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check", "-q")
    built = _run(*pip, "wheel", "--no-deps", *_build_isolation(), "-w", str(work / "dist"),
                 str(work / "source"), cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("*.whl")
    installed = _run(*pip, "install", "--no-deps", "--target", str(work / "site"), str(wheel),
                     cwd=work)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return work / "site"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty directory but for the user's kernel module."""
    directory = tmp_path_factory.mktemp("user")
    (directory / "mykernel.py").write_text(USER_KERNELS)
    return directory


@pytest.fixture(scope="module")
def env(site: Path) -> dict[str, str]:
    """Only the installed wheel on PYTHONPATH (it precedes site-packages, where an editable
    install's finder may sit); no pytest settings of the outer run; one torch thread per
    process, as the inner runs share the cores with this one."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return {**inherited, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}


def test_the_subprocesses_import_the_wheel(site: Path, user_dir: Path,
                                           env: dict[str, str]) -> None:
    where = _run(sys.executable, "-c", WHERE_FROM, cwd=user_dir, env=env)
    assert where.returncode == 0, where.stdout + where.stderr
    for path in where.stdout.splitlines():
        assert Path(path).resolve().is_relative_to(site.resolve()), where.stdout


def _packages(root: Path) -> set[str]:
    """The folders under ``root`` that are Python packages, as paths relative to it."""
    return {p.parent.relative_to(root).as_posix() for p in root.rglob("__init__.py")}


def test_the_wheel_installs_one_namespace_with_every_package(site: Path) -> None:
    """Installed, a top-level ``verify``, ``fuzz``, ``golden`` or ``examples`` would shadow
    another distribution's (PyPI has each): everything lives under ``prefix_referee``, and
    ``examples`` is run from a checkout. Every package of the checkout is in the wheel."""
    top = {p.name for p in site.iterdir() if (p / "__init__.py").is_file()}
    assert top == {"prefix_referee"}, sorted(top)
    checkout = {p for folder in ("references", "verify", "fuzz", "golden")
                for p in _packages(REPO) if p.split("/")[0] == folder}
    assert _packages(site / "prefix_referee") == checkout | {"."}


def test_the_wheel_ships_the_golden_cases(site: Path) -> None:
    def shipped(root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.json"))

    assert shipped(site / "prefix_referee" / "golden") == shipped(REPO / "golden")


def test_fuzz_golden_and_version_run_from_the_wheel(user_dir: Path, env: dict[str, str]
                                                    ) -> None:
    # The files ship with the wheel; one target replays them all (tests/test_golden.py does
    # every target).
    golden = _run(sys.executable, "-m", "prefix_referee.fuzz", "golden", "--target", "sdpa",
                  cwd=user_dir, env=env)
    assert golden.returncode == 0, golden.stdout + golden.stderr
    assert "0 mismatches" in golden.stdout
    shown = _run(sys.executable, "-m", "prefix_referee.fuzz", "--version", cwd=user_dir,
                 env=env)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert shown.stdout.startswith("prefix-attention-referee ")


def _pytest(user_dir: Path, env: dict[str, str], target: str, *options: str
            ) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--prefix-target",
                target, "--prefix-profile", "ci", "--prefix-examples", "3",
                "--prefix-min-cases", "3", *options, cwd=user_dir, env=env)


def test_the_plugin_passes_a_correct_kernel_under_xdist_with_junit(
        site: Path, user_dir: Path, env: dict[str, str]) -> None:
    report = user_dir / "junit-correct.xml"
    result = _pytest(user_dir, env, "mykernel:correct", "-n", "2", f"--junitxml={report}")
    assert result.returncode == 0, result.stdout + result.stderr
    suite = ET.parse(report).getroot().find("testsuite")
    counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
    golden = list((site / "prefix_referee" / "golden").glob("*.json"))
    # A kernel that does not declare an FP8 cache skips the golden cases that have one.
    fp8 = sum(json.loads(path.read_text()).get("kv_dtype") is not None for path in golden)
    assert fp8 and counts == {"tests": 1 + len(golden), "failures": 0, "errors": 0,
                              "skipped": fp8}, counts
    assert {case.get("classname") for case in suite.iter("testcase")} == {
        "fuzz.plugin.suite.test_target"}


def test_the_plugin_fails_a_causal_only_kernel(user_dir: Path, env: dict[str, str]) -> None:
    result = _pytest(user_dir, env, "mykernel:causal_only", "-k",
                     "test_matches_reference or fault-merged_image_groups")
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr
    for node in ("test_matches_reference[mykernel:causal_only]",
                 "test_golden[mykernel:causal_only-fault-merged_image_groups]"):
        assert f"FAILED fuzz/plugin/suite/test_target.py::{node}" in result.stdout, result.stdout
    assert "inside range" in result.stdout, result.stdout
