"""Kernels that attack the referee on the GPU, as ``tests.hostile_gpu:<name>`` targets.

They need CUDA and Triton (imported when a target is loaded); tests/test_isolation.py runs
them under the ``gpu`` marker and checks that the run blames them alone and that the GPU
still judges the next case.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.materialize import MaterializedCase

_GPU = Capabilities(devices=frozenset({"cuda"}))


@triton.jit
def _spin(flag, out):
    """Loops until ``flag`` is non-zero; it never is. The load is volatile, so the compiler
    cannot hoist it out of the loop and prove the loop away."""
    turns = 0
    while tl.load(flag, volatile=True) == 0:
        turns += 1
    tl.store(out, turns)


def spins_on_the_gpu(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """A kernel that never finishes on the device: the call blocks in the synchronize."""
    flag = torch.zeros(1, dtype=torch.int32, device=case.device)
    turns = torch.zeros(1, dtype=torch.int32, device=case.device)
    _spin[(1,)](flag, turns)
    torch.cuda.synchronize(case.device)
    raise AssertionError("unreachable")


spins_on_the_gpu.capabilities = _GPU


def allocates_device_memory(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """1 GiB more of device memory each step until the allocator gives up."""
    hog = []
    while True:
        hog.append(torch.empty(1 << 30, dtype=torch.uint8, device=case.device))


allocates_device_memory.capabilities = _GPU
