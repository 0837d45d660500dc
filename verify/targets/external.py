"""``module:callable`` targets: an engine's own kernel, without editing the suite.

The callable takes a :class:`verify.materialize.MaterializedCase` and returns ``(out, lse)``
(``lse`` may be None). What it accepts is data attached to it with :func:`prefix_kernel`
(docs/adapting.md), so the fuzzer draws only cases the kernel promises to take::

    @prefix_kernel(Capabilities(needs_paged=True, page_size_multiple=16,
                                layout=frozenset({"ranges_within_sequence"})))
    def my_kernel(case):
        ...
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

from prefix_referee.references import LogWeight
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.mask import overlap_weight
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.target import Target

Kernel = TypeVar("Kernel", bound=Callable[..., tuple[Tensor, Tensor | None]])


# Approximations a kernel may claim instead of exact attention.
APPROXIMATIONS = ("two_call",)


def prefix_kernel(capabilities: Capabilities | None = None, *,
                  approximation: str | None = None,
                  compile_key: Callable[[CaseSpec], tuple | None] | None = None,
                  model: str | None = None) -> Callable[[Kernel], Kernel]:
    """Declare what a kernel accepts (``capabilities``), the approximation it claims if it
    is not exact attention (``"two_call"``: the two-call merge, the overlap keys counted
    twice; its distance from exact attention is reported too), and for a kernel that
    compiles per configuration what it compiles a kernel for.

    ``model`` is the deprecated name of ``approximation``."""
    if model is not None:
        warnings.warn("prefix_kernel(model=...) is deprecated; use approximation=...",
                      DeprecationWarning, stacklevel=2)
        if approximation is not None and approximation != model:
            raise ValueError(f"approximation {approximation!r} and its deprecated alias "
                             f"model {model!r} disagree; give approximation only")
        approximation = model
    if approximation is not None and approximation not in APPROXIMATIONS:
        raise ValueError(f"approximation must be one of {', '.join(APPROXIMATIONS)} or None, "
                         f"got {approximation!r}")

    def attach(fn: Kernel) -> Kernel:
        fn.capabilities = capabilities or Capabilities()  # type: ignore[attr-defined]
        fn.approximation = approximation  # type: ignore[attr-defined]
        fn.compile_key = compile_key  # type: ignore[attr-defined]
        return fn

    return attach


class ExternalTarget(Target):
    """Wraps a callable ``f(case) -> (out, lse_or_None)`` named ``module:callable``.

    Without :func:`prefix_kernel` it is assumed to accept every case and claim exactness.
    Its approximation is ``fn.approximation`` (or, from before that name, ``fn.model``).
    """

    def __init__(self, spec: str, fn: Kernel | None = None) -> None:
        """``spec`` names the callable (``module:callable``); ``fn``, if given, is it (a
        kernel already in hand: then ``spec`` is only its name in reports)."""
        super().__init__(spec, f"external callable {spec}")
        self._fn: Callable[[MaterializedCase], tuple[Tensor, Tensor | None]] | None = None
        self._compile_key: Callable[[CaseSpec], tuple | None] | None = None
        self._error: str | None = None
        if fn is None:
            module_name, _, attr = spec.partition(":")
            try:
                fn = getattr(importlib.import_module(module_name), attr)
            except Exception as exc:  # a broken module is the target's problem, in one line
                self._error = f"cannot load {spec}: {type(exc).__name__}: {exc}"
                return
        if not callable(fn):
            self._error = f"{spec} is not callable"
            return
        self._fn = fn
        self.capabilities = getattr(fn, "capabilities", Capabilities())
        self._approximation = getattr(fn, "approximation", None)
        if self._approximation is None:
            self._approximation = getattr(fn, "model", None)
        self.exact = self._approximation is None
        self._compile_key = getattr(fn, "compile_key", None)

    def unavailable_reason(self) -> str | None:
        return self._error

    def compile_key(self, spec: CaseSpec) -> tuple | None:
        return self._compile_key(spec) if self._compile_key is not None else None

    @property
    def compiles(self) -> bool:
        return self._compile_key is not None

    def approximation_bias(self, case: MaterializedCase) -> LogWeight | None:
        return overlap_weight(case) if self._approximation == "two_call" else None

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        if self._fn is None:
            raise RuntimeError(self._error)
        return self._fn(case)
