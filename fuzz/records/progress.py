"""The live progress display of a fuzz run (rich, on stderr so stdout keeps the table).

One bar over the whole run, filled by time (or by judged cases without a time budget);
beside it the current target, its judged cases, cases per second, and the distinct
failures found so far.
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from prefix_referee.verify.runner import Outcome


class FuzzProgress:
    """Call :meth:`case` for every judged case; the display keeps itself current."""

    def __init__(self, seconds: float | None, cases: int | None) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<28}", markup=False), BarColumn(),
            TextColumn("{task.fields[judged]} judged, {task.fields[rate]:.1f}/s, "
                       "{task.fields[failures]} failing", markup=False),
            TimeElapsedColumn(), console=Console(stderr=True))
        total = seconds if seconds is not None else float(cases or 1)
        self._task = self._progress.add_task("", total=total, judged=0, rate=0.0, failures=0)
        self._by_time = seconds is not None
        self._started = time.monotonic()
        self._judged = self._failures = 0

    def __enter__(self) -> FuzzProgress:
        self._progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.stop()

    def case(self, target: str, outcome: Outcome) -> None:
        self._judged += 1
        self._failures += outcome.failed
        elapsed = time.monotonic() - self._started
        self._progress.update(
            self._task, description=target, judged=self._judged,
            rate=self._judged / max(elapsed, 1e-9), failures=self._failures,
            completed=elapsed if self._by_time else self._judged)

    def note(self, text: str) -> None:
        """Show what the run does between cases (shrinking, say)."""
        self._progress.update(self._task, description=text)
