"""Verification of prefix-attention kernels against an exact float64 reference.

Public entry points: :func:`load_case` (read, validate and materialize a JSON case),
:mod:`verify.targets` (the registry of kernels under test) and :mod:`verify.compare`
(the one tolerance policy).
"""

import os
import sys

import torch

# Without CUDA, Triton kernels can only run under the interpreter, and Triton reads
# TRITON_INTERPRET when it is first imported (torch may import it later on its own,
# e.g. for FlexAttention), so the flag is set here, before anything else can.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from verify.case import CaseError, CaseSpec, Request, parse_case, read_case
from verify.materialize import MaterializedCase, RequestView, load_case, materialize

__all__ = [
    "CaseError",
    "CaseSpec",
    "MaterializedCase",
    "Request",
    "RequestView",
    "load_case",
    "materialize",
    "parse_case",
    "read_case",
]
