"""The referee survives the kernels it judges: every hostile kernel ends in a verdict for it
alone, the other targets' verdicts and the report survive, and exit codes tell the truth.

Each kernel of tests/hostile.py (and tests/hostile_gpu.py, on a GPU) does one hostile
thing; tests/test_containment.py checks the pieces that confine them one by one."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prefix_referee.fuzz.cli import (
    EXIT_FOUND,
    EXIT_INCONCLUSIVE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    main,
)
from prefix_referee.fuzz.loop.workers import WorkerPool
from prefix_referee.fuzz.records import journal
from prefix_referee.fuzz.report.summary import RunStatus
from prefix_referee.verify.limits import memory_limit
from prefix_referee.verify.runner import Status
from tests.hostile import HOSTILE

REPO = Path(__file__).resolve().parents[1]
RUN = ["--seed", "0", "--device", "cpu", "--min-cases", "1", "--shrink-budget", "2",
       "--no-plots"]


def _report(report_dir: Path) -> dict:
    return json.loads((report_dir / "latest" / "report.json").read_text())


def _targets(report_dir: Path) -> dict:
    return {t["target"]: t for t in _report(report_dir)["targets"]}


# Every hostile kernel of tests/hostile.py but the shared-memory hog (each of its triage
# runs fills half a gigabyte; tests/test_containment.py runs it) between two well-behaved
# targets, and what its run must report.
MIXED = [k for k in HOSTILE if k != "maps_shared_memory"]
WELL_BEHAVED = ["sdpa", "reference"]
WORDS = {
    "writes_into_k": "wrote into its input k", "writes_into_k_first": "wrote into its input k",
    "calls_sys_exit": "sys.exit(0)", "calls_os_exit": "exit code 0", "segfaults": "SIGSEGV",
    "hangs": "--case-timeout 2", "returns_numpy": "ndarray, expected a torch.Tensor",
    "returns_wrong_shape": "out has shape", "raises": "illegal memory access",
    "allocates_without_bound": "can't allocate memory",
    "changes_process_state": "torch.get_default_dtype() torch.float32 -> torch.float64",
    "spawns_process": "left 1 process (python", "spawns_detached_process": "left 1 process",
    "writes_after_return": "out changed after its call returned",
}
# Short: each kernel's finding is triaged once (some dozen runs) and barely shrunk; seed 7
# draws cases small enough to triage quickly.
MIX = ["--seed", "7", "--device", "cpu", "--min-cases", "1", "--examples", "2",
       "--case-timeout", "2", "--worker-memory", "1G", "--max-findings", "1",
       "--shrink-budget", "0.5", "--no-plots"]


def _verdicts(report_dir: Path, targets: list[str]) -> dict[str, list[dict]]:
    """Each target's lines of cases.jsonl, in order, without their timings."""
    found: dict[str, list[dict]] = {t: [] for t in targets}
    for line in (report_dir / "latest" / "cases.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["target"] in found:
            found[record["target"]].append({k: v for k, v in record.items() if k != "seconds"})
    return found


def _stray_children() -> list[int]:
    """Processes the kernels of tests/hostile.py started for this process's runs, alive."""
    marker = f"hostile-child-of-{os.getpid()}".encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().split(b"\0"):
                state = (cmdline.parent / "stat").read_text().rpartition(")")[2].split()[0]
                found += [] if state in "ZX" else [int(cmdline.parent.name)]
        except OSError:
            continue
    return found


def test_hostile_kernels_are_blamed_alone_and_the_other_verdicts_stand(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One run with every hostile kernel between sdpa and reference: each kernel's finding
    says what it did, and sdpa's and reference's verdicts are those of the same seed
    without the hostile kernels, case by case."""
    mixed = [WELL_BEHAVED[0], *(f"tests.hostile:{k}" for k in MIXED), WELL_BEHAVED[1]]
    code = main([*(a for t in mixed for a in ("--target", t)), *MIX,
                 "--report-dir", str(tmp_path / "mixed")])
    assert code == EXIT_FOUND
    said = capsys.readouterr().out
    assert "kernel says hello" not in said
    assert "tests.hostile:leaves_thread: workers replaced: 1 x the target left 1 thread " \
           "running (Thread-" in said
    assert main([*(a for t in WELL_BEHAVED for a in ("--target", t)), *MIX,
                 "--report-dir", str(tmp_path / "alone")]) == 0
    targets = _targets(tmp_path / "mixed")
    for kernel in MIXED:
        run, symptom = targets[f"tests.hostile:{kernel}"], HOSTILE[kernel]
        if symptom is None:
            assert run["status"] == RunStatus.CLEAN, (kernel, run["findings"])
            continue
        assert run["status"] == RunStatus.FAILED, kernel
        finding = run["findings"][0]
        assert finding["identity"]["symptom"] == symptom, (kernel, finding["finding"])
        assert WORDS.get(kernel, "") in finding["diagnosis"], (kernel, finding["diagnosis"])
        assert Path(finding["reproducer"]).is_file(), kernel
    for kernel in ("hangs", "segfaults", "allocates_without_bound", "leaves_thread",
                   "writes_after_return"):
        assert targets[f"tests.hostile:{kernel}"]["worker_restarts"] >= 1, kernel
    for name in WELL_BEHAVED:
        assert targets[name]["status"] == RunStatus.CLEAN
        assert targets[name]["stats"]["counts"] == {Status.PASS: 2}
    assert (_verdicts(tmp_path / "mixed", WELL_BEHAVED)
            == _verdicts(tmp_path / "alone", WELL_BEHAVED))
    log = (tmp_path / "mixed" / "latest" / "workers.log").read_text()
    assert "kernel says hello" in log
    assert "is replaced: the target left 1 thread running" in log
    assert not _stray_children()


def test_process_wide_state_a_kernel_changes_is_put_back_in_process(tmp_path: Path) -> None:
    """With --isolation none every target shares this process: a kernel that changes its
    default dtype and device, thread count, backend flags, environment, working directory
    and generators between sdpa and reference changes none of their verdicts."""
    hostile = ["tests.hostile:changes_process_state", "tests.hostile:draws_random_numbers"]
    mixed = [WELL_BEHAVED[0], *hostile, WELL_BEHAVED[1]]
    cwd, dtype = os.getcwd(), torch.get_default_dtype()
    code = main([*(a for t in mixed for a in ("--target", t)), "--isolation", "none", *MIX,
                 "--report-dir", str(tmp_path / "mixed")])
    assert code == EXIT_FOUND
    assert (os.getcwd(), torch.get_default_dtype()) == (cwd, dtype)
    assert main([*(a for t in WELL_BEHAVED for a in ("--target", t)), "--isolation", "none",
                 *MIX, "--report-dir", str(tmp_path / "alone")]) == 0
    targets = _targets(tmp_path / "mixed")
    assert targets[hostile[0]]["findings"][0]["identity"]["symptom"] == "global-state"
    assert targets[hostile[1]]["status"] == RunStatus.CLEAN
    assert (_verdicts(tmp_path / "mixed", WELL_BEHAVED)
            == _verdicts(tmp_path / "alone", WELL_BEHAVED))


def test_too_few_judged_cases_are_inconclusive_not_clean(tmp_path: Path) -> None:
    """A kernel slow enough to be judged on one pack in the budget proves nothing."""
    code = main(["--target", "tests.hostile:slow", "--budget", "0.2", "--seed", "0",
                 "--min-cases", "50", "--device", "cpu", "--report-dir", str(tmp_path)])
    assert code == EXIT_INCONCLUSIVE
    target = _targets(tmp_path)["tests.hostile:slow"]
    assert target["status"] == RunStatus.INCONCLUSIVE and 0 < target["judged"] < 50


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
    assert err.startswith("prefix-fuzz: error: ") and err.count("\n") == 1, err
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


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_slow_run(report_dir: Path) -> subprocess.Popen[str]:
    """A run of a slow kernel in a process of its own, once it has judged a case. It starts
    with SIGINT ignored, as a shell's background job or some CI runners start it: Ctrl-C
    must stop it all the same."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fuzz", "--target", "tests.hostile:slow", "--budget", "120",
         "--seed", "0", "--device", "cpu", "--report-dir", str(report_dir)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"},
        preexec_fn=_ignore_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cases = next(report_dir.glob("run-*/cases.jsonl"), None)
        if cases is not None and cases.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    return process


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_writes_its_partial_report_and_exits_130(stop: signal.Signals,
                                                                 tmp_path: Path) -> None:
    process = _start_slow_run(tmp_path)
    process.send_signal(stop)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # where every thread of the run is stuck (faulthandler)
        process.send_signal(signal.SIGABRT)
        pytest.fail(f"still running 60 s after {stop.name}:\n{process.communicate()[1][-6000:]}")
    assert process.returncode == EXIT_INTERRUPTED, err
    report = _report(tmp_path)
    assert report["interrupted"] is True and report["partial"] is False
    assert report["targets"][0]["judged"] >= 1
    assert "interrupted" in out


def _descendants(pid: int) -> list[int]:
    found, frontier = [], [pid]
    while frontier:
        level = []
        for parent in frontier:
            for task in Path(f"/proc/{parent}/task").glob("*/children"):
                level += [int(c) for c in task.read_text().split()]
        found += level
        frontier = level
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in "ZX"


def test_a_killed_run_leaves_a_fresh_report_its_cases_and_no_workers(tmp_path: Path) -> None:
    """SIGKILL gives the run no chance to write anything: the report.json snapshot it
    rewrites every few seconds is valid, marked partial and at most 5 s old, cases.jsonl
    holds whole lines, its workers die with it, and the next run into the same directory
    leaves it alone."""
    process = _start_slow_run(tmp_path)
    time.sleep(4)  # past a snapshot or two
    helpers = _descendants(process.pid)
    assert helpers  # the fork server and the slow kernel's worker
    process.kill()
    killed = time.time()
    process.communicate(timeout=60)
    run = next(tmp_path.glob("run-*"))
    report = json.loads((run / "report.json").read_text())
    assert report["partial"] is True
    assert killed - report["written"] <= 5.0, killed - report["written"]
    lines = (run / "cases.jsonl").read_text().splitlines()
    assert [json.loads(line)["target"] for line in lines] == ["tests.hostile:slow"] * len(lines)
    assert len(lines) >= report["targets"][0]["judged"] >= 1
    deadline = time.monotonic() + 10
    while any(map(_alive, helpers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if _alive(pid)]
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["--target", "sdpa", "--examples", "2", *RUN, "--report-dir", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("run-*"))) == 2
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# --- bad files and places: one line naming the file and what is wrong, exit 2 -------------

CASE = {"requests": [{"query_len": 4, "ranges": [[1, 2]]}], "num_heads": 2, "head_dim": 16,
        "dtype": "float32"}


def _findings_file(entry: dict) -> str:
    return json.dumps({"format": 1, "target": "tests.hostile:adds_one", "findings": [entry]})


def _truncated(text: str) -> str:
    return text[:len(text) // 2]


ENTRY = {"identity": {"symptom": "out", "cause": "everywhere"}, "case": CASE}


def _replay(path: str, out: str) -> list[str]:
    return ["replay", path, "--device", "cpu"]


def _golden(path: str, out: str) -> list[str]:
    return ["golden", "--dir", str(Path(path).parent), "--device", "cpu"]


def _expect(path: str, out: str) -> list[str]:
    return ["--target", "sdpa", "--expect", path, *RUN, "--report-dir", out]


BAD_FILES = {
    # what: the file's text, the command given the file and a report dir, what the line says
    "truncated case": (_truncated(json.dumps({**CASE, "target": "sdpa"})), _replay,
                       "invalid JSON (Unterminated string starting at line 1 column"),
    "corrupted reproducer": (json.dumps({**CASE, "num_heads": "two", "target": "sdpa",
                                         "finding": ENTRY["identity"]}), _replay, "num_heads"),
    "truncated golden file": (_truncated(json.dumps({**CASE, "expect": {"sdpa": "pass"}})),
                              _golden, "invalid JSON"),
    "truncated expected findings": (_truncated(_findings_file(ENTRY)), _expect,
                                    "cannot read expected findings"),
    "expected finding with a corrupted case": (
        _findings_file({**ENTRY, "case": {**CASE, "head_dim": -1}}), _expect,
        "findings[0].case"),
    "expected finding with a corrupted identity": (
        _findings_file({**ENTRY, "identity": {"symptom": "out", "cause": "sometimes"}}),
        _expect, "cause must be one of"),
    "truncated reproducer as expected findings": (
        _truncated(json.dumps({**CASE, "target": "sdpa", "finding": ENTRY["identity"]})),
        _expect, "cannot read expected findings"),
}


@pytest.mark.parametrize("what", list(BAD_FILES))
def test_a_bad_file_is_one_line_naming_it_and_exit_2(what: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text, command, says = BAD_FILES[what]
    path = tmp_path / "edge-bad.json"
    path.write_text(text)
    start = time.monotonic()
    assert main(command(str(path), str(tmp_path / "out"))) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"prefix-fuzz: error: {path}") and err.count("\n") == 1, err
    assert says in err, err
    assert not (tmp_path / "out").exists()  # nothing run, nothing written
    assert time.monotonic() - start < 10


def test_a_report_dir_that_cannot_be_created_is_one_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["--target", "sdpa", "--examples", "2", *RUN,
                 "--report-dir", "/dev/null/fuzz-out"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "prefix-fuzz: error: --report-dir /dev/null/fuzz-out cannot be created: " \
                  "Not a directory\n"


def _no_space(*args: object, **kwargs: object) -> int:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fills", ["at once", "after three cases"])
def test_a_full_disk_stops_the_run_in_one_line_and_leaves_no_half_file(
        fills: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write fails with ENOSPC, from the start or once three cases are recorded (the
    fourth line half written): the run stops with exit 2 and one line naming the file;
    report.json is the last whole snapshot, cases.jsonl holds whole lines, no scratch file
    is left."""
    lines = []

    def append(descriptor: int, data: bytes) -> int:
        if len(lines) == 3:
            os.write(descriptor, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        lines.append(data)
        return os.write(descriptor, data)

    if fills == "at once":
        monkeypatch.setattr(Path, "write_text", _no_space)
        monkeypatch.setattr(journal, "_append", _no_space)
    else:
        monkeypatch.setattr(journal, "_append", append)
    code = main(["--target", "sdpa", "--examples", "20", *RUN, "--report-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "Traceback" not in err
    problem = [line for line in err.splitlines() if line.startswith("prefix-fuzz: error:")]
    run = next(tmp_path.glob("run-*"))
    wrote = "report.json" if fills == "at once" else "cases.jsonl"
    assert problem == [f"prefix-fuzz: error: cannot write {run / wrote}: "
                       "No space left on device"], err
    assert not list(run.rglob(".*partial*"))
    if fills == "at once":
        assert not (run / "report.json").exists()
    else:
        assert json.loads((run / "report.json").read_text())["partial"] is True
        recorded = (run / "cases.jsonl").read_bytes()
        assert recorded == b"".join(lines) and recorded.count(b"\n") == 3


# --- on a GPU ------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize(("kernel", "symptom", "says"), [
    ("spins_on_the_gpu", "timeout", "--case-timeout 20"),
    ("allocates_device_memory", "memory", "the target ran out of memory: OutOfMemoryError"),
])
def test_a_kernel_that_hangs_or_fills_the_gpu_is_blamed_and_the_gpu_judges_on(
        kernel: str, symptom: str, says: str, tmp_path: Path) -> None:
    """A Triton kernel that never finishes on the device is killed at --case-timeout and
    one that takes every byte of device memory fails in its own call; either way its
    worker is replaced, and the next target's cases run on the same GPU and pass."""
    code = main(["--target", f"tests.hostile_gpu:{kernel}", "--target", "sdpa",
                 "--device", "cuda", "--devices", "cuda:0", "--examples", "2",
                 "--case-timeout", "20", "--seed", "0", "--min-cases", "1",
                 "--max-findings", "1", "--shrink-budget", "1", "--report-dir", str(tmp_path)])
    assert code == EXIT_FOUND
    targets = _targets(tmp_path)
    hostile = targets[f"tests.hostile_gpu:{kernel}"]
    finding = hostile["findings"][0]
    assert finding["identity"]["symptom"] == symptom and says in finding["diagnosis"], finding
    assert hostile["worker_restarts"] >= 1
    assert targets["sdpa"]["status"] == RunStatus.CLEAN
    assert targets["sdpa"]["stats"]["counts"] == {Status.PASS: 2}


class _RecordedPool(Exception):
    """Raised by a stand-in pool, carrying the devices it was given."""


def test_replay_on_cuda_gives_its_worker_one_gpu(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker pins its GPU with ``torch.cuda.set_device``, which takes no bare 'cuda'."""
    import prefix_referee.fuzz.cli as cli

    def pool(name: str, devices: list[str], **_: object) -> None:
        raise _RecordedPool(devices)

    monkeypatch.setattr(cli, "_resolve_device", lambda requested: "cuda")
    monkeypatch.setattr(cli, "memory_limit", lambda device: memory_limit("cpu"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cli, "WorkerPool", pool)
    with pytest.raises(_RecordedPool) as recorded:
        main(["replay", str(_reproducer(tmp_path, "reference")), "--device", "cuda"])
    assert recorded.value.args == (["cuda:0"],)


def test_a_worker_pool_takes_only_cpu_or_one_indexed_gpu() -> None:
    with pytest.raises(ValueError, match="not 'cuda'"):
        WorkerPool("reference", ["cuda"], case_timeout=30)
