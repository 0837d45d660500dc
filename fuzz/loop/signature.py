"""Failure signatures: which failures are the same bug, and which are new.

A run keeps exploring after a failure, so it must tell a second sighting of one bug from
a different bug: a float32 softcap imprecision found first must not hide a tile-loop bug
found later. A signature is what went wrong (``out``, ``lse``, ``nonfinite``,
``empty-rows``, ``contract``, ``unjudgeable``, ``error:<Exception>``, ``exit``, ``crash``,
``timeout``, ``mutated-input``, ``wild-write``, ``referee``), where the worst element sits
(``before-range``, ``inside-range``, ``after-range``, ``no-ranges``,
``range-past-seq-len``, ``chunk-inside-range``, ``whole-case``) and the dtype, as
``kind|where|dtype``. ``--expect-failures`` files name signatures a run accepts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from verify.case import CaseError, read_case
from verify.runner import Outcome


def signature(outcome: Outcome, dtype: str) -> str:
    """The signature of a failed (or errored) outcome on a case of ``dtype``."""
    return f"{outcome.kind or outcome.status}|{outcome.where}|{dtype}"


class ExpectationError(ValueError):
    """An --expect-failures file that cannot be read; the message is one line."""


def _from_file(path: Path) -> Iterable[tuple[str, str]]:
    """(target, signature) pairs from a reproducer or a JSON list of such pairs."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ExpectationError(f"{path}: cannot read expected failures: {exc}") from None
    if isinstance(data, dict) and "requests" in data:
        try:
            spec = read_case(path)
        except CaseError as exc:
            raise ExpectationError(f"{path}: {exc}") from None
        target, sig = spec.extra.get("target"), spec.extra.get("signature")
        if not isinstance(target, str) or not isinstance(sig, str):
            raise ExpectationError(f"{path}: a reproducer needs 'target' and 'signature' "
                                   "annotations to name an expected failure")
        yield target, sig
        return
    entries = data.get("expected") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ExpectationError(f"{path}: expected a reproducer or "
                               '{"expected": [{"target": ..., "signature": ...}]}')
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("target"), str)
                and isinstance(entry.get("signature"), str)):
            raise ExpectationError(f"{path}: each expected failure needs a 'target' and a "
                                   f"'signature', got {entry!r}")
        yield entry["target"], entry["signature"]


def expected_failures(paths: Iterable[Path]) -> set[tuple[str, str]]:
    """Every (target, signature) the files accept."""
    return {pair for path in paths for pair in _from_file(path)}
