"""The top-level names the packages had before they moved under ``prefix_referee``
(``verify``, ``fuzz``, ``references``, ``golden``): importing one gives the module under
its new name, with a DeprecationWarning, so code and target names written for them
(``from fuzz.testing import ...``, ``--target verify.targets.faults:...``) keep working
for a release. A package of that name that another distribution installs wins: the old
name is only taken where it would find the referee's own folder, or nothing.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

NAMESPACE = "prefix_referee"
OLD_NAMES = ("verify", "fuzz", "references", "golden")


def _folder(name: str) -> Path | None:
    """The folder of the referee's package ``name`` (an old top-level name)."""
    spec = importlib.util.find_spec(f"{NAMESPACE}.{name}")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _is_ours(module: ModuleType, folder: Path | None) -> bool:
    """Whether ``module`` (imported under an old name) is the referee's package, possibly
    imported a second time from a checkout's folder."""
    file = getattr(module, "__file__", None)
    return file is not None and folder is not None and Path(file).resolve().parent == folder


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (one module, two names)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"'{spec.name}' is now '{self.new}'", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the old name's spec on it


class OldNames(importlib.abc.MetaPathFinder):
    """Finds ``verify``, ``fuzz.testing``, ... as aliases of their ``prefix_referee`` modules."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        top, _, rest = fullname.partition(".")
        if top not in OLD_NAMES or fullname.endswith(".__main__"):
            return None  # python -m runs a __main__ from its file, which its folder finds
        folder = _folder(top)
        if rest:  # a module of an old package: ours only if that package is
            if not _is_ours(sys.modules.get(top), folder):
                return None
        else:
            found = importlib.machinery.PathFinder.find_spec(top)
            if found is not None and not (found.submodule_search_locations and Path(
                    next(iter(found.submodule_search_locations))).resolve() == folder):
                return None  # another distribution's module or package of that name
        new = f"{NAMESPACE}.{fullname}"
        found = importlib.util.find_spec(new)
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _Alias(new), is_package=found.submodule_search_locations is not None)


def install() -> None:
    """Put the finder first (once), so an old name never loads a second copy of a module."""
    if not any(isinstance(finder, OldNames) for finder in sys.meta_path):
        sys.meta_path.insert(0, OldNames())
