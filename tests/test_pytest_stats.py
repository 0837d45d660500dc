"""The --stats-file plugin: one merged JSON per session, whatever the xdist layout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefix_referee.fuzz.records.stats import StatsBook

REPO = Path(__file__).resolve().parents[1]

# Each test records like a property test would. Outcomes are stand-ins with the fields
# record_outcome reads, so the inner processes need not import torch.
INNER_TESTS = '''
from types import SimpleNamespace as Outcome

from prefix_referee.fuzz.plugin.stats import record, record_outcome


def test_pass():
    record("sdpa", "pass", 0.5)


def test_fail():
    record("sdpa", "fail", float("inf"))


def test_skip():
    record("flex", "skip")


def test_outcomes():
    record_outcome(Outcome(target="flex", status="pass", verdict=Outcome(ratio=1.25)))
    record_outcome(Outcome(target="flex", status="error", verdict=None))
'''


def _run_inner(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(INNER_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
         "prefix_referee.fuzz.plugin.stats", "--rootdir", str(tmp_path), *options, "test_inner.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)


def _expected(copies: int) -> dict:
    book = StatsBook()
    for _ in range(copies):
        for target, status, ratio in [("sdpa", "pass", 0.5), ("sdpa", "fail", float("inf")),
                                      ("flex", "skip", None), ("flex", "pass", 1.25),
                                      ("flex", "error", None)]:
            book.record(target, status, ratio)
    return book.to_dict()


@pytest.mark.parametrize(("options", "copies"), [
    ((), 1),
    # --dist each runs every test on both workers: the file must hold both books.
    (("-n", "2", "--dist", "each"), 2),
], ids=["single process", "two xdist workers"])
def test_stats_file_merges_every_process(tmp_path: Path, options: tuple[str, ...],
                                         copies: int) -> None:
    stats_file = tmp_path / "out" / "stats.json"
    result = _run_inner(tmp_path, "--stats-file", str(stats_file), *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(stats_file.read_text()) == _expected(copies)


def test_nothing_is_written_without_the_option(tmp_path: Path) -> None:
    result = _run_inner(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not list(tmp_path.rglob("*.json"))


def test_book_round_trips_and_merges() -> None:
    book = StatsBook()
    book.record("t", "pass", 0.123456)
    book.record("t", "fail", float("inf"))
    again = StatsBook.from_dict(json.loads(json.dumps(book.to_dict())))
    again.merge(book)
    stats = again.targets["t"]
    assert (stats.cases, stats.ratios, stats.nonfinite) == (4, [0.1235, 0.1235], 2)
    assert again.to_dict()["targets"]["t"]["max_ratio"] == 0.1235


def test_statuses_are_counted_by_their_value() -> None:
    """A Status and its string are one key, and the JSON keeps the plain string."""
    from prefix_referee.verify.runner import Status

    book = StatsBook()
    book.record("t", Status.PASS, 0.5)
    book.record("t", "pass", 0.5)
    counts = book.to_dict()["targets"]["t"]["counts"]
    assert counts == {"pass": 2} and type(next(iter(counts))) is str
    assert json.dumps(counts) == '{"pass": 2}'
