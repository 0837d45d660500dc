"""What a fuzz run found: the terminal table, report.json, report.md and the plots.

JSON is for machines (CI dashboards, comparing runs), Markdown for a pull request
or a CI summary page; both carry the rows the terminal table shows.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from fuzz.casefiles import describe_case
from fuzz.explore import Exploration
from fuzz.plots import plot_ratios
from verify.runner import ERROR, FAIL, PASS, SKIP

COLUMNS = ("target", "status", "cases", "passed", "failed", "skipped", "worst ratio",
           "worst case")


@dataclass(frozen=True)
class TargetReport:
    """One target's exploration and, if it failed, the reproducer file."""

    exploration: Exploration
    reproducer: Path | None = None

    @property
    def status(self) -> str:
        """failed, crashed, skipped (nothing could be judged) or clean."""
        ex = self.exploration
        if ex.failure is not None:
            return "failed"
        if ex.crash is not None:
            return "crashed"
        return "clean" if ex.stats.counts[PASS] else "skipped"

    @property
    def worst_case(self) -> str:
        """The reproducer for a failure, else a description of the highest-ratio case."""
        ex = self.exploration
        if self.reproducer is not None:
            return str(self.reproducer)
        if ex.crash is not None:
            return ex.crash
        return describe_case(ex.worst_spec) if ex.worst_spec is not None else "-"

    def row(self) -> tuple[str, ...]:
        counts = self.exploration.stats.counts
        return (self.exploration.target, self.status, str(self.exploration.stats.cases),
                str(counts[PASS]), str(counts[FAIL] + counts[ERROR]), str(counts[SKIP]),
                _ratio_text(self.exploration.worst_ratio), self.worst_case)


@dataclass(frozen=True)
class RunReport:
    """A whole run: the settings it ran with and one report per target."""

    settings: dict[str, Any]
    targets: list[TargetReport]
    seconds: float

    @property
    def failed(self) -> bool:
        return any(t.exploration.failed for t in self.targets)


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


def _json_ratio(ratio: float | None) -> float | str | None:
    """JSON has no infinity: a non-finite ratio is written as the string "inf"."""
    return "inf" if ratio is not None and not math.isfinite(ratio) else ratio


def render_table(report: RunReport) -> Table:
    table = Table(title=f"prefix-attention fuzz ({report.seconds:.0f} s, "
                        f"seed {report.settings['seed']})")
    for column in COLUMNS:
        numeric = column in ("cases", "passed", "failed", "skipped", "worst ratio")
        table.add_column(column, justify="right" if numeric else "left",
                         no_wrap=column != "worst case", overflow="fold")
    styles = {"failed": "bold red", "crashed": "bold red", "skipped": "yellow"}
    for target in report.targets:  # Text: a crash message or path is never rich markup
        table.add_row(*map(Text, target.row()), style=styles.get(target.status))
    return table


def _target_json(target: TargetReport) -> dict[str, Any]:
    ex = target.exploration
    failure = None
    if ex.failure is not None:
        failure = {"reproducer": str(target.reproducer), "diagnosis": ex.failure.summary(),
                   "case": ex.failing_spec.to_dict(), "shrink_cases": ex.shrink_cases}
    return {
        "target": ex.target, "status": target.status, "stats": ex.stats.to_dict(),
        "worst_ratio": _json_ratio(ex.worst_ratio),
        "worst_case": ex.worst_spec.to_dict() if ex.worst_spec is not None else None,
        "failure": failure, "crash": ex.crash,
        "explore_seconds": round(ex.explore_seconds, 3),
        "shrink_seconds": round(ex.shrink_seconds, 3),
        "space": asdict(ex.space),
    }


def report_json(report: RunReport) -> dict[str, Any]:
    return {"settings": report.settings, "seconds": round(report.seconds, 3),
            "failed": report.failed, "targets": [_target_json(t) for t in report.targets]}


def report_markdown(report: RunReport) -> str:
    s = report.settings
    lines = ["# Prefix-attention fuzz report", "",
             f"Device `{s['device']}`, profile `{s['profile']}`, seed {s['seed']}, "
             f"budget {s['budget'] or '-'} s, examples {s['examples'] or '-'}, "
             f"{report.seconds:.0f} s in all.",
             "", "| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(t.row()) + " |" for t in report.targets]
    for t in report.targets:
        if t.exploration.failure is not None:
            lines += ["", f"## {t.exploration.target}", "",
                      f"Reproducer `{t.reproducer}` "
                      f"(rerun: `python -m fuzz replay {t.reproducer}`):", "", "```",
                      t.exploration.failure.summary(), "```"]
        elif t.exploration.crash is not None:
            lines += ["", f"## {t.exploration.target}", "",
                      f"The run crashed: `{t.exploration.crash}`"]
    return "\n".join(lines) + "\n"


def write_reports(report: RunReport, directory: Path) -> list[Path]:
    """report.json, report.md and ratios.png in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (directory / n for n in ("report.json", "report.md",
                                                              "ratios.png"))
    json_path.write_text(json.dumps(report_json(report), indent=1) + "\n")
    md_path.write_text(report_markdown(report))
    plot_ratios({t.exploration.target: t.exploration.stats for t in report.targets}, png_path)
    return [json_path, md_path, png_path]
