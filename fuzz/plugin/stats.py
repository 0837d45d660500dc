"""pytest plugin: error-ratio statistics of property tests, merged across xdist workers.

Enabled by ``--stats-file PATH``; without it :func:`record` does nothing. Tests
call :func:`record` or :func:`record_outcome` wherever they judge a target; each
xdist worker hands its book to the controller through ``workeroutput`` and the
controller writes one merged JSON (the :class:`fuzz.records.stats.StatsBook` shape) at
session end. Registered from tests/conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from prefix_referee.fuzz.records.stats import StatsBook

if TYPE_CHECKING:
    from prefix_referee.verify.runner import Outcome

_WORKER_KEY = "fuzz_stats"
# The book of this process while a session with --stats-file runs, else None.
_book: StatsBook | None = None


def record(target: str, status: str, ratio: float | None = None) -> None:
    """One judged (or skipped) case of ``target``."""
    if _book is not None:
        _book.record(target, status, ratio)


def record_outcome(outcome: Outcome) -> None:
    """One :class:`verify.runner.Outcome`."""
    record(outcome.target, outcome.status,
           outcome.verdict.ratio if outcome.verdict is not None else None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--stats-file", metavar="PATH", default=None,
                     help="write per-target verdict counts and error ratios of the session "
                          "here (JSON, merged across xdist workers)")


def pytest_configure(config: pytest.Config) -> None:
    global _book
    _book = StatsBook() if config.getoption("stats_file") else None


def pytest_unconfigure(config: pytest.Config) -> None:
    global _book
    _book = None


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the xdist controller: fold in the book a worker sent."""
    data = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if _book is not None and data is not None:
        _book.merge(StatsBook.from_dict(data))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _book is None:
        return
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller writes
        config.workeroutput[_WORKER_KEY] = _book.to_dict()
        return
    path = Path(config.getoption("stats_file"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_book.to_dict(), indent=1) + "\n")
