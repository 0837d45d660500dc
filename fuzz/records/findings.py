"""Findings: one cause, one finding, and the files that record them as expected.

A finding's identity is its symptom plus its cause (:mod:`fuzz.loop.triage` finds both):
``values: image + cached_context`` (a trigger of features), ``lse: everywhere``,
``out: precision``, ``values: threshold``. An expected-findings file names findings by
identity, each with the case that reproduces it, so a CI gate can accept a known bug
without accepting anything that merely looks like it (docs/design.md, docs/plugin.md). A
run writes one such file per target (``findings/<target>.json``): accepting its findings
is copying it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefix_referee.fuzz.records.journal import write_atomically
from prefix_referee.verify.case import CaseError, CaseSpec, parse_case
from prefix_referee.verify.runner import Outcome

FORMAT = 1


class Cause(str, enum.Enum):
    """What a failure needs: a trigger of features, precision, a position threshold,
    nothing one can take away (everywhere), or not triaged (a timeout)."""

    TRIGGER = "trigger"
    PRECISION = "precision"
    THRESHOLD = "threshold"
    EVERYWHERE = "everywhere"
    UNTRIAGED = "untriaged"


@dataclass(frozen=True)
class Identity:
    """What makes two failures one finding: equal symptom and cause."""

    symptom: str  # "values" for a trigger or threshold of out or lse (a mask moves both)
    cause: Cause
    features: tuple[str, ...] = ()  # the trigger, for Cause.TRIGGER

    def __str__(self) -> str:
        if self.cause is Cause.TRIGGER:
            return f"{self.symptom}: {' + '.join(self.features)}"
        return f"{self.symptom}: {self.cause.value}"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"symptom": self.symptom, "cause": self.cause.value}
        if self.cause is Cause.TRIGGER:
            data["features"] = list(self.features)
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> Identity:
        """Parse ``data``; :class:`ExpectationError` names ``where`` if it is malformed."""
        if not isinstance(data, Mapping) or not isinstance(data.get("symptom"), str):
            raise ExpectationError(f"{where}: a finding needs an identity with a 'symptom'")
        try:
            cause = Cause(data.get("cause"))
        except ValueError:
            raise ExpectationError(f"{where}: cause must be one of "
                                   f"{', '.join(c.value for c in Cause)}, got "
                                   f"{data.get('cause')!r}") from None
        features = data.get("features", [])
        if not (isinstance(features, list) and all(isinstance(f, str) for f in features)):
            raise ExpectationError(f"{where}: features must be a list of names")
        if cause is Cause.TRIGGER and not features:
            raise ExpectationError(f"{where}: a trigger needs its features")
        return cls(data["symptom"], cause, tuple(features) if cause is Cause.TRIGGER else ())


@dataclass
class Finding:
    """One cause found in a target: its identity, the cause in words, the case showing it."""

    identity: Identity
    words: str
    spec: CaseSpec
    outcome: Outcome
    position: int | None = None  # a threshold's first failing position in ``spec``
    expected: bool = False
    sightings: int = 1
    path: Path | None = None
    shrunk: bool = False
    shrink_cases: int = 0
    fails_alone: bool = True  # False: it fails only inside a batch of several cases
    found_after: int | None = None  # cases the run had judged when it was found


class ExpectationError(ValueError):
    """An expected-findings file that cannot be used; the message is one line."""


@dataclass(frozen=True)
class ExpectedFinding:
    """A finding a file accepts: its target, identity, the case that reproduces it."""

    target: str
    identity: Identity
    spec: CaseSpec
    path: Path


def finding_json(identity: Identity, words: str, spec: CaseSpec) -> dict[str, Any]:
    """One entry of an expected-findings file."""
    return {"finding": str(identity), "identity": identity.to_json(), "words": words,
            "case": spec.to_dict()}


def write_findings(path: Path, target: str, entries: Iterable[dict[str, Any]]) -> None:
    """An expected-findings file for ``target`` (pass it to ``--expect`` to accept them)."""
    data = {"format": FORMAT, "target": target, "findings": list(entries)}
    write_atomically(path, json.dumps(data, indent=1) + "\n")


def _entry(target: str, entry: Any, where: str, path: Path) -> ExpectedFinding:
    if not isinstance(entry, Mapping):
        raise ExpectationError(f"{where}: must be an object with 'identity' and 'case'")
    identity = Identity.from_json(entry.get("identity"), where)
    try:
        spec = parse_case(entry.get("case"))
    except CaseError as exc:
        raise ExpectationError(f"{where}.case: {exc}") from None
    return ExpectedFinding(target, identity, spec, path)


def _from_file(path: Path) -> list[ExpectedFinding]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ExpectationError(f"{path}: cannot read expected findings: {reason}") from None
    if isinstance(data, Mapping) and "requests" in data:  # a reproducer
        target, identity = data.get("target"), data.get("finding")
        if not isinstance(target, str) or identity is None:
            raise ExpectationError(f"{path}: a reproducer names an expected finding only with "
                                   "its 'target' and 'finding' annotations (written by "
                                   "prefix-fuzz)")
        try:
            spec = parse_case(data)
        except CaseError as exc:
            raise ExpectationError(f"{path}: {exc}") from None
        return [ExpectedFinding(target, Identity.from_json(identity, f"{path}: finding"), spec,
                                path)]
    if isinstance(data, Mapping) and "expected" in data:
        raise ExpectationError(f"{path}: expected failures by signature are no longer read: "
                               "findings are named by cause; accept the findings/<target>.json "
                               "file a run writes")
    if not (isinstance(data, Mapping) and isinstance(data.get("target"), str)
            and isinstance(data.get("findings"), list)):
        raise ExpectationError(f"{path}: expected {{\"target\": ..., \"findings\": [...]}} "
                               "(the findings/<target>.json a run writes) or a reproducer")
    return [_entry(data["target"], entry, f"{path}: findings[{i}]", path)
            for i, entry in enumerate(data["findings"])]


def expected_findings(paths: Iterable[Path]) -> list[ExpectedFinding]:
    """Every finding the files accept."""
    return [finding for path in paths for finding in _from_file(path)]
