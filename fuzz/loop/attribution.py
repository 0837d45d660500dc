"""Which finding a failure belongs to: a sighting of a known one, or a new one.

Full triage of every failure would cost a dozen runs each, and a bug that fires on every
case would spend the run triaging. So a failure is first checked against the known
findings cheaply: taking a known finding's cause away (its trigger, or the positions
from its threshold on) must clear it. A failure that is consistent with a known finding
is a sighting of it, except that the first few and then one in every few are triaged in
full, so that a second bug whose failures always come with the first one's cause (its
trigger a superset) is still found. A failure with a new identity is shrunk and triaged
again before it becomes a finding, so that its identity is that of a small case, where a
feature that only made the bug visible on a big one has gone (docs/design.md).
"""

from __future__ import annotations

import math
from collections.abc import Generator, Sequence
from dataclasses import dataclass

from fuzz.loop.shrink import Predicate, shrink
from fuzz.loop.triage import (
    BY_NAME,
    PRECISION_RELATIVE,
    Accepts,
    Diagnosis,
    cap,
    error_ratio,
    family,
    longest,
    relative_error,
    shows,
    symptom,
    triage,
    without,
)
from fuzz.records.findings import Cause, Finding
from verify.case import CaseSpec
from verify.runner import Outcome

# Sightings of a finding triaged in full: the first few, then one in every few.
TRIAGED_FIRST = 3
TRIAGE_EVERY = 8
# Candidates a new identity's case is shrunk through before it is triaged again.
CANONICAL_CANDIDATES = 200
# A feature whose removal leaves more than this multiple of the error ratio that taking a
# known finding's cause away leaves only made that finding visible (half precision).
VISIBILITY = 2.0


@dataclass(frozen=True)
class Attribution:
    """A sighting of ``finding`` (with the first failing position a full triage found for a
    threshold), or a new finding ``diagnosis`` shown by ``spec`` with ``outcome`` (the
    failing case, shrunk for a trigger or threshold)."""

    finding: Finding | None
    diagnosis: Diagnosis | None = None
    spec: CaseSpec | None = None
    outcome: Outcome | None = None
    position: int | None = None


def removal(spec: CaseSpec, finding: Finding, accepts: Accepts) -> CaseSpec | None:
    """``spec`` with ``finding``'s cause taken away, or None where that cannot be done (the
    case lacks the cause, or the target declines the result)."""
    identity = finding.identity
    taken: CaseSpec | None = None
    if identity.cause is Cause.TRIGGER and all(BY_NAME[name].present(spec)
                                               for name in identity.features):
        taken = without(spec, identity.features, accepts)
    elif (identity.cause is Cause.THRESHOLD and finding.position is not None
          and longest(spec) > finding.position):
        taken = cap(spec, finding.position)
    return taken if taken is not None and accepts(taken) else None


def _matches(finding: Finding, what: str) -> bool:
    return finding.identity.symptom in (what, family(what))


def _consistent(spec: CaseSpec, outcome: Outcome, what: str, findings: Sequence[Finding],
                accepts: Accepts) -> Generator[list[CaseSpec], list[Outcome], list[Finding]]:
    """The known findings whose cause explains this failure, in the order they were found."""
    checks = [(f, r) for f in findings if _matches(f, what)
              for r in [removal(spec, f, accepts)] if r is not None]
    outcomes = (yield [r for _, r in checks]) if checks else []
    cleared = {id(f) for (f, _), o in zip(checks, outcomes, strict=True) if not shows(o, what)}
    found = []
    for f in findings:
        if not _matches(f, what):
            continue
        cause = f.identity.cause
        if id(f) in cleared or cause in (Cause.EVERYWHERE, Cause.UNTRIAGED) or (
                cause is Cause.PRECISION
                and relative_error(outcome, what) < PRECISION_RELATIVE):
            found.append(f)
    return found


def _sampled(finding: Finding) -> bool:
    """Whether this sighting of ``finding`` is one to triage in full."""
    seen = finding.sightings
    return seen < TRIAGED_FIRST or (seen - TRIAGED_FIRST) % TRIAGE_EVERY == TRIAGE_EVERY - 1


