"""What a fuzz run found: the terminal table, report.json, report.md and the plot.

JSON is for machines (CI dashboards, comparing runs), Markdown for a pull request or a
CI summary page; both carry the rows the terminal table shows, plus what the table has
no room for: every distinct failure, the layout features drawn, the draws declined, and
where the time went (compiling, the target, the reference and baseline, the policy, the
rest). report.json says when it was written (``written``, Unix time) and whether the run
was still going on (``partial``: a snapshot; a run killed outright leaves its last one).
"""

from __future__ import annotations

import enum
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from prefix_referee.fuzz.cases.coverage import FEATURES
from prefix_referee.fuzz.loop.campaign import TargetRun
from prefix_referee.fuzz.loop.settings import RunSettings
from prefix_referee.fuzz.records.casefiles import describe_case, relative
from prefix_referee.fuzz.records.findings import Finding
from prefix_referee.fuzz.records.journal import json_number
from prefix_referee.verify.compare import POLICY
from prefix_referee.verify.invariance import PROPERTIES
from prefix_referee.verify.runner import Status

COLUMNS = ("target", "status", "judged", "passed", "failed", "configs", "declined",
           "compiles", "worst ratio", "from exact", "findings", "worst case")


class RunStatus(str, enum.Enum):
    """How one target's run ended (a ``str`` like :class:`verify.runner.Status`: the JSON
    and the table show the value)."""

    CLEAN = "clean"  # enough cases judged, no failure
    FAILED = "failed"  # a new finding, an expected one gone stale, or an untriaged failure
    EXPECTED = "expected"  # only expected findings
    INCONCLUSIVE = "inconclusive"  # fewer cases judged than asked for
    BROKEN = "broken"  # the exploration itself broke (not the target)

    def __str__(self) -> str:
        return self.value


STATUS_STYLES = {RunStatus.FAILED: "bold red", RunStatus.BROKEN: "bold red",
                 RunStatus.INCONCLUSIVE: "yellow", RunStatus.EXPECTED: "cyan"}


def status(run: TargetRun, min_cases: int) -> RunStatus:
    """failed (a new finding, a stale expected one, or a failure the run stopped before
    attributing), broken (the exploration itself broke), expected (only expected
    findings), inconclusive (fewer than ``min_cases`` judged) or clean."""
    if run.broken is not None:
        return RunStatus.BROKEN
    if run.new_findings or run.stale or run.untriaged:
        return RunStatus.FAILED
    if run.judged < min_cases:
        return RunStatus.INCONCLUSIVE
    return RunStatus.EXPECTED if run.findings else RunStatus.CLEAN


def distance_text(run: TargetRun) -> str:
    """An approximate target's distance from exact attention; '-' for exact targets."""
    d = run.distance
    if run.exact or not d.judged:
        return "-"
    return f"{d.max_ulps:.0f} ulp, {d.beyond_exact}/{d.judged} beyond exact"


def declined_text(run: TargetRun) -> str:
    """Draws the target's declared limits rejected, as a share of all draws."""
    declined = sum(run.declined.values())
    return f"{declined} ({100 * declined / run.drawn:.0f}%)" if run.drawn else "0"


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}"


@dataclass(frozen=True)
class RunReport:
    """A whole run: its settings (versions included), device, and one entry per target."""

    settings: RunSettings
    targets: list[TargetRun]
    seconds: float
    device: str
    run_dir: Path | None = None
    interrupted: bool = False
    partial: bool = False  # a snapshot while the run goes on (or of a run that was killed)

    @property
    def min_cases(self) -> int:
        return self.settings.min_cases

    def status(self, run: TargetRun) -> RunStatus:
        return status(run, self.min_cases)

    @property
    def failed(self) -> bool:
        return any(self.status(t) in (RunStatus.FAILED, RunStatus.BROKEN) for t in self.targets)

    @property
    def inconclusive(self) -> bool:
        return any(self.status(t) == RunStatus.INCONCLUSIVE for t in self.targets)


