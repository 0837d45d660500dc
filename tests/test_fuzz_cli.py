"""``python -m fuzz`` end to end: planted faults are found, shrunk, saved and replayed.

Runs call :func:`fuzz.cli.main` in-process with a fixed seed and an example count
(no time budget), so they are deterministic; one subprocess run proves the entry
point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from fuzz.cli import main, select_targets
from fuzz.spaces import space_for
from fuzz.strategies import CPU_SPACE, cases
from verify.case import CaseSpec, read_case
from verify.targets import Capabilities, available_targets

REPO = Path(__file__).resolve().parents[1]
FAULTS_FOUND = {"fault:chunk_local_position": 1, "fault:gqa_head_modulo": 6}
# A shrunk reproducer is at most this big (requests, keys).
MAX_REQUESTS, MAX_TOKENS = 2, 64
# Cases per target: enough for both faults to show up with seed 0.
EXAMPLES = 10


def _report(out: Path) -> dict:
    return {t["target"]: t for t in json.loads((out / "report.json").read_text())["targets"]}


def _assert_found_and_shrunk(out: Path) -> list[str]:
    """Each planted fault failed with a small annotated reproducer; sdpa stayed clean."""
    report = _report(out)
    reproducers = []
    for target, bug_class in FAULTS_FOUND.items():
        assert report[target]["status"] == "failed"
        reproducers.append(report[target]["failure"]["reproducer"])
        spec = read_case(reproducers[-1])
        assert len(spec.requests) <= MAX_REQUESTS and spec.total_k <= MAX_TOKENS, spec
        assert spec.extra["target"] == target
        assert spec.extra["bug_class"] == bug_class
        assert spec.extra["diagnosis"].startswith(f"{target}: FAIL")
    assert report["sdpa"]["status"] == "clean"
    assert report["sdpa"]["stats"]["counts"] == {"pass": EXAMPLES}
    return reproducers


def _assert_reports(out: Path, junit: Path) -> None:
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] is True
    assert report["settings"]["seed"] == 0
    markdown = (out / "report.md").read_text()
    for target in (*FAULTS_FOUND, "sdpa"):
        assert f"| {target} |" in markdown
    assert "python -m fuzz replay" in markdown
    assert (out / "ratios.png").read_bytes().startswith(b"\x89PNG")
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {*FAULTS_FOUND, "sdpa"}
    for target in FAULTS_FOUND:
        assert cases[target].find("failure").get("message").startswith(f"{target}: FAIL")
    assert cases["sdpa"].find("failure") is None


def test_planted_faults_are_found_shrunk_saved_replayed_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "junit.xml"
    argv = [arg for name in (*FAULTS_FOUND, "sdpa") for arg in ("--target", name)]
    assert main([*argv, "--examples", str(EXAMPLES), "--seed", "0", "--device", "cpu",
                 "--report-dir", str(tmp_path), "--junit", str(junit)]) == 1
    reproducers = _assert_found_and_shrunk(tmp_path)
    _assert_reports(tmp_path, junit)
    capsys.readouterr()
    for target, reproducer in zip(FAULTS_FOUND, reproducers, strict=True):
        assert main(["replay", reproducer, "--device", "cpu"]) == 1
        assert main(["replay", reproducer, "--target", "sdpa", "--device", "cpu"]) == 0
        printed = capsys.readouterr().out
        assert f"{target}: FAIL" in printed and "sdpa: PASS" in printed


# A target like the Triton interpreter: few tokens, some head dims, no softcap.
NARROW = Capabilities(dtypes=frozenset({"float32", "bfloat16"}), head_dims=frozenset({16, 64}),
                      softcap=False, max_total_tokens=100)


@settings(derandomize=True, max_examples=60)
@given(cases(space_for(NARROW, CPU_SPACE)))
def test_each_target_draws_only_cases_it_accepts(spec: CaseSpec) -> None:
    assert NARROW.unsupported_reason(spec, "cpu") is None


def test_default_targets_are_every_available_one() -> None:
    assert [t.name for t in select_targets(None, "cpu")] == available_targets("cpu")


USAGE_ERRORS = {
    "unknown target": ["--target", "no_such_target"],
    "unknown fault": ["--target", "fault:bogus"],
    "unloadable module:callable": ["--target", "no_such_module:attention"],
    "zero budget": ["--budget", "0"],
    "negative budget": ["--budget", "-5"],
    "non-numeric budget": ["--budget", "soon"],
    "fractional examples": ["--examples", "2.5"],
    "unknown profile": ["--profile", "huge"],
    "unknown option": ["--frobnicate"],
    "replay without files": ["replay"],
    "replay of a missing file": ["replay", "no/such/case.json"],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m fuzz: error: ") and err.count("\n") == 1, err


INVALID_CASES = {
    "not JSON": "{requests: nope",
    "missing field": json.dumps({"requests": [{"query_len": 4}], "dtype": "bfloat16",
                                 "head_dim": 64, "target": "sdpa"}),
    "bad range": json.dumps({"requests": [{"query_len": 4, "ranges": [[3, 1]]}],
                             "num_heads": 2, "head_dim": 64, "dtype": "bfloat16",
                             "target": "sdpa"}),
    "no target annotation": json.dumps({"requests": [{"query_len": 4}], "num_heads": 2,
                                        "head_dim": 64, "dtype": "bfloat16"}),
    "unknown annotated target": json.dumps({"requests": [{"query_len": 4}], "num_heads": 2,
                                            "head_dim": 64, "dtype": "bfloat16",
                                            "target": "no_such_target"}),
}


@pytest.mark.parametrize("text", INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_invalid_case_files_exit_2_with_one_line(text: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.json"
    path.write_text(text)
    assert main(["replay", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m fuzz: error: ") and err.count("\n") == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_requested_without_a_device_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--examples", "1"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_python_dash_m_fuzz_with_shrinking_cut_short(tmp_path: Path) -> None:
    """The entry point; and past --shrink-budget no new case runs, yet the failure is kept."""
    result = subprocess.run(
        [sys.executable, "-m", "fuzz", "--target", "fault:gqa_head_modulo", "--examples", "8",
         "--budget", "60", "--shrink-budget", "1e-9", "--seed", "0", "--device", "cpu",
         "--report-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert "fault:gqa_head_modulo" in result.stdout and "failed" in result.stdout
    failure = _report(tmp_path)["fault:gqa_head_modulo"]["failure"]
    assert failure["shrink_cases"] == 0
    assert main(["replay", failure["reproducer"], "--device", "cpu"]) == 1


def test_case_description_names_every_option_that_changes_the_computation() -> None:
    from fuzz.casefiles import describe_case
    from verify import parse_case

    spec = parse_case({"requests": [{"context_len": 3, "query_len": 5, "ranges": [[1, 6]]}],
                       "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "head_dim_v": 32,
                       "dtype": "float16", "page_size": 16, "sliding_window": 4,
                       "clamp_ranges_to_window": True, "softcap": 5.0, "softmax_scale": 0.25,
                       "value_profile": "peaky", "poison": "nan", "seed": 9})
    assert describe_case(spec) == (
        "1 req (3+5 [1, 6]), float16, 4/2 heads, D 64/32, page 16, window 4 clamped, "
        "softcap 5, scale 0.25, peaky, nan poison, seed 9")
