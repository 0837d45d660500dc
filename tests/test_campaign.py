"""One run reports one finding per cause, caps new findings at --max-findings, and gates on
expected findings by identity: a second bug fails the run however its symptoms look, and an
expected finding that no longer reproduces is stale (docs/design.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefix_referee.fuzz.cli import EXIT_CLEAN, EXIT_FOUND, EXIT_INTERRUPTED, EXIT_USAGE, main
from prefix_referee.fuzz.loop.campaign import Campaign
from prefix_referee.fuzz.loop.shrink import shrink
from prefix_referee.fuzz.loop.triage import run_sync
from prefix_referee.fuzz.report.summary import RunStatus
from prefix_referee.verify import parse_case

GQA = "fault:gqa_ratio_4"
THREE_BUGS = "fault:gqa_ratio_4+lse_base2+window_inclusive_under_clamp"
THREE_FINDINGS = {"values: gqa", "lse: everywhere", "values: window + clamp"}
# In-process: these runs are about findings, not containment (tests/test_isolation.py).
RUN = ["--device", "cpu", "--isolation", "none", "--no-plots", "--shrink-budget", "1",
       "--seed", "0"]
THREE_BUGS_RUN = [*RUN[:-1], "1"]  # seed 1 meets all three bugs within 60 cases


def _target(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "report.json").read_text())["targets"][0]


def _findings(report_dir: Path) -> dict[str, dict]:
    return {f["finding"]: f for f in _target(report_dir)["findings"]}


def test_three_bugs_in_one_kernel_are_three_findings(tmp_path: Path) -> None:
    assert main(["--target", THREE_BUGS, "--examples", "60", *THREE_BUGS_RUN,
                 "--report-dir", str(tmp_path)]) == EXIT_FOUND
    target = _target(tmp_path)
    assert set(_findings(tmp_path)) == THREE_FINDINGS
    assert target["judged"] == 60  # sightings never stop exploration
    assert "GQA ratio 4" in _findings(tmp_path)["values: gqa"]["words"]


def test_max_findings_reports_and_shrinks_at_most_n(tmp_path: Path) -> None:
    assert main(["--target", THREE_BUGS, "--examples", "60", "--max-findings", "2", *THREE_BUGS_RUN,
                 "--report-dir", str(tmp_path)]) == EXIT_FOUND
    findings = _target(tmp_path)["findings"]
    assert len(findings) == 2 and set(_findings(tmp_path)) < THREE_FINDINGS
    assert len(list((tmp_path / "latest" / "reproducers").iterdir())) == 2


def test_a_failure_the_run_stops_before_attributing_fails_the_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupted while a failure waits for triage: no finding yet, but never 'clean'."""
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Campaign, "_attribute", interrupted)
    junit = tmp_path / "junit.xml"
    assert main(["--target", GQA, "--examples", "25", *RUN, "--junit", str(junit),
                 "--report-dir", str(tmp_path)]) == EXIT_INTERRUPTED
    target = _target(tmp_path)
    assert target["findings"] == [] and target["untriaged_failures"] >= 1
    assert target["status"] == RunStatus.FAILED
    assert "not yet attributed" in junit.read_text()


def _accepted(report_dir: Path, target: str, into: Path) -> Path:
    """The findings file a run wrote, renamed to ``target`` (as for a renamed kernel)."""
    written = next((report_dir / "latest" / "findings").iterdir())
    data = json.loads(written.read_text())
    data["target"] = target
    into.write_text(json.dumps(data))
    return into


def test_expected_findings_green_exactly_themselves(tmp_path: Path) -> None:
    assert main(["--target", GQA, "--examples", "25", *RUN,
                 "--report-dir", str(tmp_path / "a")]) == EXIT_FOUND
    assert set(_findings(tmp_path / "a")) == {"values: gqa"}
    known = _accepted(tmp_path / "a", GQA, tmp_path / "known.json")
    # The known bug alone: expected, exit 0.
    assert main(["--target", GQA, "--examples", "12", *RUN, "--expect", str(known),
                 "--report-dir", str(tmp_path / "b")]) == EXIT_CLEAN
    assert _target(tmp_path / "b")["status"] == RunStatus.EXPECTED
    assert _findings(tmp_path / "b")["values: gqa"]["sightings"] >= 1  # met, and accepted
    # The known bug and a second one: the second is new, exit 1.
    both = "fault:gqa_ratio_4+lse_base2"
    assert main(["--target", both, "--examples", "12", *RUN,
                 "--expect", str(_accepted(tmp_path / "a", both, tmp_path / "both.json")),
                 "--report-dir", str(tmp_path / "c")]) == EXIT_FOUND
    findings = _findings(tmp_path / "c")
    assert findings["values: gqa"]["expected"] and not findings["lse: everywhere"]["expected"]
    # The known bug fixed: its entry is stale, exit 1 until it is removed.
    fixed = "reference"
    assert main(["--target", fixed, "--examples", "12", *RUN,
                 "--expect", str(_accepted(tmp_path / "a", fixed, tmp_path / "fixed.json")),
                 "--report-dir", str(tmp_path / "d")]) == EXIT_FOUND
    assert [s["finding"] for s in _target(tmp_path / "d")["stale"]] == ["values: gqa"]
    assert _target(tmp_path / "d")["stale"][0]["now"] == "passes"