def findings_text(run: TargetRun) -> str:
    """New and expected findings, and stale expected ones."""
    parts = [f"{len(run.new_findings)} new"] if run.new_findings else []
    expected = len(run.findings) - len(run.new_findings)
    if expected:
        parts.append(f"{expected} expected")
    if run.stale:
        parts.append(f"{len(run.stale)} stale")
    if run.untriaged:
        parts.append(f"{run.untriaged} untriaged")
    return ", ".join(parts) or "0"


def restart_counts(run: TargetRun) -> list[str]:
    """'N x reason' for each reason a worker of ``run`` was replaced, most frequent first."""
    return [f"{count} x {reason}" for reason, count in run.restarts.most_common()]


def untriaged_text(run: TargetRun) -> str:
    return (f"{run.untriaged} failing case{'s' * (run.untriaged > 1)} not yet attributed to a "
            "finding when the run stopped")


def worst_case(run: TargetRun) -> str:
    """The first new finding and its reproducer, else the highest-ratio case described."""
    for finding in run.new_findings:
        where = relative(finding.path) if finding.path else ""
        return f"{finding.identity} {where}".strip()
    for stale in run.stale:
        return f"stale: {stale.expected.identity} ({stale.now})"
    if run.broken is not None:
        return run.broken
    if run.untriaged:
        return untriaged_text(run)
    return describe_case(run.worst_spec) if run.worst_spec is not None else "-"


def row(report: RunReport, run: TargetRun) -> tuple[str, ...]:
    counts = run.stats.counts
    return (run.target, report.status(run).value, str(run.judged), str(counts[Status.PASS]),
            str(counts[Status.FAIL] + counts[Status.ERROR]), str(len(run.configurations)),
            declined_text(run), str(run.compiles), _ratio_text(run.worst_ratio),
            distance_text(run), findings_text(run), worst_case(run))


def render_table(report: RunReport) -> Table:
    title = f"prefix-attention fuzz ({report.seconds:.0f} s, seed {report.settings.seed}"
    title += ", interrupted)" if report.interrupted else ")"
    table = Table(title=title)
    for column in COLUMNS:
        numeric = column in ("judged", "passed", "failed", "configs", "declined", "compiles",
                             "worst ratio")
        table.add_column(column, justify="right" if numeric else "left",
                         no_wrap=column != "worst case", overflow="fold")
    for run in report.targets:  # Text: a message or path is never rich markup
        table.add_row(*map(Text, row(report, run)), style=STATUS_STYLES.get(report.status(run)))
    return table


def invariance_cell(run: TargetRun, prop: str) -> str:
    """'claimed, holds (12 comparisons)', or how far the target is from the property."""
    measure = run.invariance.get(prop)
    if measure is None:
        return "-"
    return ("claimed, " if measure.claimed else "") + measure.text(prop)


def render_invariance_table(report: RunReport) -> Table:
    """Per target, which properties beyond tolerance hold, bit for bit, and how far from
    each the target is where one does not."""
    table = Table(title="beyond tolerance (bit for bit)")
    table.add_column("target", no_wrap=True)
    for prop in PROPERTIES:
        table.add_column(prop, overflow="fold")
    for run in report.targets:
        table.add_row(*map(Text, (run.target, *(invariance_cell(run, p) for p in PROPERTIES))))
    return table


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {"finding": str(finding.identity), "identity": finding.identity.to_json(),
            "words": finding.words, "expected": finding.expected,
            "sightings": finding.sightings,
            "reproducer": None if finding.path is None else relative(finding.path),
            "diagnosis": finding.outcome.summary(), "shrunk": finding.shrunk,
            "shrink_cases": finding.shrink_cases, "fails_alone": finding.fails_alone,
            "found_after": finding.found_after,
            "case": finding.spec.to_dict()}


def _time_shares(run: TargetRun) -> dict[str, float]:
    """Seconds per phase: compiling, the target, reference and baseline, the policy, the rest."""
    s = run.seconds
    target = max(0.0, s["target"] - run.compile_seconds)
    known = (run.compile_seconds + target + s["reference"] + s["materialize"] + s["judge"]
             + s["checks"])
    return {"compile": round(run.compile_seconds, 3), "target": round(target, 3),
            "reference_and_baseline": round(s["reference"] + s["materialize"], 3),
            "policy": round(s["judge"], 3), "checks": round(s["checks"], 3),
            "bookkeeping": round(max(0.0, s["explore"] - s["triage"] - known), 3),
            "triage": round(s["triage"], 3), "explore": round(s["explore"], 3),
            "shrink": round(s["shrink"], 3)}


