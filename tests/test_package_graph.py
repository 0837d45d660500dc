"""The packages import one way, in the order data flows: references <- verify <- fuzz.

Every import counts, also the ones inside functions (a lazy import is still a
dependency). The graph is checked between packages (``verify.targets`` and
``verify.kernels`` count as packages of their own) and between modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("references", "verify", "fuzz", "golden")
NAMESPACE = "prefix_referee"
GROUND_TRUTH = f"{NAMESPACE}.references"


def _module_name(path: Path) -> str:
    """The installed name: each top-level folder is a package of the namespace."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join((NAMESPACE, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The suite's own modules that ``path`` imports (anywhere in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def _package(module: str, modules: dict[str, Path]) -> str:
    """The innermost package holding ``module`` (a package is its own package)."""
    if modules[module].name == "__init__.py":
        return module
    return module.rpartition(".")[0]


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph(level: str) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        source = module if level == "module" else _package(module, modules)
        for imported in _imports(path, modules):
            target = imported if level == "module" else _package(imported, modules)
            # A package's __init__ re-exporting its own modules is not a cycle between packages.
            if target != source and not (level == "package" and target.startswith(source + ".")
                                         and modules[module].name == "__init__.py"):
                graph.setdefault(source, set()).add(target)
    return graph


def test_packages_import_without_cycles() -> None:
    assert _cycle(_graph("package")) is None, " -> ".join(_cycle(_graph("package")))


def test_modules_import_without_cycles() -> None:
    assert _cycle(_graph("module")) is None, " -> ".join(_cycle(_graph("module")))


def test_references_import_nothing_of_the_suite() -> None:
    """The ground truth stands alone: it can be audited without the code it judges."""
    modules = _modules()
    ground_truth = {m: p for m, p in modules.items() if m.startswith(GROUND_TRUTH)}
    assert {GROUND_TRUTH, f"{GROUND_TRUTH}.reference", f"{GROUND_TRUTH}.mask"} <= set(ground_truth)
    for module, path in ground_truth.items():
        outside = {m for m in _imports(path, modules) if not m.startswith(GROUND_TRUTH)}
        assert not outside, f"{module} imports {sorted(outside)}"


def test_the_graph_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_importing_the_suite_leaves_triton_alone() -> None:
    """Triton reads TRITON_INTERPRET once, at import: the entry points set it first, so
    importing the CLI, the registry or the fuzz loop must not import Triton."""
    code = ("import sys, prefix_referee.fuzz.cli, prefix_referee.fuzz.loop.campaign, "
            "prefix_referee.verify.targets, prefix_referee.verify.runner; "
            "print('triton' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"