def test_a_reproducer_is_an_expected_finding(tmp_path: Path) -> None:
    assert main(["--target", "fault:lse_base2", "--examples", "10", *RUN,
                 "--report-dir", str(tmp_path / "a")]) == EXIT_FOUND
    reproducer = next((tmp_path / "a" / "latest" / "reproducers").iterdir())
    assert main(["--target", "fault:lse_base2", "--examples", "10", *RUN,
                 "--expect", str(reproducer), "--report-dir", str(tmp_path / "b")]) == EXIT_CLEAN


@pytest.mark.parametrize("bad", [
    '{"expected": [{"target": "x", "signature": "out|inside-range|bfloat16"}]}',
    '[1, 2]', '{"requests": []}',
    '{"target": "sdpa", "findings": [{"identity": {"symptom": "out", "cause": "nope"}}]}',
    '{"target": "sdpa", "findings": [{"identity": {"symptom": "out", "cause": "everywhere"}, '
    '"case": {"requests": "no"}}]}'])
def test_unreadable_expectations_are_usage_errors(bad: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "known.json"
    path.write_text(bad)
    assert main(["--target", "sdpa", "--examples", "1", *RUN, "--expect", str(path)]) == (
        EXIT_USAGE)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err, err


def _pure(fails):  # a shrink predicate that needs no runs
    def still(spec):
        return fails(spec)
        yield  # a generator

    return still


def test_shrinking_keeps_the_smallest_case_that_still_fails() -> None:
    big = parse_case({"requests": [{"context_len": 9, "query_len": 40, "ranges": [[3, 30]]},
                                   {"query_len": 17, "ranges": [[0, 5], [7, 9]]}],
                      "num_heads": 8, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16",
                      "sliding_window": 20, "softcap": 5.0, "seed": 77})

    def fails(spec) -> bool:  # "a query inside a range of at least 4 tokens"
        return any(e - s >= 3 and max(s, r.context_len) <= min(e, r.seq_len - 1)
                   for r in spec.requests for s, e in r.ranges)

    small, tried = run_sync(shrink(big, _pure(fails), lambda spec: True, float("inf")), None)
    assert fails(small) and tried > 0
    assert len(small.requests) == 1 and small.requests[0].ranges == ((0, 3),)
    assert small.requests[0].query_len == 1 and small.requests[0].context_len == 0
    assert (small.num_heads, small.head_dim, small.sliding_window, small.softcap) == (
        1, 16, None, None)


def test_a_range_at_the_end_of_a_long_context_moves_forward_as_it_shrinks() -> None:
    late = parse_case({"requests": [{"context_len": 128, "query_len": 1, "ranges": [[127, 128]]}],
                       "num_heads": 1, "head_dim": 16, "dtype": "float32"})

    def fails(spec) -> bool:  # "the chunk starts inside a range"
        return any(s < r.context_len <= e for r in spec.requests for s, e in r.ranges)

    small, _ = run_sync(shrink(late, _pure(fails), lambda spec: True, float("inf")), None)
    assert small.requests[0].context_len == 1 and small.requests[0].ranges == ((0, 1),)


def test_shrinking_stops_after_max_tried_candidates() -> None:
    spec = parse_case({"requests": [{"query_len": 40, "ranges": [[3, 30]]}], "num_heads": 2,
                       "head_dim": 64, "dtype": "bfloat16"})
    _, tried = run_sync(shrink(spec, _pure(lambda s: True), lambda s: True, float("inf"),
                               max_tried=3), None)
    assert tried == 3
