"""The gate replays golden/: every expected verdict, on every target that can run here.

Targets that are not registered, not available here or decline a case are skipped
with the reason, so the GPU tier replays the same files for FA4 and compiled Triton.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from prefix_referee.fuzz.golden.cases import FAULT_CASES, edge_cases
from prefix_referee.fuzz.golden.replay import (
    GOLDEN_DIR,
    check_expectation,
    expectations,
    golden_files,
)
from prefix_referee.fuzz.plugin.stats import record_outcome
from prefix_referee.verify.case import read_case
from prefix_referee.verify.materialize import MaterializedCase, materialize
from prefix_referee.verify.runner import Status, TruthCache
from prefix_referee.verify.targets.faults import FAULTS

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FILES = golden_files()
# Whole golden/ stays reviewable (and cheap to replay in the gate).
MAX_GOLDEN_BYTES = 1 << 20


@functools.cache
def _replay_state(path: Path) -> tuple[MaterializedCase, TruthCache]:
    """One materialized case and one truth cache per file, shared by its targets."""
    return materialize(read_case(path), DEVICE), TruthCache()


def _expected_verdicts() -> list:
    return [pytest.param(path, target, verdict, id=f"{path.stem}:{target}")
            for path in FILES for target, verdict in expectations(read_case(path)).items()]


@pytest.mark.parametrize(("path", "target", "verdict"), _expected_verdicts())
def test_golden_verdict(path: Path, target: str, verdict: str) -> None:
    case, truths = _replay_state(path)
    check = check_expectation(target, verdict, case, truths)
    if check.skip_reason is not None:
        pytest.skip(f"{target}: {check.skip_reason}")
    record_outcome(check.outcome)
    assert check.matches, f"{path.name}: {check.describe()}"


def test_golden_dir_is_in_sync_with_the_curated_cases() -> None:
    """golden/ holds exactly the curated cases (else: python -m fuzz golden --regenerate)."""
    curated = {f"{g.name}.json": g.spec for g in (*FAULT_CASES, *edge_cases())}
    assert sorted(p.name for p in FILES) == sorted(curated)
    for path in FILES:
        assert read_case(path) == curated[path.name], f"{path.name} differs from its curated case"


def test_every_planted_fault_has_a_golden_case_that_catches_it() -> None:
    """Per fault: a file where it must fail while the exact engines must pass."""
    for name, fault in FAULTS.items():
        spec = read_case(GOLDEN_DIR / f"fault-{name}.json")
        expect = expectations(spec)
        assert expect.get(f"fault:{name}") == Status.FAIL, name
        assert expect.get("reference") == expect.get("flex") == Status.PASS, name
        assert spec.extra.get("bug_class") == fault.bug_class, name


def test_golden_files_are_small() -> None:
    assert sum(p.stat().st_size for p in FILES) < MAX_GOLDEN_BYTES
