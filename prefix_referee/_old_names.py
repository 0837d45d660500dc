"""The top-level names the packages had before they moved under ``prefix_referee``
(``verify``, ``fuzz``, ``references``, ``golden``): importing one gives the module under
its new name, so code and target names written for them (``from fuzz.testing import ...``,
``--target verify.targets.faults:...``) keep working for a release, with a
DeprecationWarning. That takes ``prefix_referee`` imported first (the pytest plugin, the
command line and the workers import it); in a checkout, the old folders import it
themselves (:func:`adopt`). A module of that name that anything else provides wins: the
old name is only taken where it would find the referee's own folder, or nothing.
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
_warned: set[str] = set()


def adopt(name: str) -> None:
    """Called at the end of each package's ``__init__``: loaded under its old name (a
    checkout's folder found on the path), it makes the old name the new module, and the
    finder then serves its modules, so no second copy of anything exists."""
    if name in OLD_NAMES:
        sys.modules[name] = importlib.import_module(f"{NAMESPACE}.{name}")


def _folder(name: str) -> Path | None:
    """The folder of the referee's package ``name`` (an old top-level name)."""
    spec = importlib.util.find_spec(f"{NAMESPACE}.{name}")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _is_ours(spec: importlib.machinery.ModuleSpec | None, folder: Path | None) -> bool:
    """Whether ``spec`` (an old top-level name, found by another finder) is the referee's
    own folder."""
    locations = spec.submodule_search_locations if spec is not None else None
    return bool(locations) and Path(next(iter(locations))).resolve() == folder


def _warn(old: str, new: str) -> None:
    """Once per old package, pointing at the import statement: ``warnings`` skips the
    import system's own frames, so past this and ``create_module`` comes the importer."""
    top = old.partition(".")[0]
    if top in _warned:
        return
    _warned.add(top)
    warnings.warn(f"'{old}' is now '{new}'", DeprecationWarning, stacklevel=3)


class _Alias(importlib.abc.Loader):
    """Loads an old name as the module of its new name (one module, two names)."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        _warn(spec.name, self.new)
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
        if rest:  # a module of an old package: ours only if that package is
            module = sys.modules.get(top)
            if module is None or module is not sys.modules.get(f"{NAMESPACE}.{top}"):
                return None
        else:
            for finder in sys.meta_path:  # anything else that would find that name
                find = None if finder is self else getattr(finder, "find_spec", None)
                found = None if find is None else find(top, None)
                if found is not None:
                    if not _is_ours(found, _folder(top)):
                        return None
                    break
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
