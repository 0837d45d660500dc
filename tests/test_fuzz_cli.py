"""``python -m fuzz`` end to end: planted faults are found, grouped, shrunk, saved, replayed
and reported; usage and input errors are one line and exit 2.

Runs call :func:`fuzz.cli.main` in-process with a fixed seed and a case count (no time
budget), so they are deterministic; subprocess runs prove the entry point.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from prefix_referee.fuzz.cases.spaces import space_for
from prefix_referee.fuzz.cases.strategies import CPU_SPACE, cases
from prefix_referee.fuzz.cli import (
    EXIT_CLEAN,
    EXIT_FOUND,
    EXIT_USAGE,
    build_parser,
    main,
    script,
    select_targets,
)
from prefix_referee.fuzz.records.casefiles import replay_command
from prefix_referee.fuzz.report.summary import RunStatus
from prefix_referee.verify.case import CaseSpec, read_case
from prefix_referee.verify.runner import Status
from prefix_referee.verify.targets import Capabilities, available_targets

REPO = Path(__file__).resolve().parents[1]
FAULTS_FOUND = {"fault:chunk_local_position": 1, "fault:gqa_head_modulo": 6}
# A shrunk reproducer is at most this big (requests, keys).
MAX_REQUESTS, MAX_TOKENS = 2, 64
EXAMPLES = 16


def _run_dir(out: Path) -> Path:
    return out / "latest"


def _report(out: Path) -> dict:
    return {t["target"]: t for t in json.loads((_run_dir(out) / "report.json").read_text())
            ["targets"]}


def test_planted_faults_are_found_shrunk_saved_replayed_and_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junit = tmp_path / "junit.xml"
    argv = [arg for name in (*FAULTS_FOUND, "sdpa") for arg in ("--target", name)]
    assert main([*argv, "--examples", str(EXAMPLES), "--seed", "0", "--device", "cpu",
                 "--space", "cpu", "--report-dir", str(tmp_path), "--junit", str(junit)]
                ) == EXIT_FOUND
    report = _report(tmp_path)
    for target, bug_class in FAULTS_FOUND.items():
        assert report[target]["status"] == RunStatus.FAILED
        assert report[target]["findings"], report[target]
        for finding in report[target]["findings"]:
            spec = read_case(_run_dir(tmp_path).parent / finding["reproducer"]
                             if not Path(finding["reproducer"]).exists()
                             else finding["reproducer"])
            assert finding["shrunk"] and finding["fails_alone"]
            assert len(spec.requests) <= MAX_REQUESTS and spec.total_k <= MAX_TOKENS, spec
            assert spec.extra["target"] == target and spec.extra["bug_class"] == bug_class
            assert spec.extra["finding"] == finding["identity"]
            assert spec.extra["versions"]["suite"] and spec.extra["versions"]["torch"]
            assert spec.extra["replay"].startswith("prefix-fuzz replay ")
            assert main(["replay", str(spec.extra["replay"].split()[-1]), "--device",
                         "cpu"]) == EXIT_FOUND
    assert report["sdpa"]["status"] == RunStatus.CLEAN
    assert report["sdpa"]["stats"]["counts"] == {Status.PASS: EXAMPLES}
    whole = json.loads((_run_dir(tmp_path) / "report.json").read_text())
    assert whole["versions"]["torch"] == torch.__version__ and whole["policy"]
    assert whole["settings"]["space"] == "cpu" and "profile" not in whole["settings"]
    markdown = (_run_dir(tmp_path) / "report.md").read_text()
    assert all(f"| {t} |" in markdown for t in (*FAULTS_FOUND, "sdpa"))
    assert (_run_dir(tmp_path) / "ratios.png").read_bytes().startswith(b"\x89PNG")
    assert len((_run_dir(tmp_path) / "cases.jsonl").read_text().splitlines()) == 3 * EXAMPLES
    testcases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(testcases) == {*FAULTS_FOUND, "sdpa"}
    for target in FAULTS_FOUND:
        message = testcases[target].find("failure").get("message")
        assert message.startswith(report[target]["findings"][0]["finding"]), message
    assert testcases["sdpa"].find("failure") is None
    capsys.readouterr()


# A target like the Triton interpreter: few tokens, some head dims, no softcap.
NARROW = Capabilities(dtypes=frozenset({"float32", "bfloat16"}), head_dims=frozenset({16, 64}),
                      softcap=False, max_total_tokens=100)


@settings(derandomize=True, max_examples=60)
@given(cases(space_for(NARROW, CPU_SPACE)))
def test_each_target_draws_only_cases_it_accepts(spec: CaseSpec) -> None:
    assert NARROW.unsupported_reason(spec, "cpu") is None


def test_profile_is_a_hidden_alias_of_space(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--profile", "interpreter"]).space == "interpreter"
    assert parser.parse_args(["run", "--space", "gpu"]).space == "gpu"
    assert main(["run", "--help"]) == 0
    usage = " ".join(capsys.readouterr().out.split())
    assert "--space" in usage and "--profile is a deprecated alias" in usage
    assert "--profile {" not in usage and "[--profile" not in usage


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
    "seed past 2**63": ["--seed", str(2**64)],
    "unknown space": ["--space", "huge"],
    "unknown space by its old name": ["--profile", "huge"],
    "unknown model": ["--model", "gpt-7"],
    "unknown option": ["--frobnicate"],
    "devices on cpu": ["--device", "cpu", "--devices", "cuda:0"],
    "unreadable expect file": ["--expect", "no/such/file.json"],
    "replay without files": ["replay"],
    "replay of a missing file": ["replay", "no/such/case.json"],
    "golden of a target no file names": ["golden", "--device", "cpu", "--target", "nope"],
    "golden rewritten for one target": ["golden", "--regenerate", "--target", "sdpa"],
}


@pytest.mark.parametrize("argv", USAGE_ERRORS.values(), ids=USAGE_ERRORS.keys())
def test_usage_errors_exit_2_with_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("prefix-fuzz: error: ") and err.count("\n") == 1, err


INVALID_CASES: dict[str, str | bytes] = {
    "not JSON": "{requests: nope",
    "binary": bytes(range(256)) * 4,
    "missing field": json.dumps({"requests": [{"query_len": 4}], "dtype": "bfloat16",
                                 "head_dim": 64, "target": "sdpa"}),
    "bad range": json.dumps({"requests": [{"query_len": 4, "ranges": [[3, 1]]}],
                             "num_heads": 2, "head_dim": 64, "dtype": "bfloat16",
                             "target": "sdpa"}),
    "huge": json.dumps({"requests": [{"query_len": 10**7}], "num_heads": 2, "head_dim": 64,
                        "dtype": "bfloat16", "target": "sdpa"}),
    "no target annotation": json.dumps({"requests": [{"query_len": 4}], "num_heads": 2,
                                        "head_dim": 64, "dtype": "bfloat16"}),
    "unknown annotated target": json.dumps({"requests": [{"query_len": 4}], "num_heads": 2,
                                            "head_dim": 64, "dtype": "bfloat16",
                                            "target": "no_such_target"}),
}


@pytest.mark.parametrize("content", INVALID_CASES.values(), ids=INVALID_CASES.keys())
def test_invalid_case_files_exit_2_with_one_line(content: str | bytes, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert main(["replay", str(path), "--device", "cpu"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("prefix-fuzz: error: ") and err.count("\n") == 1, err


def test_utf16_case_files_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps({"requests": [{"query_len": 4, "ranges": [[1, 2]]}],
                                "num_heads": 2, "head_dim": 16, "dtype": "float32",
                                "target": "sdpa"}), encoding="utf-16")
    assert main(["replay", str(path), "--device", "cpu"]) == EXIT_CLEAN
    assert "sdpa: PASS" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_requested_without_a_device_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cuda", "--examples", "1"]) == EXIT_USAGE
    assert "no CUDA device" in capsys.readouterr().err


def test_python_dash_m_fuzz_and_its_version(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fuzz", "--target", "fault:gqa_head_modulo", "--examples", "4",
         "--shrink-budget", "1e-9", "--seed", "0", "--device", "cpu",
         "--report-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == EXIT_FOUND, result.stderr
    assert "fault:gqa_head_modulo" in result.stdout and "failed" in result.stdout
    finding = _report(tmp_path)["fault:gqa_head_modulo"]["findings"][0]
    assert finding["finding"] == "values: gqa" and finding["shrink_cases"] == 0
    assert main(["--version"]) == 0  # tests/test_wheel.py runs it from the installed wheel
    version = capsys.readouterr().out
    assert version.startswith("prefix-attention-referee ") and "torch" in version


def test_case_description_names_every_option_that_changes_the_computation() -> None:
    from prefix_referee.fuzz.records.casefiles import describe_case
    from prefix_referee.verify import parse_case

    spec = parse_case({"requests": [{"context_len": 3, "query_len": 5, "ranges": [[1, 6]]}],
                       "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "head_dim_v": 32,
                       "dtype": "float16", "page_size": 16, "sliding_window": 4,
                       "clamp_ranges_to_window": True, "softcap": 5.0, "softmax_scale": 0.25,
                       "value_distribution": "peaky", "poison": "nan", "seed": 9,
                       "page_table_slack": 2, "range_padding": "zero"})
    assert describe_case(spec) == (
        "1 req (3+5 [1, 6]), float16, 4/2 heads, D 64/32, page 16, window 4 clamped, "
        "softcap 5, scale 0.25, peaky, nan poison, 2 slack page columns, zero range padding, "
        "seed 9")


@pytest.mark.parametrize("space", ["cpu", "interpreter"])
def test_a_key_loop_stopping_at_the_128_row_tile_is_found(space: str, tmp_path: Path) -> None:
    """Kernels tile by 64 or 128 rows: every space draws images across those edges, the
    Triton interpreter's (short cases) too, rarely (seeds 0-4: ``python -m
    benchmarks.finding_identity --faults causal_tile_key_loop_128 --space interpreter``)."""
    seed = 0
    assert main(["--target", "fault:causal_tile_key_loop_128", "--examples", "150",
                 "--space", space, "--seed", str(seed), "--device", "cpu",
                 "--max-findings", "1", "--shrink-budget", "1", "--no-plots",
                 "--report-dir", str(tmp_path)]) == EXIT_FOUND
    finding = _report(tmp_path)["fault:causal_tile_key_loop_128"]["findings"][0]["finding"]
    assert "range_across_tile" in finding, finding


@pytest.mark.parametrize("seed", range(3))
def test_a_bug_at_one_gqa_ratio_is_found_on_every_seed(seed: int, tmp_path: Path) -> None:
    """A kernel that compiles nothing meets a fresh configuration every pack (seeds 0-4 with
    every single-cause fault: ``python -m benchmarks.finding_identity``)."""
    assert main(["--target", "fault:gqa_ratio_4", "--examples", "150", "--seed", str(seed),
                 "--device", "cpu", "--max-findings", "1", "--shrink-budget", "1",
                 "--no-plots", "--report-dir", str(tmp_path)]) == EXIT_FOUND


def test_prefix_fuzz_imports_targets_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``python -m`` does, though a console script's path starts at its bin/."""
    (tmp_path / "mykernel.py").write_text(
        "from prefix_referee.verify.targets import get_target\n\n"
        "def correct(case):\n    return get_target('reference').run(case)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert script(["--target", "mykernel:correct", "--examples", "3", "--min-cases", "3",
                   "--device", "cpu", "--isolation", "none", "--no-plots", "--seed", "0",
                   "--report-dir", str(tmp_path / "out")]) == EXIT_CLEAN


@pytest.mark.parametrize(("target", "pythonpath"), [
    ("tests.hostile:adds_one", "PYTHONPATH=. "),
    ("verify.targets.faults:lse_base2", "PYTHONPATH=. "),  # imported by its old name
    ("prefix_referee.verify.targets.faults:lse_base2", ""),
])
def test_a_replay_command_says_the_pythonpath_its_target_needs(target: str, pythonpath: str,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.chdir(REPO)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        importlib.import_module(target.partition(":")[0])
    assert replay_command(target, REPO / "r.json") == f"{pythonpath}prefix-fuzz replay r.json"
