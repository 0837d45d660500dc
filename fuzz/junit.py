"""JUnit XML for CI systems: one testcase per target, failures carry the diagnosis."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from fuzz.report import RunReport


def write_junit(report: RunReport, path: Path) -> None:
    suite = ET.Element("testsuite", name="prefix-fuzz", tests=str(len(report.targets)),
                       time=f"{report.seconds:.3f}")
    tallies = {"failures": 0, "errors": 0, "skipped": 0}
    for target in report.targets:
        ex = target.exploration
        case = ET.SubElement(suite, "testcase", classname="prefix-fuzz", name=ex.target,
                             time=f"{ex.explore_seconds + ex.shrink_seconds:.3f}")
        if ex.failure is not None:
            tallies["failures"] += 1
            summary = ex.failure.summary()
            failure = ET.SubElement(case, "failure", message=summary.splitlines()[0])
            failure.text = f"{summary}\nreproducer: {target.reproducer}"
        elif ex.crash is not None:
            tallies["errors"] += 1
            ET.SubElement(case, "error", message=ex.crash)
        elif target.status == "skipped":
            tallies["skipped"] += 1
            ET.SubElement(case, "skipped", message="no case could be judged (all skipped)")
        ET.SubElement(case, "system-out").text = " ".join(
            f"{column}={value}" for column, value in zip(
                ("cases", "passed", "failed", "skipped", "worst_ratio"), target.row()[2:7],
                strict=True))
    for key, count in tallies.items():
        suite.set(key, str(count))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
