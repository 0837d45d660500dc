"""What a target is: a kernel under test, its declared capabilities, its availability."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from prefix_referee.references import LogWeight
from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.materialize import MaterializedCase


@dataclass
class Target:
    """A kernel under test. Subclasses override :meth:`run` (and maybe the others)."""

    name: str
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    exact: bool = True  # False: it claims the approximation given by approximation_bias

    def unavailable_reason(self) -> str | None:
        """Why this target cannot run on this machine at all (missing package, GPU), or None."""
        return None

    def unsupported_reason(self, spec: CaseSpec, device: str) -> str | None:
        return self.capabilities.unsupported_reason(spec, device)

    def compile_key(self, spec: CaseSpec) -> tuple | None:
        """What this target compiles a kernel for (cases with equal keys share one), or None
        for a target that compiles nothing.

        The fuzzer keeps a configuration for many cases so that a compiling target pays its
        compile once per configuration, and the report counts compiles and their time.
        """
        return None

    @property
    def compiles(self) -> bool:
        """Whether this target compiles kernels per configuration (it declares a compile
        key): the fuzzer then keeps each configuration for many cases, and draws a fresh
        one for every pack otherwise."""
        return type(self).compile_key is not Target.compile_key

    def approximation_bias(self, case: MaterializedCase) -> LogWeight | None:
        """The log-weight of the approximation this target claims to compute, added to the
        scores of the exact mask (None: exact attention)."""
        return None

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        """``out`` (total_q, H, Dv) in the case dtype, ``lse`` (H, total_q) float32 or None."""
        raise NotImplementedError
