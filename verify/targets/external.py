"""``module:callable`` targets: a user's own kernel, without editing the suite."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import Tensor

from verify.capabilities import Capabilities
from verify.materialize import MaterializedCase
from verify.target import Target


class ExternalTarget(Target):
    """Wraps a callable ``f(case) -> (out, lse_or_None)``.

    The callable may carry a ``capabilities`` attribute (a :class:`Capabilities`) and an
    ``exact`` attribute; otherwise it is assumed to accept every case.
    """

    def __init__(self, spec: str) -> None:
        super().__init__(spec, f"external callable {spec}")
        self._spec = spec
        self._fn: Callable[[MaterializedCase], tuple[Tensor, Tensor | None]] | None = None
        self._error: str | None = None
        module_name, _, attr = spec.partition(":")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            self._error = f"cannot load {spec}: {exc}"
            return
        if not callable(fn):
            self._error = f"{spec} is not callable"
            return
        self._fn = fn
        self.capabilities = getattr(fn, "capabilities", Capabilities())
        self.exact = getattr(fn, "exact", True)

    def unavailable_reason(self) -> str | None:
        return self._error

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        if self._fn is None:
            raise RuntimeError(self._error)
        return self._fn(case)
