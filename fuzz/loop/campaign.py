"""One target's fuzzing: draw, pack, run in workers, judge, attribute failures, shrink.

The loop of docs/design.md for a single target. Exploration can be resumed (the schedule
gives a target time in rounds) and goes on after failures. A failure seen inside a pack
is first rerun alone (if it passes alone, the pack is the failing case: a cross-request
bug); then it is attributed (:mod:`fuzz.loop.attribution`) to a known finding, as a
sighting, or becomes a new finding, saved as a reproducer at once and shrunk at the end.
Expected findings are replayed before exploration starts: confirmed, or stale.
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from itertools import count
from typing import Any, NamedTuple

from prefix_referee.fuzz.cases.coverage import configuration, features
from prefix_referee.fuzz.cases.drawing import DrawnAhead
from prefix_referee.fuzz.cases.strategies import Space
from prefix_referee.fuzz.cases.stream import CaseStream
from prefix_referee.fuzz.loop.attribution import attribute, cause_kept
from prefix_referee.fuzz.loop.invariance import Check, Checker, Measure, Violation
from prefix_referee.fuzz.loop.jobs import Job, JobResult
from prefix_referee.fuzz.loop.settings import RunSettings
from prefix_referee.fuzz.loop.shrink import shrink
from prefix_referee.fuzz.loop.triage import symptom, triage
from prefix_referee.fuzz.loop.workers import WorkerPool
from prefix_referee.fuzz.records.casefiles import write_reproducer
from prefix_referee.fuzz.records.findings import Cause, ExpectedFinding, Finding, Identity
from prefix_referee.fuzz.records.journal import RunDirectory
from prefix_referee.fuzz.records.stats import TargetStats
from prefix_referee.verify.case import CaseSpec
from prefix_referee.verify.compare import Verdict
from prefix_referee.verify.invariance import SYMPTOMS, Comparison, Variant, variants_from_json
from prefix_referee.verify.pack import pack
from prefix_referee.verify.runner import Outcome, Status
from prefix_referee.verify.target import Target

# How long main waits for results before checking its clocks again.
POLL_SECONDS = 0.5


def stream_seed(seed: int, slot: int) -> int:
    """The seed of worker ``slot``'s stream: the run's own for the first worker (a run on
    one worker draws what it always drew), one derived from it for the others."""
    return seed if slot == 0 else random.Random(f"{seed}/{slot}").randrange(2**32)


class Purpose(Enum):
    """Why a job was submitted: exploration, a pack's failing case rerun alone, or a run
    triage or shrinking asked for; a check beyond tolerance, or one of its variants judged
    as a case of its own."""

    EXPLORE = "explore"
    ALONE = "alone"
    TRIAGE = "triage"
    CHECK = "check"  # variants compared bit for bit (fuzz/loop/invariance.py)
    VARIANT = "variant"  # a variant of a check judged as a case of its own


class _Submitted(NamedTuple):
    cases: list[CaseSpec]
    purpose: Purpose
    slot: int | None  # the worker whose stream drew it (None: whichever was free)


@dataclass
class Distance:
    """How far an approximate target is from exact attention over the judged cases."""

    max_ulps: float = 0.0  # in ULPs of the dtype at the output's scale
    beyond_exact: int = 0  # cases the exact policy would fail
    judged: int = 0
    worst: CaseSpec | None = None

    def add(self, verdict: Verdict | None, spec: CaseSpec) -> None:
        """One judged case's verdict against the exact reference."""
        if verdict is None:
            return
        self.judged += 1
        self.beyond_exact += not verdict.passed
        if verdict.scale_ulps >= self.max_ulps:
            self.max_ulps, self.worst = verdict.scale_ulps, spec


@dataclass
class Stale:
    """An expected finding whose reproducer no longer fails with its identity."""

    expected: ExpectedFinding
    now: str  # what its case does now: "passes", or the identity it fails with


