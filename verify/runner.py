"""Run one target on one case and judge it: the step shared by tests, fuzz and replay."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass

from verify.compare import Expected, Verdict, check, expected
from verify.materialize import MaterializedCase
from verify.targets import Target

PASS, FAIL, SKIP, ERROR = "pass", "fail", "skip", "error"


@dataclass
class Outcome:
    """What happened: ``status`` is pass, fail, skip (with a reason) or error (it raised)."""

    target: str
    status: str
    verdict: Verdict | None = None
    reason: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, ERROR)

    def summary(self) -> str:
        if self.verdict is not None:
            return f"{self.target}: {self.verdict.summary()}"
        return f"{self.target}: {self.status.upper()}: {self.reason}"


class TruthCache:
    """Reference results per case and model, shared by every target run on that case."""

    def __init__(self) -> None:
        self._case: MaterializedCase | None = None
        self._truths: dict[str | None, Expected] = {}

    def get(self, case: MaterializedCase, target: Target) -> Expected:
        if case is not self._case:
            self._case, self._truths = case, {}
        bias = target.score_bias(case)
        key = None if bias is None else getattr(bias, "__qualname__", repr(bias))
        if key not in self._truths:
            self._truths[key] = expected(case, score_bias=bias)
        return self._truths[key]


def evaluate(target: Target, case: MaterializedCase, truths: TruthCache | None = None
             ) -> Outcome:
    """Run ``target`` on ``case`` and apply the policy; never raises for a target's fault."""
    reason = target.unavailable_reason() or target.unsupported_reason(case.spec,
                                                                      case.device.type)
    if reason:
        return Outcome(target.name, SKIP, reason=reason)
    start = time.perf_counter()
    try:
        out, lse = target.run(case)
    except Exception as exc:  # the target's own failure is a finding, not a crash of the suite
        last = traceback.extract_tb(exc.__traceback__)[-1]
        return Outcome(target.name, ERROR, reason=f"{type(exc).__name__}: {exc} "
                       f"({last.filename}:{last.lineno})", seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    truth = (truths or TruthCache()).get(case, target)
    verdict = check(case, out, lse if target.capabilities.lse else None, truth)
    return Outcome(target.name, PASS if verdict.passed else FAIL, verdict, seconds=seconds)
