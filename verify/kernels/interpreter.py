"""Running Triton kernels on a machine without a GPU: Triton's interpreter.

Triton reads ``TRITON_INTERPRET`` once, when it is first imported (and torch imports it
on its own, for FlexAttention say), so the entry points (the CLI, the pytest plugin,
the test suite) call :func:`use_interpreter_without_cuda` before anything else can;
importing the suite's packages changes nothing in the environment.
"""

from __future__ import annotations

import os
import sys

import torch


def use_interpreter_without_cuda() -> bool:
    """Set ``TRITON_INTERPRET=1`` on a machine without CUDA; whether the interpreter is on.

    Does nothing where CUDA is available, or once Triton is imported (too late to matter).
    """
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    return interpreter_enabled()


def interpreter_enabled() -> bool:
    """Whether Triton kernels run under the interpreter in this process."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def interpreter_patches() -> list[str]:
    """What this process changed in Triton's interpreter (for reports)."""
    return []