@dataclass
class TargetRun:
    """What fuzzing one target found, for the report."""

    target: str
    exact: bool
    spaces: list[Space]
    stats: TargetStats = field(default_factory=TargetStats)
    features: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)
    stale: list[Stale] = field(default_factory=list)
    worst_ratio: float | None = None
    worst_spec: CaseSpec | None = None
    distance: Distance = field(default_factory=Distance)
    configurations: set[str] = field(default_factory=set)
    compiles: int = 0
    compile_seconds: float = 0.0
    seconds: Counter[str] = field(default_factory=Counter)  # where the time went
    declined: Counter[str] = field(default_factory=Counter)
    drawn: int = 0
    restarts: Counter[str] = field(default_factory=Counter)  # workers replaced, by reason
    triage_runs: int = 0
    unattributed: int = 0  # failures left after --max-findings new findings
    untriaged: int = 0  # failures not yet attributed when the run stopped (interrupted)
    broken: str | None = None  # the exploration itself broke (not the target)
    invariance: dict[str, Measure] = field(default_factory=dict)  # by property
    claims: frozenset[str] = frozenset()
    checks: int = 0  # check jobs run (confirmations included)
    checks_postponed: int = 0  # due while the checks had taken their share of the time

    @property
    def judged(self) -> int:
        counts = self.stats.counts
        return counts[Status.PASS] + counts[Status.FAIL] + counts[Status.ERROR]

    @property
    def new_findings(self) -> list[Finding]:
        return [f for f in self.findings if not f.expected]


