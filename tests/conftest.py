"""Hypothesis profiles and the GPU marker's skip logic.

Profiles (``HYPOTHESIS_PROFILE``, defined in :mod:`fuzz.plugin.profiles`): ``ci`` (the default
under ``CI``: derandomized, no database, no deadline, a fixed example budget), ``dev``
(the default elsewhere: random, a few more examples), ``nightly`` (long exploration) and
``gpu`` (an H100/H200: larger shapes, fewer examples).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from prefix_referee.fuzz.plugin.profiles import (
    default_hypothesis_profile,
    register_hypothesis_profiles,
)
from prefix_referee.verify.kernels.interpreter import use_interpreter_without_cuda

# Before anything imports triton: without CUDA, Triton kernels run under the interpreter.
use_interpreter_without_cuda()

# Each xdist worker already has a core: the tests run many small tensor ops, where a
# per-worker thread pool only oversubscribes the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# --stats-file PATH: per-target verdicts and error ratios, merged across xdist workers.
pytest_plugins = ["prefix_referee.fuzz.plugin.stats"]

register_hypothesis_profiles()
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", default_hypothesis_profile()))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests with the reason that applies on this machine.

    The marker needs an SM90+ CUDA device; tests of FA4 also skip, with their own
    reason, when flash-attn-4 is missing (``verify.gpu.fa4_unavailable_reason``).
    """
    from prefix_referee.verify.gpu import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    if reason is None:
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))
