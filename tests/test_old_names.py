"""The packages' names before they moved under ``prefix_referee`` still import, as the same
modules (never a second copy), with a DeprecationWarning; a package of that name that
something else installs wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Old names first, as a script in a checkout would: the same modules, and a warning each.
SAME_MODULES = """
import warnings
warnings.simplefilter("error", DeprecationWarning)
try:
    import verify.runner
except DeprecationWarning as warning:
    print(warning)
warnings.simplefilter("ignore", DeprecationWarning)
from verify.runner import Status
from fuzz.testing import assert_matches_reference
import prefix_referee.fuzz.testing, prefix_referee.verify.runner
assert Status is prefix_referee.verify.runner.Status
assert assert_matches_reference is prefix_referee.fuzz.testing.assert_matches_reference
assert prefix_referee.fuzz.testing.__spec__.name == "prefix_referee.fuzz.testing"
print("same")
"""

# An old package's module first, with nothing imported before it: still one module.
MODULE_FIRST = """
from fuzz.testing import assert_matches_reference
import fuzz, prefix_referee.fuzz.testing
assert assert_matches_reference is prefix_referee.fuzz.testing.assert_matches_reference
assert fuzz is prefix_referee.fuzz
print("same")
"""

# A 'fuzz' on the path and a 'references' an import hook provides are someone else's.
OTHERS_WIN = """
import importlib.abc, importlib.util, sys

class Hook(importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name == "references":
            return importlib.util.spec_from_loader(name, self)

    def exec_module(self, module):
        module.provider = "hook"

sys.meta_path.append(Hook())
import prefix_referee, fuzz, golden, references
print(fuzz.__file__)
print(golden.__name__)
print(references.provider)
"""


def _python(code: str, cwd: Path, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                            text=True, env={"PATH": "/usr/bin:/bin", **env}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_old_names_are_the_same_modules_with_a_warning() -> None:
    said = _python(SAME_MODULES, REPO).splitlines()
    assert said == ["'verify.runner' is now 'prefix_referee.verify.runner'", "same"], said


def test_an_old_module_imported_first_is_no_second_copy() -> None:
    assert _python(MODULE_FIRST, REPO).splitlines() == ["same"]


def test_a_package_of_an_old_name_that_another_distribution_installs_wins(
        tmp_path: Path) -> None:
    others = tmp_path / "others"
    (others / "fuzz").mkdir(parents=True)
    (others / "fuzz" / "__init__.py").write_text("")
    said = _python(OTHERS_WIN, tmp_path, PYTHONPATH=str(others)).splitlines()
    assert said == [str(others / "fuzz" / "__init__.py"), "prefix_referee.golden", "hook"], said

