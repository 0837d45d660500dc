"""The live progress bar of a fuzz run (rich, on stderr so stdout keeps the table).

One bar over the whole run; each target fills its share by whichever of its
limits (time or cases) is closer to being spent.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fuzz.explore import Budget
from verify.runner import Outcome


class FuzzProgress:
    """Shows the current target, cases run, cases per second and failures so far."""

    def __init__(self, num_targets: int) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<28}", markup=False), BarColumn(),
            TextColumn("{task.fields[cases]} cases, {task.fields[rate]:.1f}/s, "
                       "{task.fields[failures]} failing", markup=False),
            TimeElapsedColumn(), console=Console(stderr=True))
        self._task = self._progress.add_task("", total=num_targets, cases=0, rate=0.0,
                                             failures=0)
        self._index = -1
        self._name = ""
        self._budget = Budget(None, None, 0.0)
        self._target_cases = self._cases = self._failures = 0
        self._started = self._target_started = time.perf_counter()

    def __enter__(self) -> FuzzProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def start_target(self, name: str, budget: Budget) -> None:
        self._index += 1
        self._name, self._budget, self._target_cases = name, budget, 0
        self._target_started = time.perf_counter()
        self._progress.update(self._task, description=name, completed=self._index)

    def case(self, outcome: Outcome) -> None:
        """Called for every case explored; the first failure starts shrinking."""
        self._cases += 1
        self._target_cases += 1
        now = time.perf_counter()
        fractions = [0.0]
        if self._budget.seconds:
            fractions.append((now - self._target_started) / self._budget.seconds)
        if self._budget.cases:
            fractions.append(self._target_cases / self._budget.cases)
        update = {"completed": self._index + min(1.0, max(fractions)), "cases": self._cases,
                  "rate": self._cases / max(now - self._started, 1e-9)}
        if outcome.failed:
            self._failures += 1
            update["description"] = f"shrinking {outcome.target}"
            update["failures"] = self._failures
        self._progress.update(self._task, **update)

    def finish_target(self) -> None:
        self._progress.update(self._task, description=self._name, completed=self._index + 1)