def _target_json(report: RunReport, run: TargetRun) -> dict[str, Any]:
    explore = run.seconds["explore"]
    return {
        "target": run.target, "status": report.status(run).value, "exact": run.exact,
        "judged": run.judged, "stats": run.stats.to_dict(),
        "cases_per_second": round(run.judged / explore, 3) if explore else None,
        "worst_ratio": json_number(run.worst_ratio),
        "worst_case": run.worst_spec.to_dict() if run.worst_spec is not None else None,
        "distance_from_exact": None if run.exact else {
            "max_ulps": json_number(run.distance.max_ulps),
            "beyond_exact_policy": run.distance.beyond_exact, "judged": run.distance.judged,
            "worst_case": None if run.distance.worst is None else run.distance.worst.to_dict()},
        "findings": [_finding_json(f) for f in run.findings],
        "stale": [{"finding": str(s.expected.identity), "file": str(s.expected.path),
                   "now": s.now} for s in run.stale],
        "triage_runs": run.triage_runs, "unattributed_failures": run.unattributed,
        "untriaged_failures": run.untriaged,
        "configurations": len(run.configurations),
        "features": {name: run.features[name] for name in FEATURES},
        "declined": dict(run.declined.most_common()), "drawn": run.drawn,
        "compiles": run.compiles, "seconds": _time_shares(run),
        "worker_restarts": run.restarts.total(),
        "restart_reasons": dict(run.restarts.most_common()), "broken": run.broken,
        "claims": sorted(run.claims), "checks": run.checks,
        "checks_postponed": run.checks_postponed,
        "invariance": {p: run.invariance[p].to_json(p) for p in PROPERTIES
                       if p in run.invariance},
        "spaces": [{k: sorted(v) if isinstance(v, frozenset) else v
                    for k, v in asdict(s).items()} for s in run.spaces],
    }


def report_json(report: RunReport) -> dict[str, Any]:
    return {"settings": report.settings.to_json(), "versions": report.settings.versions,
            "device": report.device,
            "policy": POLICY, "seconds": round(report.seconds, 3),
            "written": round(time.time(), 3), "partial": report.partial,
            "interrupted": report.interrupted, "failed": report.failed,
            "inconclusive": report.inconclusive, "min_cases": report.min_cases,
            "targets": [_target_json(report, t) for t in report.targets]}


def report_markdown(report: RunReport) -> str:
    s = report.settings
    lines = ["# Prefix-attention fuzz report", "",
             f"Device `{report.device}`, space `{s.space}`, seed {s.seed}, "
             f"budget {s.budget or '-'} s, examples {s.examples or '-'}, "
             f"{report.seconds:.0f} s in all" + (" (interrupted)." if report.interrupted else "."),
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(row(report, t)) + " |" for t in report.targets]
    if s.invariance:
        lines += ["", "## Beyond tolerance (bit for bit)", "",
                  "| target | " + " | ".join(PROPERTIES) + " |",
                  "|" + "|".join("---" for _ in range(len(PROPERTIES) + 1)) + "|"]
        lines += [f"| {t.target} | " + " | ".join(invariance_cell(t, p) for p in PROPERTIES)
                  + " |" for t in report.targets]
    for run in report.targets:
        for finding in run.findings:
            mark = " (expected)" if finding.expected else ""
            lines += ["", f"## {run.target}: `{finding.identity}`{mark}", "", finding.words, "",
                      f"Seen {finding.sightings} times. Reproducer "
                      f"`{relative(finding.path) if finding.path else '-'}`", "", "```",
                      finding.outcome.summary(), "```"]
        for stale in run.stale:
            lines += ["", f"## {run.target}: `{stale.expected.identity}` (stale)", "",
                      f"Expected in `{stale.expected.path}`, but its case {stale.now}: fixed? "
                      "remove it from the file."]
        if run.restarts:
            lines += ["", f"## {run.target}: workers replaced", ""]
            lines += [f"- {line}" for line in restart_counts(run)]
    return "\n".join(lines) + "\n"
