"""A kernel that "compiles" per configuration, as FA4 and Triton do: its first call of each
compile key takes ``COMPILE_SECONDS`` longer. tests/test_stream.py fuzzes it to show the
stream keeps compiling a small share of the time."""

from __future__ import annotations

import time

from torch import Tensor

from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.targets import get_target, prefix_kernel

COMPILE_SECONDS = 0.3
_exact = get_target("reference")
_compiled: set[tuple] = set()


def compile_key(spec: CaseSpec) -> tuple:
    return (spec.dtype, spec.head_dim, spec.value_dim, spec.num_heads // spec.num_kv_heads,
            spec.page_size is None, spec.softcap)


@prefix_kernel(compile_key=compile_key)
def kernel(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    key = compile_key(case.spec)
    if key not in _compiled:
        time.sleep(COMPILE_SECONDS)
        _compiled.add(key)
    return _exact.run(case)
