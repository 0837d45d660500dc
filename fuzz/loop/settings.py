"""What a run was asked to do: one object every campaign reads and the report records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefix_referee.fuzz.records.findings import ExpectedFinding


@dataclass(frozen=True)
class RunSettings:
    """The settings of one ``python -m fuzz`` run (docs/fuzzing.md has the options)."""

    targets: tuple[str, ...]
    device: str  # cpu or cuda
    devices: tuple[str, ...]  # cpu, or the GPUs used
    workers: int  # per device
    space: str
    model: str | None
    kv_dtype: str | None
    seed: int
    budget: float | None  # seconds of exploration
    examples: int | None  # judged cases per target
    min_cases: int
    max_findings: int
    shrink_seconds: float
    case_timeout: float
    isolation: str
    pack_cases: int
    pack_tokens: int
    expected: tuple[ExpectedFinding, ...] = ()
    worker_memory: int | None = None  # host memory per worker, bytes (None: unbounded)
    invariance: bool = False  # measure every property beyond tolerance (--invariance)
    checks: bool = True  # check claimed properties and stale state (off: --tolerance-only)
    versions: dict[str, str | None] = field(default_factory=dict)
    interpreter: dict[str, Any] = field(default_factory=dict)

    @property
    def worker_devices(self) -> tuple[str, ...]:
        """One entry per worker: every device ``workers`` times, the devices alternating."""
        return tuple(d for _ in range(self.workers) for d in self.devices)

    def to_json(self) -> dict[str, Any]:
        """The settings as report.json records them."""
        return {
            "targets": list(self.targets), "device": self.device, "devices": list(self.devices),
            "workers": self.workers, "space": self.space, "model": self.model,
            "kv_dtype": self.kv_dtype,
            "seed": self.seed, "budget": self.budget, "examples": self.examples,
            "min_cases": self.min_cases, "max_findings": self.max_findings,
            "shrink_budget": self.shrink_seconds, "case_timeout": self.case_timeout,
            "isolation": self.isolation, "worker_memory": self.worker_memory,
            "pack_cases": self.pack_cases,
            "pack_tokens": self.pack_tokens, "interpreter": self.interpreter,
            "invariance": self.invariance, "checks": self.checks,
            "expected": [{"target": e.target, "finding": str(e.identity), "file": str(e.path)}
                         for e in self.expected],
        }
