"""JUnit XML for CI systems: one testcase per target, failures carry the diagnoses."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from prefix_referee.fuzz.report.summary import (
    COLUMNS,
    RunReport,
    RunStatus,
    row,
    untriaged_text,
)


def write_junit(report: RunReport, path: Path) -> None:
    suite = ET.Element("testsuite", name="prefix-fuzz", tests=str(len(report.targets)),
                       time=f"{report.seconds:.3f}")
    tallies = {"failures": 0, "errors": 0, "skipped": 0}
    for run in report.targets:
        case = ET.SubElement(suite, "testcase", classname="prefix-fuzz", name=run.target,
                             time=f"{run.seconds['explore'] + run.seconds['shrink']:.3f}")
        status = report.status(run)
        if status == RunStatus.FAILED:
            tallies["failures"] += 1
            lines = [f"{f.identity}: {f.words}\n{f.outcome.summary()}\nreproducer: {f.path}"
                     for f in run.new_findings]
            lines += [f"stale: {s.expected.identity} in {s.expected.path}: its case {s.now}"
                      for s in run.stale]
            lines += [untriaged_text(run)] if run.untriaged else []
            failure = ET.SubElement(case, "failure", message=lines[0].splitlines()[0])
            failure.text = "\n\n".join(lines)
        elif status == RunStatus.BROKEN:
            tallies["errors"] += 1
            ET.SubElement(case, "error", message=run.broken or "")
        elif status == RunStatus.INCONCLUSIVE:
            tallies["skipped"] += 1
            ET.SubElement(case, "skipped", message=f"{status.value}: {run.judged} judged "
                          f"cases, fewer than {report.min_cases}")
        ET.SubElement(case, "system-out").text = " ".join(
            f"{column}={value}" for column, value in zip(COLUMNS[1:-1], row(report, run)[1:-1],
                                                         strict=True))
    for key, count in tallies.items():
        suite.set(key, str(count))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