class Campaign:
    """Fuzz one target; ``explore`` may be called several times, ``finish`` shrinks."""

    def __init__(self, target: Target, spaces: list[Space], settings: RunSettings,
                 journal: RunDirectory, on_case: Callable[[str, Outcome], None],
                 on_wait: Callable[[], None] = lambda: None) -> None:
        self.target = target
        self.settings = settings
        self.journal = journal
        self.on_case = on_case
        self.on_wait = on_wait  # after each wait for results (at most POLL_SECONDS apart)
        devices = settings.worker_devices
        self.device_type = devices[0].split(":")[0]
        limit = target.capabilities.max_total_tokens
        pack_tokens = min(settings.pack_tokens, limit or settings.pack_tokens)
        self.pool = WorkerPool(target.name, devices, case_timeout=settings.case_timeout,
                               isolation=settings.isolation, log=journal.log,
                               memory=settings.worker_memory)
        workers = 1 if settings.isolation == "none" else len(devices)
        self.streams = [DrawnAhead(CaseStream(
            spaces, lambda spec: target.unsupported_reason(spec, self.device_type),
            stream_seed(settings.seed, slot), pack_cases=settings.pack_cases,
            pack_tokens=pack_tokens, pooled=target.compiles))
            for slot in range(workers)]
        self.run = TargetRun(target.name, target.exact, spaces)
        claims = target.capabilities.claims(self.device_type)
        self.checker = Checker(claims, measure=settings.invariance, enabled=settings.checks,
                               seed=settings.seed, accepts=self.accepts,
                               compiled=self._compiled_on)
        self.run.invariance, self.run.claims = self.checker.measures, claims
        self._checks: dict[int, Check] = {}
        # Per worker: cases of the latest packs, and the kernels it compiled (a check runs
        # nothing that would compile).
        self._recent: dict[int | None, deque[CaseSpec]] = {}
        self._keys: dict[int | None, set[str]] = {}
        self._ids = count()
        self._jobs: dict[int, _Submitted] = {}
        self._deferred: list[JobResult] = []
        self._failures: deque[tuple[CaseSpec, Outcome, bool]] = deque()
        self._first_compile_credit: float | None = None
        self._confirmed_expected = False
        # Packs whose failing case is being rerun alone, by that case's JSON.
        self._pending: dict[str, tuple[list[CaseSpec], Outcome | None]] = {}

    def accepts(self, spec: CaseSpec) -> bool:
        return self.target.unsupported_reason(spec, self.device_type) is None

    # --- exploration ----------------------------------------------------------------------

    def explore(self, seconds: float | None, cases: int | None) -> None:
        """Explore until ``seconds`` pass (the first compile not counted) or ``cases`` more
        cases are judged, or ``max_findings`` new findings are found."""
        start = time.monotonic()
        if not self._confirmed_expected:
            self._confirmed_expected = True
            self._confirm_expected()
        target_judged = None if cases is None else self.run.judged + cases
        submitted = self.run.judged

        def done() -> bool:
            credit = self._first_compile_credit or 0.0
            return (self.run.broken is not None or self._findings_full()
                    or (seconds is not None and time.monotonic() - start - credit >= seconds)
                    or (target_judged is not None and submitted >= target_judged))

        while True:
            while not done() and (slot := self.pool.free_slot()) is not None:
                limit = None if target_judged is None else target_judged - submitted
                pack_ = self._next_pack(slot, limit)
                if not pack_:
                    break
                submitted += len(pack_)
                self._submit(pack_, Purpose.EXPLORE, slot)
            if not self.pool.busy and not self._jobs and not self._deferred \
                    and not self._failures:
                break
            for result in self._collect(POLL_SECONDS):
                self._absorb(result)
            self._count_untriaged()
            while self._failures:  # taken off once attributed: an interrupt leaves it counted
                self._attribute(*self._failures[0])
                self._failures.popleft()
                self._count_untriaged()
            if done() and not self._jobs and not self._deferred:
                break
        self.run.seconds["explore"] += time.monotonic() - start

    def _count_untriaged(self) -> None:
        """Failures waiting for attribution (or for their rerun alone) make the target
        failed even if the run stops before they are attributed."""
        self.run.untriaged = len(self._failures) + len(self._pending)

    def _findings_full(self) -> bool:
        return len(self.run.new_findings) >= self.settings.max_findings

    def _next_pack(self, slot: int, limit: int | None) -> list[CaseSpec]:
        try:
            pack_ = self.streams[slot].next_pack()
        except RuntimeError as exc:
            self.run.broken = str(exc)
            return []
        finally:
            self.run.declined = sum((s.declined for s in self.streams), Counter())
            self.run.drawn = sum(s.drawn for s in self.streams)
        return pack_ if limit is None else pack_[:limit]

    def _submit(self, cases: list[CaseSpec], purpose: Purpose, slot: int | None) -> int:
        job = Job(next(self._ids), tuple(c.to_dict() for c in cases), packed=len(cases) > 1)
        self._jobs[job.id] = _Submitted(cases, purpose, slot)
        self.pool.submit(job, slot)
        return job.id

    def _collect(self, timeout: float) -> list[JobResult]:
        if self._deferred:
            ready, self._deferred = self._deferred, []
            return ready
        return self._wait(timeout)

    def _wait(self, timeout: float) -> list[JobResult]:
        results = self.pool.wait(timeout)
        self.on_wait()
        return results

    def _account(self, result: JobResult, submitted: _Submitted) -> None:
        self.run.restarts = self.pool.restart_reasons.copy()
        for phase, seconds in result.timings.items():
            self.run.seconds[phase] += seconds
        if result.compiled:
            self._compiled(result, submitted.slot)

    def _absorb(self, result: JobResult) -> None:
        submitted = self._jobs.pop(result.id)
        self._account(result, submitted)
        cases = submitted.cases
        if submitted.purpose is Purpose.ALONE:
            self._alone(cases[0], result.outcomes[0])
            return
        if submitted.purpose is Purpose.CHECK:
            self._checked(result, self._checks.pop(result.id))
            return
        if submitted.purpose is Purpose.VARIANT:
            self._variant(cases, result)
            return
        for spec, outcome in zip(cases, result.outcomes, strict=True):
            self._record(spec, outcome)
        self._explored(cases, result, submitted.slot)
        if len(cases) > 1 and any(o.status == Status.ERROR for o in result.outcomes):
            # A crash, hang or exception of the packed call: the pack is the failing case.
            packed, _ = pack(cases)
            self._failures.append((packed, result.batch or result.outcomes[0], False))
            return
        for spec, outcome in zip(cases, result.outcomes, strict=True):
            if not outcome.failed:
                continue
            if len(cases) > 1:
                self._pending[spec.to_json()] = (cases, result.batch)
                self._submit([spec], Purpose.ALONE, submitted.slot)  # where it compiled
            else:
                self._failures.append((spec, outcome, True))

    # --- checks beyond tolerance ------------------------------------------------------------

    def _compiled_on(self, spec: CaseSpec, slot: int | None) -> bool:
        """Whether worker ``slot`` runs ``spec`` without compiling a kernel."""
        if not self.target.compiles:
            return True
        return repr(self.target.compile_key(spec)) in self._keys.get(slot, set())

    def _explored(self, cases: list[CaseSpec], result: JobResult, slot: int | None) -> None:
        """After a pack is judged: remember it; check it beyond tolerance if it passed."""
        if result.compile_key:
            self._keys.setdefault(slot, set()).add(result.compile_key)
        recent = self._recent.setdefault(slot, deque(maxlen=8))
        if all(o.status == Status.PASS for o in result.outcomes):
            seconds = self.run.seconds
            spent = (seconds["checks"], seconds["materialize"] + seconds["reference"]
                     + seconds["target"] + seconds["judge"])
            check = self.checker.plan(cases, [o.digest for o in result.outcomes], slot, recent,
                                      spent)
            self.run.checks_postponed = self.checker.postponed
            if check is not None:
                self._submit_check(check)
        recent.append(cases[0])

    def _submit_check(self, check: Check) -> int:
        job = Job(next(self._ids), (), packed=False,
                  variants=tuple(v.to_json() for v in check.variants), judge=check.confirm)
        self._jobs[job.id] = _Submitted([], Purpose.CHECK, check.slot)
        self._checks[job.id] = check
        self.pool.submit(job, check.slot)
        self.run.checks += 1
        return job.id

    def _checked(self, result: JobResult, check: Check) -> None:
        comparison = result.comparison
        if comparison is None:  # the worker died or hung on a variant: judge each as a case
            for variant in check.variants:
                if variant.subject is not None:
                    self._submit(list(variant.cases), Purpose.VARIANT, check.slot)
            return
        by_name = {v.name: v for v in check.variants}
        for run in comparison.errors:  # a variant the target raised on is a failing case
            self._submit(list(by_name[run.name].cases), Purpose.VARIANT, check.slot)
        examined = self.checker.examine(check, comparison)
        for cases in examined.failing:
            self._submit(cases, Purpose.VARIANT, check.slot)
        if examined.confirm is not None:
            self._submit_check(examined.confirm)
        for violation in examined.violations:
            self._violation(violation)
        for prop in examined.sightings:
            self._sighting(SYMPTOMS[prop])

    def _variant(self, cases: list[CaseSpec], result: JobResult) -> None:
        """A check's variant judged as a case: a failure goes the way of any failure."""
        outcome = result.batch if len(cases) > 1 else result.outcomes[0]
        if outcome is not None and outcome.failed:
            spec = pack(cases)[0] if len(cases) > 1 else cases[0]
            self._failures.append((spec, outcome, len(cases) == 1))

    def _sighting(self, symptom: str) -> bool:
        """Count a sighting of the finding beyond tolerance ``symptom``, if there is one."""
        for finding in self.run.findings:
            if finding.identity == Identity(symptom, Cause.EVERYWHERE):
                finding.sightings += 1
                return True
        return False

    def _violation(self, violation: Violation) -> None:
        """A confirmed violation: a sighting of its finding, or a new finding."""
        self.checker.found.add(violation.property)
        if self._sighting(violation.symptom):
            return
        identity = Identity(violation.symptom, Cause.EVERYWHERE)
        if self._findings_full():
            self.run.unattributed += 1
            return
        words = violation.words()
        outcome = Outcome(self.target.name, Status.FAIL, reason=words, kind=violation.symptom)
        finding = Finding(identity, words, violation.spec(), outcome,
                          found_after=self.run.judged)
        self.run.findings.append(finding)
        self._write(finding)

    def _run_variants(self, variants: list[Variant]) -> Comparison | None:
        """Run a comparison on whichever worker is free and wait for it (results of other
        jobs that arrive meanwhile wait in ``_deferred``)."""
        job = Job(next(self._ids), (), packed=False,
                  variants=tuple(v.to_json() for v in variants), judge=True)
        self._jobs[job.id] = _Submitted([], Purpose.TRIAGE, None)
        self.pool.submit(job)
        while True:
            for result in self.pool.wait(POLL_SECONDS):
                if result.id == job.id:
                    self._account(result, self._jobs.pop(job.id))
                    return result.comparison
                self._deferred.append(result)

    def _alone(self, spec: CaseSpec, alone: Outcome) -> None:
        cases, batch = self._pending.pop(spec.to_json(), ([spec], None))
        if alone.failed:
            self._failures.append((spec, alone, True))
        elif batch is not None and batch.failed:
            packed, _ = pack(cases)
            self._failures.append((packed, batch, False))

    def _compiled(self, result: JobResult, slot: int | None) -> None:
        seconds = result.timings.get("target", 0.0)
        self.run.compiles += 1
        self.run.compile_seconds += seconds
        if self._first_compile_credit is None:
            self._first_compile_credit = seconds
        judged = max(self.run.judged, 1)
        s = self.run.seconds
        per_case = (s["target"] - self.run.compile_seconds + s["reference"] + s["materialize"]
                    + s["judge"]) / judged
        for stream in self.streams if slot is None else [self.streams[slot]]:
            stream.compiled(seconds, per_case)

    def _record(self, spec: CaseSpec, outcome: Outcome) -> None:
        run = self.run
        ratio = outcome.verdict.ratio if outcome.verdict is not None else None
        run.stats.add(outcome.status, ratio)
        run.features.update(features(spec))
        run.configurations.add(configuration(spec))
        run.distance.add(outcome.distance, spec)
        if ratio is not None and (run.worst_ratio is None or ratio > run.worst_ratio):
            run.worst_ratio, run.worst_spec = ratio, spec
        record: dict[str, Any] = {"target": run.target, "status": outcome.status.value,
                                  "ratio": ratio, "seconds": round(outcome.seconds, 6)}
        if outcome.failed:
            record["symptom"] = symptom(outcome)
        if outcome.distance is not None:
            record["exact_ulps"] = round(outcome.distance.scale_ulps, 3)
        self.journal.record_case(record)
        self.on_case(run.target, outcome)

    # --- attribution ----------------------------------------------------------------------

    def _run_batch(self, specs: list[CaseSpec]) -> list[Outcome]:
        """Run ``specs`` alone, each on whichever worker is free; results of other jobs that
        arrive meanwhile wait in ``_deferred``."""
        start = time.monotonic()
        ids = {self._submit([spec], Purpose.TRIAGE, None): i for i, spec in enumerate(specs)}
        found: dict[int, Outcome] = {}
        while len(found) < len(ids):
            for result in self._wait(POLL_SECONDS):
                if result.id in ids:
                    self._account(result, self._jobs.pop(result.id))
                    found[ids[result.id]] = result.outcomes[0]
                else:
                    self._deferred.append(result)
        self.run.triage_runs += len(specs)
        self.run.seconds["triage"] += time.monotonic() - start
        return [found[i] for i in range(len(specs))]

    def _drive(self, runs: Generator[list[CaseSpec], list[Outcome], Any]) -> Any:
        """Drive a triage, attribution or shrink generator on the workers; its result."""
        try:
            batch = next(runs)
            while True:
                batch = runs.send(self._run_batch(batch) if batch else [])
        except StopIteration as stop:
            return stop.value

    def _attribute(self, spec: CaseSpec, outcome: Outcome, alone: bool) -> None:
        if self._findings_full():
            self.run.unattributed += 1
            return
        found = self._drive(attribute(spec, outcome, self.run.findings, self.accepts))
        if found.finding is not None:
            finding = found.finding
            finding.sightings += 1
            if found.position is not None and (finding.position is None
                                               or found.position < finding.position):
                finding.position = found.position
            return
        diagnosis = found.diagnosis
        finding = Finding(diagnosis.identity, diagnosis.words, found.spec, found.outcome,
                          diagnosis.position, fails_alone=alone, found_after=self.run.judged)
        self.run.findings.append(finding)
        self._write(finding)

    def _write(self, finding: Finding) -> None:
        if finding.path is None:
            slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.target.name)
            index = len(self.run.findings)
            finding.path = self.journal.reproducers / f"{slug}-{index}.json"
        write_reproducer(finding, self.target.name, self.settings.versions)

    def _confirm_expected(self) -> None:
        """Replay each expected finding of this target: confirmed, or stale."""
        for expected in (e for e in self.settings.expected if e.target == self.target.name):
            if not self.accepts(expected.spec):
                self.run.stale.append(Stale(expected, "declined by the target here"))
                continue
            if expected.identity.symptom in SYMPTOMS.values():
                self._confirm_invariance(expected)
                continue
            outcome = self._run_batch([expected.spec])[0]
            if not outcome.failed:
                self.run.stale.append(Stale(expected, "passes"))
                continue
            diagnosis = self._drive(triage(expected.spec, outcome, self.accepts))
            if diagnosis.identity != expected.identity:
                self.run.stale.append(Stale(expected, f"fails as {diagnosis.identity}"))
                continue
            self.run.findings.append(Finding(
                expected.identity, diagnosis.words, expected.spec, outcome, diagnosis.position,
                expected=True, sightings=0, path=expected.path))

    def _confirm_invariance(self, expected: ExpectedFinding) -> None:
        """Replay the runs an expected invariance finding compares: still differing, or stale."""
        try:
            prop, variants = variants_from_json(expected.spec.extra.get("invariance"))
        except ValueError as exc:
            self.run.stale.append(Stale(expected, f"cannot be replayed ({exc})"))
            return
        comparison = self._run_variants(variants)
        found = [d for d in (comparison.differences if comparison else [])
                 if d.property == prop and d.differs]
        if not found:
            self.run.stale.append(Stale(expected, "compares equal"))
            return
        self.checker.found.add(prop)
        words = f"{expected.identity.symptom}: '{found[0].variant}' against " \
                f"'{found[0].against}': {found[0].describe()}"
        self.run.findings.append(Finding(
            expected.identity, words, expected.spec,
            Outcome(self.target.name, Status.FAIL, reason=words, kind=expected.identity.symptom),
            expected=True, sightings=0, path=expected.path))

    # --- shrinking ------------------------------------------------------------------------

    def finish(self) -> None:
        """Shrink each new finding within its deadline, keeping its identity; say its cause
        in words from the shrunk case; rewrite its reproducer."""
        start = time.monotonic()
        self._merge_overlaps()
        for finding in self.run.new_findings:
            if finding.identity.cause in (Cause.UNTRIAGED, Cause.PRECISION):
                continue  # a hang costs the timeout a run; precision needs its length
            if finding.identity.symptom in SYMPTOMS.values():
                continue  # one case of a pack already; its runs are its reproducer
            others = [f for f in self.run.findings if f is not finding]
            small, finding.shrink_cases = self._drive(shrink(
                finding.spec, cause_kept(finding, others, self.accepts), self.accepts,
                time.monotonic() + self.settings.shrink_seconds))
            outcome = self._run_batch([small])[0]
            diagnosis = self._drive(triage(small, outcome, self.accepts,
                                           [f.identity for f in others], describe=True))
            if diagnosis.identity == finding.identity:
                finding.spec, finding.outcome, finding.words = small, outcome, diagnosis.words
                finding.shrunk = small is not finding.spec or finding.shrink_cases > 0
            self._write(finding)
        self.run.seconds["shrink"] += time.monotonic() - start

    def _merge_overlaps(self) -> None:
        """A failure that nothing single clears, found before the bugs in it were known
        (two bugs in one case), is triaged again now that they are: if taking a known
        trigger away leaves another known finding, it was a sighting of that one."""
        for finding in [f for f in self.run.new_findings
                        if f.identity.cause is Cause.EVERYWHERE
                        and f.identity.symptom not in SYMPTOMS.values()]:
            others = [f for f in self.run.findings if f is not finding]
            diagnosis = self._drive(triage(finding.spec, finding.outcome, self.accepts,
                                           [f.identity for f in others]))
            for other in others:
                if other.identity == diagnosis.identity:
                    other.sightings += finding.sightings
                    self.run.findings.remove(finding)
                    if finding.path is not None:
                        finding.path.unlink(missing_ok=True)
                    break

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.pool.close()
