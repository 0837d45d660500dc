"""Per-target tallies of verdicts and error ratios, mergeable across processes.

The fuzz CLI and the pytest plugin (one book per xdist worker) collect the same
records, so one JSON shape serves both and books from several processes merge by
adding counts and concatenating ratios. Deliberately free of torch: the plugin
loads in every pytest process.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Ratios are kept to this many significant digits: enough for plots and worst cases.
RATIO_DIGITS = 4


@dataclass
class TargetStats:
    """Verdict counts of one target and the error ratio of every judged case."""

    counts: Counter[str] = field(default_factory=Counter)
    ratios: list[float] = field(default_factory=list)  # finite ratios only
    nonfinite: int = 0  # judged cases whose output had non-finite values (ratio inf)

    def add(self, status: str, ratio: float | None) -> None:
        """One case: ``status`` (a :class:`verify.runner.Status`, or its value) and its ratio
        if it was judged. Counts are kept by the plain value, as JSON writes them."""
        self.counts[str(status)] += 1
        if ratio is None:
            return
        if math.isfinite(ratio):
            self.ratios.append(float(f"{ratio:.{RATIO_DIGITS}g}"))
        else:
            self.nonfinite += 1

    @property
    def cases(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: TargetStats) -> None:
        self.counts.update(other.counts)
        self.ratios.extend(other.ratios)
        self.nonfinite += other.nonfinite

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``max_ratio`` is the largest finite ratio; ``nonfinite`` counts the rest."""
        return {"cases": self.cases, "counts": dict(sorted(self.counts.items())),
                "max_ratio": max(self.ratios, default=None), "nonfinite": self.nonfinite,
                "ratios": list(self.ratios)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetStats:
        return cls(Counter(data["counts"]), list(data["ratios"]), int(data["nonfinite"]))


@dataclass
class StatsBook:
    """:class:`TargetStats` by target name."""

    targets: dict[str, TargetStats] = field(default_factory=dict)

    def record(self, target: str, status: str, ratio: float | None = None) -> None:
        self.targets.setdefault(target, TargetStats()).add(status, ratio)

    def merge(self, other: StatsBook) -> None:
        for name, stats in other.targets.items():
            self.targets.setdefault(name, TargetStats()).merge(stats)

    def to_dict(self) -> dict[str, Any]:
        return {"targets": {name: self.targets[name].to_dict() for name in sorted(self.targets)}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatsBook:
        return cls({name: TargetStats.from_dict(d) for name, d in data["targets"].items()})
