"""The referee survives the kernels it judges: every hostile kernel ends in a verdict for it
alone, the other targets' verdicts and the report survive, and exit codes tell the truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.cli import EXIT_FOUND, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED, EXIT_USAGE, main
from fuzz.report.summary import RunStatus
from verify.runner import Status

REPO = Path(__file__).resolve().parents[1]
RUN = ["--seed", "0", "--device", "cpu", "--min-cases", "1", "--shrink-budget", "2"]


def _report(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "report.json").read_text())


def _targets(report_dir: Path) -> dict:
    return {t["target"]: t for t in _report(report_dir)["targets"]}


@pytest.mark.parametrize(("kernel", "kind", "words"), [
    ("writes_into_k", "mutated-input", "wrote into its input k"),
    ("writes_into_k_first", "mutated-input", "wrote into its input k"),
    ("calls_sys_exit", "exit", "sys.exit(0)"),
    ("calls_os_exit", "crash", "exit code 0"),
    ("segfaults", "crash", "SIGSEGV"),
    ("returns_numpy", "contract", "ndarray, expected a torch.Tensor"),
    ("returns_wrong_shape", "contract", "out has shape"),
    ("raises", "error:RuntimeError", "illegal memory access"),
])
def test_hostile_kernel_is_blamed_alone(kernel: str, kind: str, words: str, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", f"tests.hostile:{kernel}", "--target", "sdpa", "--examples", "4",
                 *RUN, "--report-dir", str(tmp_path)])
    assert code == EXIT_FOUND
    targets = _targets(tmp_path)
    hostile, innocent = targets[f"tests.hostile:{kernel}"], targets["sdpa"]
    assert hostile["status"] == RunStatus.FAILED
    finding = hostile["findings"][0]
    assert finding["finding"].startswith(f"{kind}:") and words in finding["diagnosis"]
    assert Path(finding["reproducer"]).is_file() or (tmp_path / finding["reproducer"]).exists()
    assert innocent["status"] == RunStatus.CLEAN and innocent["stats"]["counts"] == {Status.PASS: 4}


def test_hang_times_out_the_worker_restarts_and_the_run_goes_on(tmp_path: Path) -> None:
    code = main(["--target", "tests.hostile:hangs", "--target", "sdpa", "--examples", "2",
                 "--case-timeout", "1", *RUN, "--report-dir", str(tmp_path)])
    assert code == EXIT_FOUND
    targets = _targets(tmp_path)
    assert targets["tests.hostile:hangs"]["findings"][0]["finding"] == "timeout: untriaged"
    assert targets["tests.hostile:hangs"]["worker_restarts"] >= 1
    assert targets["sdpa"]["status"] == RunStatus.CLEAN


def test_too_few_judged_cases_are_inconclusive_not_clean(tmp_path: Path) -> None:
    """A kernel slow enough to be judged on one pack in the budget proves nothing."""
    code = main(["--target", "tests.hostile:slow", "--budget", "0.2", "--seed", "0",
                 "--min-cases", "50", "--device", "cpu", "--report-dir", str(tmp_path)])
    assert code == EXIT_INCONCLUSIVE
    target = _targets(tmp_path)["tests.hostile:slow"]
    assert target["status"] == RunStatus.INCONCLUSIVE and 0 < target["judged"] < 50


def test_what_a_kernel_prints_goes_to_the_worker_log(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "tests.hostile:prints", "--examples", "2", *RUN,
                 "--report-dir", str(tmp_path)]) == 0
    assert "kernel says hello" not in capsys.readouterr().out
    assert "kernel says hello" in (tmp_path / "latest" / "workers.log").read_text()


def test_two_runs_in_one_report_dir_keep_both(tmp_path: Path) -> None:
    for _ in range(2):
        assert main(["--target", "sdpa", "--examples", "2", *RUN,
                     "--report-dir", str(tmp_path)]) == 0
    runs = sorted(p for p in tmp_path.iterdir() if p.name.startswith("run-"))
    assert len(runs) == 2 and all((run / "report.json").is_file() for run in runs)


@pytest.mark.parametrize("what", ["report dir is a file", "junit is a directory"])
def test_unusable_outputs_fail_before_the_run(what: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    if what == "report dir is a file":
        blocker.write_text("")
        argv = ["--report-dir", str(blocker)]
    else:
        blocker.mkdir()
        argv = ["--report-dir", str(tmp_path / "out"), "--junit", str(blocker)]
    start = time.monotonic()
    assert main(["--target", "sdpa", "--examples", "2", *RUN, *argv]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("python -m fuzz: error: ") and err.count("\n") == 1, err
    assert time.monotonic() - start < 5  # before any case ran


def _reproducer(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "repro.json"
    path.write_text(json.dumps({"requests": [{"query_len": 4, "ranges": [[1, 2]]}],
                                "num_heads": 2, "head_dim": 16, "dtype": "float32",
                                "target": target}))
    return path


def test_replay_of_a_target_that_cannot_load_exits_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _reproducer(tmp_path, "no_such_module:attention")
    assert main(["replay", str(path), "--device", "cpu"]) == EXIT_USAGE
    assert "cannot load no_such_module:attention" in capsys.readouterr().err


@pytest.mark.parametrize("kernel", ["calls_sys_exit", "segfaults", "adds_one"])
def test_replay_of_a_hostile_kernel_exits_1(kernel: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = _reproducer(tmp_path, f"tests.hostile:{kernel}")
    assert main(["replay", str(path), "--device", "cpu"]) == EXIT_FOUND
    assert f"tests.hostile:{kernel}: " in capsys.readouterr().out


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_writes_its_partial_report_and_exits_130(stop: signal.Signals,
                                                                 tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "--target", "tests.hostile:slow", "--budget", "120",
         "--seed", "0", "--device", "cpu", "--report-dir", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    cases = None
    while time.monotonic() < deadline:
        cases = next(tmp_path.glob("run-*/cases.jsonl"), None)
        if cases is not None and cases.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    process.send_signal(stop)
    out, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    report = _report(tmp_path)
    assert report["interrupted"] is True
    assert report["targets"][0]["judged"] >= 1
    assert "interrupted" in out
