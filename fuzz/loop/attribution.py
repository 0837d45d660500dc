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

from prefix_referee.fuzz.loop.shrink import Predicate, shrink
from prefix_referee.fuzz.loop.triage import (
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
from prefix_referee.fuzz.records.findings import Cause, Finding
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.runner import Outcome

# Sightings of a finding triaged in full: the first few, then one in every few.
TRIAGED_FIRST = 3
TRIAGE_EVERY = 8
# Features a second bug's trigger may add to a known one's, checked by taking them away:
# a failure a known finding explains still fails without them. Only those whose removal
# keeps every key a failing query sees and every value (a window, softcap, scale or other
# KV heads taken away dilutes or reshuffles the error and proves nothing). What is left
# must keep this share of the error ratio (more query rows widen the allowance a little).
INDEPENDENT = ("cached_context", "paging", "nan_poison", "page_table_slack",
               "zero_range_padding")
SUFFICIENT_KEEPS = 0.25
# Candidates a new identity's case is shrunk through before it is triaged again.
CANONICAL_CANDIDATES = 80
# A feature whose removal leaves more than this multiple of the error ratio that taking a
# known finding's cause away leaves only made that finding visible (half precision).
VISIBILITY = 2.0
# Features whose removal only adds visible keys (the window, and the clamp that cuts ranges
# to it): a key a known bug hides is also visible causally unless one of them hides that
# path, so a known trigger plus these alone is the known bug, made visible.
NARROWING = frozenset({"window", "clamp"})


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


def reduced(spec: CaseSpec, finding: Finding, accepts: Accepts) -> CaseSpec:
    """``spec`` with every feature outside ``finding``'s trigger that could join a trigger of
    its own taken away (the images' shapes and the batch are kept: they are how a bug
    shows, not what it needs): a failure ``finding`` explains still fails here."""
    keep = set(finding.identity.features)
    others = [name for name in INDEPENDENT if name not in keep and BY_NAME[name].present(spec)]
    for name in others:
        less = without(spec, [name], accepts)
        if less is not None:
            spec = less
    return spec


def _consistent(spec: CaseSpec, outcome: Outcome, what: str, findings: Sequence[Finding],
                accepts: Accepts) -> Generator[list[CaseSpec], list[Outcome], list[Finding]]:
    """The known findings whose cause explains this failure, in the order they were found:
    taking the cause away clears it (a trigger, a threshold), and the cause alone, every
    other structural feature taken away, still fails (a cause that needs more is another
    bug); an error that follows the dtype small, for precision."""
    matching = [f for f in findings if _matches(f, what)]
    taken = {id(f): removal(spec, f, accepts) for f in matching
             if f.identity.cause in (Cause.TRIGGER, Cause.THRESHOLD)}
    alone = {id(f): reduced(spec, f, accepts) for f in matching}
    asked = [c for c in (*taken.values(), *alone.values()) if c is not None and c != spec]
    answers = dict(zip([c.to_json() for c in asked], (yield asked) if asked else [],
                       strict=True))

    def still_fails(case: CaseSpec) -> bool:
        return case == spec or shows(answers[case.to_json()], what)

    def keeps_error(case: CaseSpec) -> bool:
        if still_fails(case):
            return True
        left, before = error_ratio(answers[case.to_json()], what), error_ratio(outcome, what)
        return left is not None and before is not None and left >= before * SUFFICIENT_KEEPS

    found = []
    for f in matching:
        cause = f.identity.cause
        if cause in (Cause.TRIGGER, Cause.THRESHOLD):
            explains = taken[id(f)] is not None and not still_fails(taken[id(f)])
        else:
            explains = cause is not Cause.PRECISION or (
                relative_error(outcome, what) < PRECISION_RELATIVE)
        if explains and keeps_error(alone[id(f)]):
            found.append(f)
    return found


def _sampled(finding: Finding) -> bool:
    """Whether this sighting of ``finding`` is one to triage in full."""
    seen = finding.sightings
    return seen < TRIAGED_FIRST or (seen - TRIAGED_FIRST) % TRIAGE_EVERY == TRIAGE_EVERY - 1


def _needs(spec: CaseSpec, what: str, findings: Sequence[Finding], accepts: Accepts
           ) -> Generator[list[CaseSpec], list[Outcome], list[bool]]:
    """For each finding, whether taking its cause away clears this failure."""
    taken = [removal(spec, f, accepts) if _matches(f, what) else None for f in findings]
    asked = [c for c in taken if c is not None]
    answers = iter((yield asked) if asked else [])
    return [c is not None and not shows(next(answers), what) for c in taken]


def _same_needs(spec: CaseSpec, findings: Sequence[Finding], what: str, accepts: Accepts
                ) -> Predicate:
    """A shrink predicate: the candidate still shows the symptom and needs the same known
    causes as ``spec`` (so shrinking neither drifts into a known bug nor away from one; a
    feature that only made a known bug visible on a big case is free to go)."""
    state: dict[str, list[bool]] = {}

    def still(candidate: CaseSpec) -> Generator[list[CaseSpec], list[Outcome], bool]:
        if "before" not in state:
            state["before"] = yield from _needs(spec, what, findings, accepts)
        outcome = (yield [candidate])[0]
        if not shows(outcome, what):
            return False
        return (yield from _needs(candidate, what, findings, accepts)) == state["before"]

    return still


def cause_kept(finding: Finding, others: Sequence[Finding], accepts: Accepts) -> Predicate:
    """A predicate for shrinking ``finding``'s case: a candidate must still show its symptom
    and need the same causes (its own and the other findings')."""
    return _same_needs(finding.spec, [finding, *others], symptom(finding.outcome), accepts)


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
    visible = made_visible(diagnosis, outcome, explained)
    if visible is not None:
        return Attribution(visible)
    if diagnosis.case is not None:  # found on the case with a known bug's trigger taken away
        spec, outcome = diagnosis.case, diagnosis.outcome
    if diagnosis.identity.cause not in (Cause.TRIGGER, Cause.THRESHOLD):
        return Attribution(None, diagnosis, spec, outcome)
    # A new trigger or threshold: its identity is the one of a small case.
    small, _ = yield from shrink(spec, _same_needs(spec, findings, what, accepts),
                                 accepts, math.inf, max_tried=CANONICAL_CANDIDATES)
    again = (yield [small])[0] if small is not spec else outcome
    if small is not spec:
        diagnosis = yield from triage(small, again, accepts, known)
        for finding in findings:
            if finding.identity == diagnosis.identity:
                return Attribution(finding)
    for finding in findings:
        if _matches(finding, what) and (
                yield from _only_visibility(small, again, diagnosis, finding, accepts)):
            return Attribution(finding)
    return Attribution(None, diagnosis, small, again)


def made_visible(diagnosis: Diagnosis, outcome: Outcome, explained: Sequence[Finding]
                  ) -> Finding | None:
    """The finding among ``explained`` that a new trigger only makes visible, if any: one
    whose trigger it adds only :data:`NARROWING` features to, or a threshold finding past
    whose position the failure's worst element lies (a trigger found there only changes
    how far that bug's error stands out, as a range on near-tied values in bfloat16 does)."""
    if diagnosis.identity.cause is not Cause.TRIGGER:
        return None
    features = set(diagnosis.identity.features)
    worst = outcome.verdict.worst if outcome.verdict is not None else None
    for finding in explained:
        mine = set(finding.identity.features)
        if finding.identity.cause is Cause.TRIGGER:
            if mine < features and features - mine <= NARROWING:
                return finding
        elif (finding.identity.cause is Cause.THRESHOLD and finding.position is not None
              and worst is not None and worst.position >= finding.position):
            return finding
    return None


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
    result = (yield [taken])[0]
    left = error_ratio(result, what)
    known = set(finding.identity.features)
    extra = [n for n in diagnosis.identity.features if n not in known]
    return not shows(result, what) and left is not None and bool(extra) and all(
        diagnosis.evidence.get(n, 0.0) > VISIBILITY * left for n in extra)
