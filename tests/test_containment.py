"""The pieces that keep a kernel inside its worker, one by one: memory limits, process-wide
state, processes left running (tests/test_isolation.py runs the kernels through whole runs)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
import torch

from prefix_referee.fuzz.loop.containment import format_size, parse_size
from prefix_referee.fuzz.loop.jobs import Job
from prefix_referee.fuzz.loop.workers import WorkerPool
from prefix_referee.verify.case import parse_case
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.process_state import capture
from prefix_referee.verify.runner import Outcome, Status, run_and_judge
from prefix_referee.verify.targets import get_target

CASE = {"requests": [{"query_len": 4, "ranges": [[1, 2]]}], "num_heads": 2, "head_dim": 16,
        "dtype": "float32", "seed": 1}
LIMIT = 512 << 20  # the least --worker-memory takes; a CPU worker starts with ~0.25 GiB


def _outcomes(kernel: str, jobs: int, memory: int = LIMIT) -> tuple[list[Outcome], int]:
    """Each job's outcome, one case each, run one after another; and the restarts."""
    found = []
    with WorkerPool(f"tests.hostile:{kernel}", ["cpu"], case_timeout=30, memory=memory) as pool:
        for job in range(jobs):
            pool.submit(Job(job, (CASE,), packed=False))
            results = []
            while not results:
                results = pool.wait(1.0)
            found.append(results[0].outcomes[0])
        return found, pool.restart_reasons.total()


@pytest.mark.parametrize(("kernel", "says"), [
    ("allocates_without_bound", "the target ran out of memory: RuntimeError"),
    ("maps_shared_memory", "(--worker-memory 512 MiB) during the target's call; killed"),
], ids=["data limit", "supervisor"])
def test_memory_past_the_limit_is_an_error_and_the_worker_is_replaced(kernel: str,
                                                                       says: str) -> None:
    """An allocation past the worker's data limit fails in the kernel; memory that limit
    does not see (a shared mapping) is seen by the supervisor, which kills the worker."""
    outcomes, restarts = _outcomes(kernel, 2)
    for outcome in outcomes:
        assert (outcome.status, outcome.kind) == (Status.ERROR, "memory"), outcome.summary()
        assert says in outcome.reason, outcome.reason
    assert restarts == 2


def test_a_progress_bar_costs_no_worker() -> None:
    """tqdm's monitor thread is a library's, not one the kernel left: no restart."""
    pytest.importorskip("tqdm")
    outcomes, restarts = _outcomes("shows_progress", 2)
    assert [o.status for o in outcomes] == [Status.PASS, Status.PASS]
    assert restarts == 0


def test_a_kernel_that_keeps_what_it_allocates_is_stopped_and_the_next_worker_passes() -> None:
    outcomes, restarts = _outcomes("keeps_what_it_allocates", 4)
    kinds = [o.kind for o in outcomes]
    assert "memory" in kinds and restarts >= 1, kinds
    assert outcomes[kinds.index("memory") + 1].status == Status.PASS  # a fresh worker


def test_worker_memory_sizes() -> None:
    assert [parse_size(s) for s in ("4G", "512m", "1.5GiB", "1024", "2 t")] == [
        4 << 30, 512 << 20, 3 << 29, 1024, 2 << 40]
    assert (format_size(512 << 20), format_size(3 << 29)) == ("512 MiB", "1.5 GiB")
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


# --- process-wide state ------------------------------------------------------------------

def _knob() -> None:
    import triton.knobs

    triton.knobs.compilation.always_compile = True


CHANGES: dict[str, tuple[Callable[[], object], str]] = {
    "default dtype": (lambda: torch.set_default_dtype(torch.float64),
                      "torch.get_default_dtype() torch.float32 -> torch.float64"),
    "default device": (lambda: torch.set_default_device("meta"),
                       "torch.get_default_device() cpu -> meta"),
    "threads": (lambda: torch.set_num_threads(torch.get_num_threads() + 1),
                "torch.get_num_threads()"),
    "grad mode": (lambda: torch.set_grad_enabled(False), "torch.is_grad_enabled() True -> False"),
    "deterministic algorithms": (lambda: torch.use_deterministic_algorithms(True),
                                 "torch.are_deterministic_algorithms_enabled()"),
    "TF32, legacy": (lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
                     "torch.backends.cuda.matmul.allow_tf32 False -> True"),
    "TF32": (lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
             "torch.backends.cuda.matmul.fp32_precision 'none' -> 'tf32'"),
    "matmul precision": (lambda: torch.set_float32_matmul_precision("medium"),
                         "torch.get_float32_matmul_precision() 'highest' -> 'medium'"),
    "SDPA backend": (lambda: torch.backends.cuda.enable_math_sdp(False),
                     "torch.backends.cuda.math_sdp_enabled() True -> False"),
    "cuDNN": (lambda: setattr(torch.backends.cudnn, "benchmark", True),
              "torch.backends.cudnn.benchmark False -> True"),
    "oneDNN": (lambda: setattr(torch.backends.mkldnn, "enabled", False),
               "torch.backends.mkldnn.enabled True -> False"),
    "working directory": (lambda: os.chdir("/"), "the working directory"),
    "Triton knobs": (_knob, "triton.knobs.compilation"),
}


@pytest.mark.parametrize("what", list(CHANGES))
def test_a_process_wide_change_is_named_and_put_back(what: str) -> None:
    change, named = CHANGES[what]
    if what == "Triton knobs":
        pytest.importorskip("triton.knobs")
    before = capture()
    change()
    changed = before.restore()
    assert any(named in c for c in changed), changed
    assert before.changes() == []


def test_the_environment_and_the_generators_are_put_back_without_a_word() -> None:
    before = capture()
    draws = torch.rand(3), random.random()
    os.environ["REFEREE_TEST_VARIABLE"] = "1"
    torch.manual_seed(0)
    random.seed(0)
    assert before.restore() == []
    assert "REFEREE_TEST_VARIABLE" not in os.environ
    assert torch.equal(torch.rand(3), draws[0]) and random.random() == draws[1]


def test_a_kernel_that_changes_process_wide_state_fails_in_process_and_changes_nothing() -> None:
    case = materialize(parse_case(CASE), "cpu")
    cwd, dtype, threads = os.getcwd(), torch.get_default_dtype(), torch.get_num_threads()
    judged = run_and_judge(get_target("tests.hostile:changes_process_state"), case)
    outcome = judged.outcomes[0]
    assert (outcome.status, outcome.kind, judged.fault) == (Status.ERROR, "global-state", None)
    for named in ("torch.get_default_device() cpu -> meta", "the working directory",
                  "torch.backends.cuda.math_sdp_enabled() True -> False"):
        assert named in outcome.reason
    assert (os.getcwd(), torch.get_default_dtype(), torch.get_num_threads()) == (cwd, dtype,
                                                                                  threads)
    assert run_and_judge(get_target("sdpa"), case).outcomes[0].status == Status.PASS