def _same_consistency(findings: Sequence[Finding], explained: Sequence[Finding], what: str,
                      accepts: Accepts) -> Predicate:
    """A shrink predicate: the candidate still shows the symptom and the same known
    findings explain it (so shrinking does not drift into a known bug)."""
    def still(candidate: CaseSpec) -> Generator[list[CaseSpec], list[Outcome], bool]:
        outcome = (yield [candidate])[0]
        if not shows(outcome, what):
            return False
        now = yield from _consistent(candidate, outcome, what, findings, accepts)
        return [id(f) for f in now] == [id(f) for f in explained]

    return still


def consistency_kept(finding: Finding, others: Sequence[Finding], accepts: Accepts
                     ) -> Predicate:
    """A predicate for shrinking ``finding``'s case: a candidate must still show its
    symptom and be explained by exactly the findings that explain the case now."""
    what = symptom(finding.outcome)
    everyone = [finding, *others]
    state: dict[str, list[Finding]] = {}

    def still(candidate: CaseSpec) -> Generator[list[CaseSpec], list[Outcome], bool]:
        if "before" not in state:
            state["before"] = yield from _consistent(finding.spec, finding.outcome, what,
                                                     everyone, accepts)
        return (yield from _same_consistency(everyone, state["before"], what, accepts)(
            candidate))

    return still


def attribute(spec: CaseSpec, outcome: Outcome, findings: Sequence[Finding], accepts: Accepts
              ) -> Generator[list[CaseSpec], list[Outcome], Attribution]:
    """Attribute the failure ``outcome`` of ``spec`` to a known finding or a new one."""
    what = symptom(outcome)
    explained = yield from _consistent(spec, outcome, what, findings, accepts)
    for finding in explained:
        if not _sampled(finding):
            return Attribution(finding)
    known = [f.identity for f in findings]
    diagnosis = yield from triage(spec, outcome, accepts, known)
    for finding in findings:
        if finding.identity == diagnosis.identity:
            return Attribution(finding, position=diagnosis.position)
    if diagnosis.identity.cause not in (Cause.TRIGGER, Cause.THRESHOLD):
        return Attribution(None, diagnosis, spec, outcome)
    # A new trigger or threshold: its identity is the one of a small case.
    small, _ = yield from shrink(spec, _same_consistency(findings, explained, what, accepts),
                                 accepts, math.inf, max_tried=CANONICAL_CANDIDATES)
    again = (yield [small])[0] if small is not spec else outcome
    if small is not spec:
        diagnosis = yield from triage(small, again, accepts, known)
        for finding in findings:
            if finding.identity == diagnosis.identity:
                return Attribution(finding)
    for finding in explained:
        if (yield from _only_visibility(small, again, diagnosis, finding, accepts)):
            return Attribution(finding)
    return Attribution(None, diagnosis, small, again)


def _only_visibility(spec: CaseSpec, outcome: Outcome, diagnosis: Diagnosis, finding: Finding,
                     accepts: Accepts) -> Generator[list[CaseSpec], list[Outcome], bool]:
    """Whether the new trigger's extra features only made ``finding`` visible on ``spec``.

    In half precision a wrong key among many can sink below the tolerance, so a feature
    that narrows the keys (a window, a short range) can seem to be a cause. Taken away, such
    a feature leaves part of the error; a cause leaves what taking the known finding's
    cause away leaves. In float32 the baseline's error is far below any wrong key's, and a
    feature that clears a failure is a cause.
    """
    if diagnosis.identity.cause is not Cause.TRIGGER or spec.dtype == "float32":
        return False
    taken = removal(spec, finding, accepts)
    if taken is None:
        return False
    what = symptom(outcome)
    left = error_ratio((yield [taken])[0], what)
    known = set(finding.identity.features)
    extra = [n for n in diagnosis.identity.features if n not in known]
    return left is not None and bool(extra) and all(
        diagnosis.evidence.get(n, 0.0) > VISIBILITY * left for n in extra)
