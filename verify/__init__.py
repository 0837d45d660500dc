"""Verification of prefix-attention kernels against an exact float64 reference.

Public entry points: :func:`load_case` (read, validate and materialize a JSON case),
:mod:`verify.targets` (the registry of kernels under test) and :mod:`verify.compare`
(the one tolerance policy).
"""

from prefix_referee._old_names import adopt
from prefix_referee.verify.case import CaseError, CaseSpec, Request, parse_case, read_case
from prefix_referee.verify.materialize import MaterializedCase, RequestView, load_case, materialize

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

adopt(__name__)  # loaded as 'verify' from a checkout: be prefix_referee.verify
