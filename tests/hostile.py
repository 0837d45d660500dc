"""Kernels that attack the referee, as ``tests.hostile:<name>`` targets.

Each does one thing a broken or hostile kernel does; tests/test_isolation.py checks that
the run survives it, blames it alone and says what happened.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

from torch import Tensor

from verify.materialize import MaterializedCase
from verify.targets import get_target

_exact = get_target("reference")


def correct(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    return _exact.run(case)


def writes_into_k(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    result = _exact.run(case)
    case.k.mul_(2)
    return result


def writes_into_k_first(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Scribbles before computing: it passes against its own changed inputs."""
    case.k.mul_(2)
    return _exact.run(case)


def calls_sys_exit(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    sys.exit(0)


def calls_os_exit(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    os._exit(0)


def segfaults(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    ctypes.string_at(0)
    raise AssertionError("unreachable")


def hangs(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    time.sleep(3600)
    raise AssertionError("unreachable")


def returns_numpy(case: MaterializedCase) -> tuple[object, Tensor]:
    out, lse = _exact.run(case)
    return out.float().numpy(), lse


def returns_wrong_shape(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    out, lse = _exact.run(case)
    return out[:, :1], lse


def adds_one(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    out, lse = _exact.run(case)
    return out + 1, lse


def prints(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    print("kernel says hello", flush=True)
    return _exact.run(case)


def raises(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def slow(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    time.sleep(0.5)
    return _exact.run(case)

