"""Error-ratio histograms per target (PNG, matplotlib's Agg backend: no display needed).

The ratio is ``out_error / baseline_error`` (verify.compare): how a target's error
compares with a plain low-precision implementation. The shape of the distribution
says more than the pass count: a kernel living near the limit shows a right tail.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from prefix_referee.fuzz.records.stats import TargetStats
from prefix_referee.verify.compare import BASELINE_MULTIPLE
from prefix_referee.verify.plotting import pyplot

# Ratios below this land in the first bin (a log axis has no zero).
SMALLEST_RATIO = 1e-3
BINS = 40


def plot_ratios(stats: Mapping[str, TargetStats], path: Path) -> None:
    """One histogram panel per target, on a shared log-scaled ratio axis.

    Raises :class:`verify.plotting.PlotsUnavailable` without matplotlib.
    """
    plt = pyplot()
    import numpy as np  # matplotlib's own dependency

    names = list(stats)
    largest = max((max(s.ratios, default=1.0) for s in stats.values()), default=1.0)
    edges = np.logspace(math.log10(SMALLEST_RATIO), math.log10(max(largest, 10.0)) + 0.1,
                        BINS + 1)
    fig, axes = plt.subplots(max(len(names), 1), 1, figsize=(7, 1.2 + 1.6 * max(len(names), 1)),
                             sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], names, strict=False):
        s = stats[name]
        ax.hist(np.clip(s.ratios, SMALLEST_RATIO, None), bins=edges, color="tab:blue")
        title = f"{name}: {len(s.ratios)} judged"
        if s.nonfinite:
            title += f", {s.nonfinite} with non-finite output (not shown)"
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_xscale("log")
        ax.set_ylabel("cases")
        # The policy fails a case at BASELINE_MULTIPLE x baseline (plus one output ULP).
        ax.axvline(BASELINE_MULTIPLE, color="tab:red", linestyle="--", linewidth=1)
    axes[-1, 0].set_xlabel("error ratio: target error / low-precision baseline error "
                           f"(below {SMALLEST_RATIO:g} in the first bin; red: the policy's "
                           f"{BASELINE_MULTIPLE:g}x limit)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
