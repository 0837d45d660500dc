"""The packages' names before they moved under ``prefix_referee`` still import, as the same
modules (never a second copy), with a DeprecationWarning; a package of that name that
something else installs wins."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Old names first, as a script in a checkout would (modules that need no torch: fast).
OLD_FIRST = """
import warnings
warnings.simplefilter("error", DeprecationWarning)
try:
    import fuzz.records.journal
except DeprecationWarning as warning:
    print(warning)
warnings.simplefilter("ignore", DeprecationWarning)
from fuzz.records.journal import RunDirectory
import fuzz, golden, prefix_referee.fuzz.records.journal as journal, prefix_referee.golden
assert RunDirectory is journal.RunDirectory
assert fuzz is prefix_referee.fuzz and golden is prefix_referee.golden
assert journal.__spec__.name == "prefix_referee.fuzz.records.journal"
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
    said = _python(OLD_FIRST, REPO).splitlines()
    assert said == ["'fuzz.records' is now 'prefix_referee.fuzz.records'", "same"], said


def test_a_package_of_an_old_name_that_another_distribution_installs_wins(
        tmp_path: Path) -> None:
    others = tmp_path / "others"
    (others / "fuzz").mkdir(parents=True)
    (others / "fuzz" / "__init__.py").write_text("")
    said = _python(OTHERS_WIN, tmp_path, PYTHONPATH=str(others)).splitlines()
    assert said == [str(others / "fuzz" / "__init__.py"), "prefix_referee.golden", "hook"], said

