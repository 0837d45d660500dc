"""Drive Hypothesis against one target under a time and/or case budget, then shrink.

Hypothesis has no time budget, so exploration runs in batches: each batch is a
fresh ``@given`` run with its own seed and a ``max_examples`` sized to what is left.
The first failure ends exploration; Hypothesis shrinks it and replays the minimal
example last, so the last failing case the property saw is the reproducer.

Every outcome is memoised by the case's JSON. That keeps shrinking cheap when
Hypothesis revisits a case, and it is what lets shrinking stop on time without
a flaky-test error: past the shrink limit, cases never seen pass without running
while known failures keep failing, so the property stays deterministic and
Hypothesis settles on the smallest failure found so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings

from fuzz.stats import TargetStats
from fuzz.strategies import Space, cases
from verify.case import CaseSpec
from verify.materialize import materialize
from verify.runner import Outcome, TruthCache, evaluate
from verify.targets import Target

# Examples in the first batch of a timed run, before the cost of a case is known; also
# the least per batch, as Hypothesis opens every run with the simplest case (seen before).
MIN_BATCH = 10
# Upper bound on one batch, so a time budget is rechecked at least this often.
MAX_BATCH = 100


@dataclass(frozen=True)
class Budget:
    """When exploration stops (seconds and/or cases, whichever comes first; None: no
    limit) and how long shrinking a failure may take on top."""

    seconds: float | None
    cases: int | None
    shrink_seconds: float


@dataclass
class Exploration:
    """What fuzzing one target found. ``stats`` counts exploration only, not shrinking."""

    target: str
    space: Space
    stats: TargetStats = field(default_factory=TargetStats)
    worst_ratio: float | None = None
    worst_spec: CaseSpec | None = None
    failure: Outcome | None = None  # the shrunk failing outcome
    failing_spec: CaseSpec | None = None
    shrink_cases: int = 0  # new cases run while shrinking
    crash: str | None = None  # the exploration itself broke (not the target)
    explore_seconds: float = 0.0
    shrink_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.failure is not None or self.crash is not None


class _Falsified(AssertionError):
    """A failing outcome, raised inside the property so that Hypothesis shrinks it."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class _Explorer:
    def __init__(self, target: Target, space: Space, device: str, budget: Budget,
                 base_seed: int, on_case: Callable[[Outcome], None]) -> None:
        self.target, self.device, self.budget = target, device, budget
        self.base_seed, self.on_case = base_seed, on_case
        self.strategy = cases(space)
        self.result = Exploration(target.name, space)
        self._outcomes: dict[str, Outcome] = {}
        self._start = time.perf_counter()
        self._found_at: float | None = None

    def _exploration_over(self) -> bool:
        elapsed = time.perf_counter() - self._start
        return ((self.budget.seconds is not None and elapsed >= self.budget.seconds)
                or (self.budget.cases is not None and self.result.stats.cases >= self.budget.cases))

    def _may_run_new_case(self) -> bool:
        if self._found_at is None:
            return not self._exploration_over()
        return time.perf_counter() - self._found_at < self.budget.shrink_seconds

    def _record(self, spec: CaseSpec, outcome: Outcome) -> None:
        ratio = outcome.verdict.ratio if outcome.verdict is not None else None
        self.result.stats.add(outcome.status, ratio)
        if ratio is not None and (self.result.worst_ratio is None
                                  or ratio > self.result.worst_ratio):
            self.result.worst_ratio, self.result.worst_spec = ratio, spec
        self.on_case(outcome)

    def judge(self, spec: CaseSpec) -> Outcome | None:
        """The memoised outcome of ``spec``; None when out of time for new cases."""
        key = spec.to_json()
        if key in self._outcomes:
            return self._outcomes[key]
        if not self._may_run_new_case():
            return None
        outcome = evaluate(self.target, materialize(spec, self.device), TruthCache())
        self._outcomes[key] = outcome
        if self._found_at is not None:
            self.result.shrink_cases += 1
            return outcome
        self._record(spec, outcome)
        if outcome.failed:
            self._found_at = time.perf_counter()
        return outcome

    def check(self, spec: CaseSpec) -> None:
        outcome = self.judge(spec)
        if outcome is not None and outcome.failed:
            self.result.failure, self.result.failing_spec = outcome, spec
            raise _Falsified(outcome.summary())

    def _batch_size(self) -> int:
        sizes = [MAX_BATCH]
        done = self.result.stats.cases
        if self.budget.cases is not None:
            sizes.append(self.budget.cases - done)
        if self.budget.seconds is not None:
            elapsed = time.perf_counter() - self._start
            remaining = self.budget.seconds - elapsed
            sizes.append(int(remaining * done / elapsed) + 1 if done else MIN_BATCH)
        return max(MIN_BATCH, min(sizes))

    def _run_batch(self, index: int) -> None:
        def property_(spec: CaseSpec) -> None:
            self.check(spec)

        test = settings(
            max_examples=self._batch_size(), database=None, deadline=None, derandomize=False,
            report_multiple_bugs=False, phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
            print_blob=False,
        )(seed(self.base_seed * 1_000_003 + index)(given(self.strategy)(property_)))
        test()

    def run(self) -> Exploration:
        index = 0
        while self._found_at is None and not self._exploration_over():
            seen = len(self._outcomes)
            try:
                self._run_batch(index)
            except Exception as exc:  # Hypothesis re-raises the failure, or its own errors
                if self.result.failure is None:
                    self.result.crash = _one_line(exc)
                break
            index += 1
            if len(self._outcomes) == seen:  # a whole batch drew nothing new: space exhausted
                break
        end = time.perf_counter()
        explored_until = self._found_at if self._found_at is not None else end
        self.result.explore_seconds = explored_until - self._start
        self.result.shrink_seconds = end - explored_until
        return self.result


def explore(target: Target, space: Space, *, device: str, budget: Budget, base_seed: int,
            on_case: Callable[[Outcome], None] = lambda outcome: None) -> Exploration:
    """Fuzz ``target`` with cases from ``space`` until ``budget`` is spent or it fails.

    ``on_case`` sees every outcome of exploration (for progress displays). A failure
    is shrunk for at most ``budget.shrink_seconds`` more.
    """
    return _Explorer(target, space, device, budget, base_seed, on_case).run()
