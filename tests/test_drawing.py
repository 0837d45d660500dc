"""Scale-out (docs/design.md): a seed names one stream whatever is imported and whichever
thread draws it; each worker has its own stream, drawn ahead in a thread, and compiles
only the configurations its own stream drew."""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from prefix_referee.fuzz.cases.drawing import DrawnAhead
from prefix_referee.fuzz.cases.strategies import CPU_SPACE
from prefix_referee.fuzz.cases.stream import CaseStream
from prefix_referee.fuzz.cli import main as fuzz
from prefix_referee.fuzz.loop import campaign
from tests import compiling


def _stream(seed: int = 0) -> CaseStream:
    return CaseStream([CPU_SPACE], lambda spec: None, seed, pack_cases=8, pack_tokens=1024)


def _packs(stream, count: int = 12) -> list[list[str]]:
    return [[spec.to_json() for spec in stream.next_pack()] for _ in range(count)]


def test_drawn_ahead_hands_out_the_streams_own_packs() -> None:
    ahead = DrawnAhead(_stream(seed=5))
    try:
        assert _packs(ahead) == _packs(_stream(seed=5))
        assert ahead.drawn > 0
    finally:
        ahead.close()


class _Exhausted:
    """A stream whose space holds nothing the target accepts."""

    drawn, declined = 0, Counter()

    def next_pack(self):
        raise RuntimeError("the space yields no new case the target accepts")


def test_a_stream_that_cannot_draw_raises_in_the_campaign_every_time() -> None:
    ahead = DrawnAhead(_Exhausted())
    for _ in range(2):
        with pytest.raises(RuntimeError, match="no new case"):
            ahead.next_pack()
    ahead.close()


def test_closing_stops_a_thread_that_is_ahead() -> None:
    ahead = DrawnAhead(_stream())
    ahead.next_pack()
    ahead.close()
    assert ahead._thread is not None and not ahead._thread.is_alive()
    DrawnAhead(_stream()).close()  # never started: nothing to stop


def test_a_seed_names_one_stream_whatever_is_imported(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = _packs(_stream(seed=9), 24)
    # Hypothesis' own provider would now draw these literals now and then.
    literals = ", ".join(str(n) for n in range(3, 2000, 7))
    (tmp_path / "literal_heavy.py").write_text(f"LITERALS = [{literals}]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("literal_heavy")
    try:
        assert _packs(_stream(seed=9), 24) == before
    finally:
        sys.modules.pop("literal_heavy", None)


def test_each_worker_compiles_only_what_its_own_stream_drew(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: dict[int, set] = defaultdict(set)
    compiled: list[tuple[int, str]] = []
    next_pack, on_compile = campaign.Campaign._next_pack, campaign.Campaign._compiled

    def recording_next_pack(self, slot, limit):
        cases = next_pack(self, slot, limit)
        drawn[slot].update(repr(compiling.compile_key(spec)) for spec in cases)
        return cases

    def recording_compile(self, result, slot):
        compiled.append((slot, result.compile_key))
        on_compile(self, result, slot)

    monkeypatch.setattr(campaign.Campaign, "_next_pack", recording_next_pack)
    monkeypatch.setattr(campaign.Campaign, "_compiled", recording_compile)
    assert fuzz(["--target", "tests.compiling:kernel", "--workers", "2", "--examples", "120",
                 "--seed", "4", "--device", "cpu", "--no-plots",
                 "--report-dir", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latest" / "report.json").read_text())
    assert report["settings"]["workers"] == 2 and set(drawn) == {0, 1}
    assert drawn[0] != drawn[1]  # two streams, not one dealt out
    assert len(compiled) == len(set(compiled)) == report["targets"][0]["compiles"]
    for slot, key in compiled:  # where its stream drew it, never in the other worker
        assert key in drawn[slot]
