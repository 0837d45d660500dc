"""One target's fuzzing: draw, pack, run in workers, judge, group failures, shrink.

The loop of docs/design.md for a single target. Exploration can be resumed (the
schedule gives a target time in rounds); it goes on after failures, groups them by
signature and confirms a failure seen inside a pack by running that case alone (if it
passes alone, the pack is the failure: a cross-request bug). Every new failure is saved
as a reproducer at once and shrunk at the end, within its own deadline.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import NamedTuple

from fuzz.cases.coverage import features
from fuzz.cases.drawing import DrawnAhead
from fuzz.cases.strategies import Space
from fuzz.cases.stream import CaseStream
from fuzz.loop.jobs import Job, JobResult
from fuzz.loop.shrink import shrink
from fuzz.loop.signature import signature
from fuzz.loop.workers import WorkerPool
from fuzz.records.casefiles import write_reproducer
from fuzz.records.journal import RunDirectory
from fuzz.records.stats import TargetStats
from verify.case import CaseSpec
from verify.compare import Verdict
from verify.pack import pack
from verify.runner import Outcome, Status
from verify.target import Target

# How long main waits for results before checking its clocks again.
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class Settings:
    """What every campaign of a run shares."""

    devices: tuple[str, ...]  # one entry per worker (a device may be listed more than once)
    seed: int
    case_timeout: float
    isolation: str
    pack_cases: int
    pack_tokens: int
    max_failures: int
    shrink_seconds: float
    expected: frozenset[tuple[str, str]] = frozenset()
    versions: dict[str, str | None] = field(default_factory=dict)


def stream_seed(seed: int, slot: int) -> int:
    """The seed of worker ``slot``'s stream: the run's own for the first worker (a run on
    one worker draws what it always drew), one derived from it for the others."""
    return seed if slot == 0 else random.Random(f"{seed}/{slot}").randrange(2**32)


class _Submitted(NamedTuple):
    cases: list[CaseSpec]
    confirm: bool  # a case of a pack rerun alone
    slot: int | None  # the worker whose stream drew it (None: whichever was free)


@dataclass
class Failure:
    """One distinct failure (signature) of a target and its reproducer."""

    signature: str
    spec: CaseSpec
    outcome: Outcome
    expected: bool
    sightings: int = 1
    path: Path | None = None
    shrunk: bool = False
    shrink_cases: int = 0
    unpacked: bool = True  # False: it fails only inside a pack (a cross-request bug)


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
class TargetRun:
    """What fuzzing one target found, for the report."""

    target: str
    exact: bool
    spaces: list[Space]
    stats: TargetStats = field(default_factory=TargetStats)
    features: Counter[str] = field(default_factory=Counter)
    failures: dict[str, Failure] = field(default_factory=dict)
    worst_ratio: float | None = None
    worst_spec: CaseSpec | None = None
    distance: Distance = field(default_factory=Distance)
    compiles: int = 0
    compile_seconds: float = 0.0
    seconds: Counter[str] = field(default_factory=Counter)  # where the time went
    declined: Counter[str] = field(default_factory=Counter)
    drawn: int = 0
    restarts: int = 0
    broken: str | None = None  # the exploration itself broke (not the target)

    @property
    def judged(self) -> int:
        counts = self.stats.counts
        return counts[Status.PASS] + counts[Status.FAIL] + counts[Status.ERROR]

    @property
    def new_failures(self) -> list[Failure]:
        return [f for f in self.failures.values() if not f.expected]


class Campaign:
    """Fuzz one target; ``explore`` may be called several times, ``finish`` shrinks."""

    def __init__(self, target: Target, spaces: list[Space], settings: Settings,
                 journal: RunDirectory, on_case: Callable[[str, Outcome], None]) -> None:
        self.target = target
        self.settings = settings
        self.journal = journal
        self.on_case = on_case
        device_type = settings.devices[0].split(":")[0]
        self.pool = WorkerPool(target.name, settings.devices, case_timeout=settings.case_timeout,
                               isolation=settings.isolation, log=journal.log)
        workers = 1 if settings.isolation == "none" else len(settings.devices)
        self.streams = [DrawnAhead(CaseStream(
            spaces, lambda spec: target.unsupported_reason(spec, device_type),
            stream_seed(settings.seed, slot), pack_cases=settings.pack_cases,
            pack_tokens=settings.pack_tokens)) for slot in range(workers)]
        self.run = TargetRun(target.name, target.exact, spaces)
        self._ids = count()
        self._jobs: dict[int, _Submitted] = {}
        self._first_compile_credit: float | None = None
        # Packs whose failing case is being rerun alone, by that case's JSON.
        self._pending: dict[str, tuple[list[CaseSpec], Outcome | None]] = {}

    # --- exploration ----------------------------------------------------------------------

    def explore(self, seconds: float | None, cases: int | None) -> None:
        """Explore until ``seconds`` pass (the first compile not counted) or ``cases`` more
        cases are judged, or ``max_failures`` distinct new failures are found."""
        start = time.monotonic()
        target_judged = None if cases is None else self.run.judged + cases
        submitted = self.run.judged

        def done() -> bool:
            credit = self._first_compile_credit or 0.0
            return (self.run.broken is not None
                    or len(self.run.new_failures) >= self.settings.max_failures
                    or (seconds is not None and time.monotonic() - start - credit >= seconds)
                    or (target_judged is not None and submitted >= target_judged))

        while True:
            while not done() and (slot := self.pool.free_slot()) is not None:
                limit = None if target_judged is None else target_judged - submitted
                pack_ = self._next_pack(slot, limit)
                if not pack_:
                    break
                submitted += len(pack_)
                self._submit(pack_, confirm=False, slot=slot)
            if not self.pool.busy and not self._jobs:
                break
            for result in self.pool.wait(POLL_SECONDS):
                self._absorb(result)
            if done() and not self._jobs:
                break
        self.run.seconds["explore"] += time.monotonic() - start

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

    def _submit(self, cases: list[CaseSpec], *, confirm: bool, slot: int | None) -> None:
        job = Job(next(self._ids), tuple(c.to_dict() for c in cases), packed=len(cases) > 1)
        self._jobs[job.id] = _Submitted(cases, confirm, slot)
        self.pool.submit(job, slot)

    def _absorb(self, result: JobResult) -> None:
        cases, confirm, slot = self._jobs.pop(result.id)
        self.run.restarts = self.pool.restarts
        for phase, seconds in result.timings.items():
            self.run.seconds[phase] += seconds
        if result.compiled:
            self._compiled(result, slot)
        if confirm:
            self._confirmed(cases[0], result.outcomes[0])
            return
        for spec, outcome in zip(cases, result.outcomes, strict=True):
            self._record(spec, outcome)
        if len(cases) > 1 and any(o.status == Status.ERROR for o in result.outcomes):
            # A crash, hang or exception of the packed call: the pack is the reproducer.
            packed, _ = pack(cases)
            self._failure(packed, result.batch or result.outcomes[0], unpacked=False)
            return
        for spec, outcome in zip(cases, result.outcomes, strict=True):
            if outcome.failed:
                sig = signature(outcome, spec.dtype)
                if sig in self.run.failures:
                    self.run.failures[sig].sightings += 1
                elif len(cases) > 1:
                    self._pending[spec.to_json()] = (cases, result.batch)
                    self._submit([spec], confirm=True, slot=slot)  # where it compiled
                else:
                    self._failure(spec, outcome)

    def _confirmed(self, spec: CaseSpec, alone: Outcome) -> None:
        cases, batch = self._pending.pop(spec.to_json(), ([spec], None))
        if alone.failed:
            self._failure(spec, alone)
        elif batch is not None and batch.failed:
            packed, _ = pack(cases)
            self._failure(packed, batch, unpacked=False)

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
        run.distance.add(outcome.distance, spec)
        if ratio is not None and (run.worst_ratio is None or ratio > run.worst_ratio):
            run.worst_ratio, run.worst_spec = ratio, spec
        record = {"target": run.target, "status": outcome.status.value, "ratio": ratio,
                  "seconds": round(outcome.seconds, 6)}
        if outcome.failed:
            record["signature"] = signature(outcome, spec.dtype)
        if outcome.distance is not None:
            record["exact_ulps"] = round(outcome.distance.scale_ulps, 3)
        self.journal.record_case(record)
        self.on_case(run.target, outcome)

    def _failure(self, spec: CaseSpec, outcome: Outcome, *, unpacked: bool = True) -> None:
        sig = signature(outcome, spec.dtype)
        if sig in self.run.failures:
            self.run.failures[sig].sightings += 1
            return
        expected = (self.target.name, sig) in self.settings.expected
        failure = Failure(sig, spec, outcome, expected, unpacked=unpacked)
        self.run.failures[sig] = failure
        index = len(self.run.failures)
        slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in self.target.name)
        failure.path = write_reproducer(spec, outcome, sig,
                                        self.journal.reproducers / f"{slug}-{index}.json",
                                        self.settings.versions)

    # --- shrinking -------------------------------------------------------------------------

    def _run_alone(self, spec: CaseSpec) -> Outcome:
        self._submit([spec], confirm=True, slot=None)
        while True:
            for result in self.pool.wait(POLL_SECONDS):
                cases = self._jobs.pop(result.id).cases
                for phase, seconds in result.timings.items():
                    self.run.seconds[phase] += seconds
                if cases[0] is spec:
                    return result.outcomes[0]

    def finish(self) -> None:
        """Shrink each new failure within its deadline; rewrite its reproducer."""
        start = time.monotonic()
        device_type = self.settings.devices[0].split(":")[0]

        def accepts(candidate: CaseSpec) -> bool:
            return self.target.unsupported_reason(candidate, device_type) is None

        for failure in self.run.new_failures:
            failure.spec, failure.shrink_cases = shrink(
                failure.spec, lambda c, f=failure: self._fails_like(c, f), accepts,
                time.monotonic() + self.settings.shrink_seconds)
            failure.shrunk = True
            failure.path = write_reproducer(failure.spec, failure.outcome, failure.signature,
                                            failure.path, self.settings.versions)
        self.run.seconds["shrink"] += time.monotonic() - start

    def _fails_like(self, candidate: CaseSpec, failure: Failure) -> bool:
        """Whether ``candidate`` alone fails with ``failure``'s signature (then it becomes
        the failure's outcome)."""
        outcome = self._run_alone(candidate)
        if outcome.failed and signature(outcome, candidate.dtype) == failure.signature:
            failure.outcome = outcome
            return True
        return False

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
        self.pool.close()
