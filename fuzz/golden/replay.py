"""Golden files: curated cases with the verdict each target must give on them.

A golden file is a case JSON whose ``expect`` annotation maps target names to
"pass" or "fail". The gate (tests/test_golden.py) and ``python -m fuzz golden``
replay them; a target that is not registered, not available here or declines
the case is skipped with the reason, so the GPU tier replays the same files for
the targets only it can run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prefix_referee.golden import GOLDEN_DIR
from prefix_referee.verify.case import CaseError, CaseSpec
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.runner import Outcome, Status, TruthCache, evaluate
from prefix_referee.verify.targets import get_target

# The verdicts a golden file may expect of a target.
VERDICTS = (Status.PASS, Status.FAIL)


def golden_files(directory: Path = GOLDEN_DIR) -> list[Path]:
    return sorted(directory.glob("*.json"))


def expectations(spec: CaseSpec) -> dict[str, Status]:
    """The ``expect`` annotation, validated: target name -> Status.PASS or Status.FAIL."""
    expect = spec.extra.get("expect", {})
    if not isinstance(expect, Mapping) or not all(
            isinstance(name, str) and isinstance(verdict, str) and verdict in VERDICTS
            for name, verdict in expect.items()):
        raise CaseError(f"expect: must map target names to "
                        f"{' or '.join(v.value for v in VERDICTS)}, got {expect!r}")
    return {name: Status(verdict) for name, verdict in expect.items()}


@dataclass(frozen=True)
class GoldenCheck:
    """One expected verdict replayed: the outcome, or why the target was skipped."""

    target: str
    expected: Status
    outcome: Outcome | None
    skip_reason: str | None = None

    @property
    def matches(self) -> bool:
        """Whether the target gave the expected verdict (a skip neither matches nor not)."""
        return self.outcome is not None and self.outcome.status == self.expected

    def describe(self) -> str:
        if self.skip_reason is not None:
            return f"{self.target}: skipped ({self.skip_reason})"
        mark = "as expected" if self.matches else f"EXPECTED {self.expected.value.upper()}"
        return f"{self.outcome.summary()}\n  -> {mark}"


def check_expectation(target: str, expected: Status, case: MaterializedCase,
                      truths: TruthCache) -> GoldenCheck:
    """Replay ``case`` on ``target`` and compare with ``expected``."""
    try:
        runner = get_target(target)
    except KeyError:
        return GoldenCheck(target, expected, None, "not registered here")
    outcome = evaluate(runner, case, truths)
    if outcome.status == Status.SKIP:
        return GoldenCheck(target, expected, None, outcome.reason)
    return GoldenCheck(target, expected, outcome)
