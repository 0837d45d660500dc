"""Hypothesis profiles and the GPU marker's skip logic.

Profiles (``HYPOTHESIS_PROFILE``): ``ci`` (the default under ``CI``: derandomized,
no database, no deadline, a fixed example budget), ``dev`` (the default
elsewhere: random, a few more examples), ``nightly`` (long exploration) and
``gpu`` (the lent H100/H200, larger shapes, fewer examples).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from verify.kernels.interpreter import use_interpreter_without_cuda

# Before anything imports triton: without CUDA, Triton kernels run under the interpreter.
use_interpreter_without_cuda()

# Each xdist worker already has a core: the tests run many small tensor ops, where a
# per-worker thread pool only oversubscribes the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# --stats-file PATH: per-target verdicts and error ratios, merged across xdist workers.
pytest_plugins = ["fuzz.pytest_stats"]

_COMMON = {"deadline": None, "print_blob": True,
           "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("ci", derandomize=True, database=None, max_examples=25, **_COMMON)
settings.register_profile("dev", max_examples=40, **_COMMON)
settings.register_profile("nightly", max_examples=2000,
                          phases=list(Phase), **_COMMON)
settings.register_profile("gpu", derandomize=True, database=None, max_examples=60, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests with the reason that applies on this machine.

    The marker needs an SM90+ CUDA device; tests of FA4 also skip, with their own
    reason, when flash-attn-4 is missing (``verify.gpu.fa4_unavailable_reason``).
    """
    from verify.gpu import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
