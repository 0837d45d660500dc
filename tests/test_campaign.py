"""One run reports every distinct bug: exploration goes on after a failure, failures are
grouped by signature, known ones are accepted without masking new ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.cli import EXIT_CLEAN, EXIT_FOUND, main
from fuzz.loop.shrink import shrink
from fuzz.report.summary import RunStatus
from verify import parse_case

TWO_BUGS = "tests.buggy:two_bugs"
RUN = ["--examples", "48", "--seed", "3", "--device", "cpu", "--shrink-budget", "1",
       "--max-failures", "100"]


def _target(report_dir: Path) -> dict:
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    return report["targets"][0]


def test_every_distinct_bug_is_reported_and_known_ones_are_accepted(tmp_path: Path) -> None:
    assert main(["--target", TWO_BUGS, *RUN, "--report-dir", str(tmp_path / "a")]) == EXIT_FOUND
    failures = _target(tmp_path / "a")["failures"]
    kinds = {f["signature"].split("|")[0] for f in failures}
    assert {"out", "lse"} <= kinds, kinds
    assert _target(tmp_path / "a")["judged"] == 48  # exploration went on after the first

    known = tmp_path / "known.json"
    expected = [{"target": TWO_BUGS, "signature": f["signature"]} for f in failures]
    known.write_text(json.dumps({"expected": expected[1:]}))
    assert main(["--target", TWO_BUGS, *RUN, "--report-dir", str(tmp_path / "b"),
                 "--expect-failures", str(known)]) == EXIT_FOUND  # the first is still new
    known.write_text(json.dumps({"expected": expected}))
    assert main(["--target", TWO_BUGS, *RUN, "--report-dir", str(tmp_path / "c"),
                 "--expect-failures", str(known)]) == EXIT_CLEAN
    assert _target(tmp_path / "c")["status"] == RunStatus.EXPECTED


def test_a_reproducer_names_its_expected_failure(tmp_path: Path) -> None:
    assert main(["--target", "fault:lse_base2", *RUN, "--report-dir", str(tmp_path / "a"),
                 "--max-failures", "1"]) == EXIT_FOUND
    failure = _target(tmp_path / "a")["failures"][0]
    reproducer = Path(failure["reproducer"])
    if not reproducer.is_absolute():
        reproducer = Path.cwd() / reproducer
    assert main(["--target", "fault:lse_base2", *RUN, "--report-dir", str(tmp_path / "b"),
                 "--max-failures", "1", "--expect-failures", str(reproducer)]) in (
                     EXIT_CLEAN, EXIT_FOUND)
    assert any(f["expected"] for f in _target(tmp_path / "b")["failures"])


def test_max_failures_stops_a_target_early(tmp_path: Path) -> None:
    assert main(["--target", TWO_BUGS, *RUN, "--max-failures", "1",
                 "--report-dir", str(tmp_path)]) == EXIT_FOUND
    assert _target(tmp_path)["judged"] < 48


@pytest.mark.parametrize("bad", ['{"expected": [{"target": "x"}]}', '[1, 2]', '{"requests": []}'])
def test_unreadable_expectations_are_usage_errors(bad: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "known.json"
    path.write_text(bad)
    assert main(["--target", "sdpa", *RUN, "--expect-failures", str(path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_shrinking_keeps_the_smallest_case_that_still_fails() -> None:
    big = parse_case({"requests": [{"context_len": 9, "query_len": 40, "ranges": [[3, 30]]},
                                   {"query_len": 17, "ranges": [[0, 5], [7, 9]]}],
                      "num_heads": 8, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16",
                      "sliding_window": 20, "softcap": 5.0, "seed": 77})

    def fails(spec) -> bool:  # "a query inside a range of at least 4 tokens"
        return any(e - s >= 3 and max(s, r.context_len) <= min(e, r.seq_len - 1)
                   for r in spec.requests for s, e in r.ranges)

    small, tried = shrink(big, fails, lambda spec: True, deadline=float("inf"))
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

    small, _ = shrink(late, fails, lambda spec: True, deadline=float("inf"))
    assert small.requests[0].context_len == 1 and small.requests[0].ranges == ((0, 1),)
