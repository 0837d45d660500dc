"""Kernels that attack the referee, as ``tests.hostile:<name>`` targets.

Each does one thing a broken or hostile kernel does; tests/test_isolation.py checks that
the run survives it, blames it alone and says what happened. ``HOSTILE`` maps each to the
symptom its finding must have (None: it passes, and only its worker may change);
tests/hostile_gpu.py has the ones that need a GPU.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from torch import Tensor

from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.targets import get_target

_exact = get_target("reference")


def correct(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    return _exact.run(case)


def writes_into_k(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    result = _exact.run(case)
    case.k.mul_(2)
    return result


def writes_into_k_first(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Scribbles before computing: it passes against its own changed inputs."""
    case.k.mul_(2)
    return _exact.run(case)


def calls_sys_exit(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    sys.exit(0)


def calls_os_exit(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    os._exit(0)


def segfaults(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    ctypes.string_at(0)
    raise AssertionError("unreachable")


def hangs(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    time.sleep(3600)
    raise AssertionError("unreachable")


def returns_numpy(case: MaterializedCase) -> tuple[object, Tensor]:
    out, lse = _exact.run(case)
    return out.float().numpy(), lse


def returns_wrong_shape(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    out, lse = _exact.run(case)
    return out[:, :1], lse


def adds_one(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    out, lse = _exact.run(case)
    return out + 1, lse


def prints(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    print("kernel says hello", flush=True)
    return _exact.run(case)


def raises(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def slow(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    time.sleep(0.5)
    return _exact.run(case)



# --- memory ------------------------------------------------------------------------------

_kept: list[Tensor] = []


def allocates_without_bound(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """64 MiB more each step until an allocation fails."""
    hog = []
    while True:
        hog.append(torch.empty(64 << 20, dtype=torch.uint8))


def maps_shared_memory(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Fills a shared anonymous mapping, which no data limit counts (up to 4 GiB, then it
    gives up and returns the right answer)."""
    size, chunk = 4 << 30, 32 << 20
    shared = mmap.mmap(-1, size)
    block = b"x" * chunk
    for _ in range(size // chunk):
        shared.write(block)
    return _exact.run(case)


def keeps_what_it_allocates(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, and 256 MiB more kept on every call: the limit comes in some later
    call, or in the referee's work after it."""
    _kept.append(torch.ones(64 << 20))
    return _exact.run(case)


# --- process-wide state ------------------------------------------------------------------


def changes_process_state(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, then every process-wide setting changed that a kernel can reach."""
    result = _exact.run(case)
    torch.set_default_dtype(torch.float64)
    torch.set_default_device("meta")
    torch.manual_seed(1234)
    random.seed(1234)
    torch.set_num_threads(3)
    torch.set_grad_enabled(False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.enable_math_sdp(False)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.mkldnn.enabled = False
    os.environ["OMP_NUM_THREADS"] = "7"
    os.environ.pop("HOME", None)
    os.chdir("/")
    knobs = sys.modules.get("triton.knobs")  # if the process has Triton (3.4 on) loaded
    if knobs is not None:
        knobs.compilation.always_compile = True
    return result


def draws_random_numbers(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, after reseeding torch's and Python's generators: no fault."""
    torch.manual_seed(0)
    random.seed(0)
    torch.rand(3)
    return _exact.run(case)


# --- processes and threads ---------------------------------------------------------------


def referee_pid() -> int:
    """The pid of the process running the referee's run: a worker's fork server's parent,
    or this process when it runs the target itself."""
    parent = os.getppid()
    try:
        if b"forkserver" in Path(f"/proc/{parent}/cmdline").read_bytes():
            return int(Path(f"/proc/{parent}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return os.getpid()


def child_marker() -> str:
    """An argument every process these kernels start carries, unique to the run."""
    return f"hostile-child-of-{referee_pid()}"


_SLEEPER = [sys.executable, "-c", "import time; time.sleep(3600)"]


def spawns_process(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, and a child left sleeping."""
    subprocess.Popen([*_SLEEPER, child_marker()])
    return _exact.run(case)


def spawns_detached_process(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, and a grandchild in a session of its own whose parent has exited
    (a daemon)."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [*_SLEEPER, child_marker()])
        os._exit(0)
    os.waitpid(pid, 0)
    return _exact.run(case)


def leaves_thread(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, and a thread left sleeping (harmless, but its worker must go)."""
    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
    return _exact.run(case)


def shows_progress(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers after a progress bar, as compilers show (well-behaved: tqdm's monitor
    thread, which the first bar starts, is not the kernel's)."""
    from tqdm import tqdm

    with tqdm(total=1, file=io.StringIO()) as bar:
        bar.update()
    return _exact.run(case)


def writes_after_return(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Right answers, then a timer it leaves behind adds to them every half millisecond
    while the referee judges, as a stream or native thread of a real kernel would (a
    Python thread of its own would wait milliseconds for the GIL, longer than a small
    case takes to judge)."""
    out, lse = _exact.run(case)
    signal.signal(signal.SIGALRM, lambda signum, frame: out.add_(1))
    signal.setitimer(signal.ITIMER_REAL, 5e-4, 5e-4)
    return out, lse


# The symptom of each kernel's finding (None: every case passes).
HOSTILE: dict[str, str | None] = {
    "writes_into_k": "mutated-input", "writes_into_k_first": "mutated-input",
    "calls_sys_exit": "exit", "calls_os_exit": "crash", "segfaults": "crash",
    "hangs": "timeout", "returns_numpy": "contract", "returns_wrong_shape": "contract",
    "adds_one": "out", "prints": None, "raises": "error:RuntimeError", "slow": None,
    "allocates_without_bound": "memory", "maps_shared_memory": "memory",
    "changes_process_state": "global-state", "draws_random_numbers": None,
    "spawns_process": "stray-process", "spawns_detached_process": "stray-process",
    "leaves_thread": None, "writes_after_return": "late-write",
}
