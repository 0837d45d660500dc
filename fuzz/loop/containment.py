"""What keeps a worker's kernel inside its worker (docs/design.md, "Run in a worker").

A worker is the leader of a session of its own, a child subreaper (every process a
kernel starts stays its descendant, however it detaches) and dies with the fork server
that started it (so with the run). Its host memory is bounded twice: a CPU worker has
an ``RLIMIT_DATA`` (an allocation past it fails at once, in the kernel that asked), and
the supervisor reads every busy worker's resident memory from ``/proc`` and kills one
past ``--worker-memory`` (memory the data limit does not count, shared mappings, and
CUDA workers, where an address-space limit would break the driver's reservations). A
CUDA worker sharing its GPU with others gets its share of the device memory
(``torch.cuda.set_per_process_memory_fraction``). Inductor compiles in the worker's own
process (``TORCHINDUCTOR_COMPILE_THREADS=1``), so no process is meant to outlive a call:
after each call the worker kills every descendant left, and the supervisor kills a
worker's whole session when it kills the worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import resource
import signal
import sys
from pathlib import Path

# What the workers may use of the host's memory together, the rest left to the main
# process and the system.
HOST_MEMORY_SHARE = 0.8
# A worker needs about this much to start (torch imported: ~0.25 GiB on a CPU).
MIN_WORKER_MEMORY = 512 << 20
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def host_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            total = min(total, int(Path(limit).read_text().strip()))
    return total


def default_worker_memory(workers: int) -> int:
    """Each of ``workers`` busy workers' share of the host's memory."""
    return max(MIN_WORKER_MEMORY, int(host_memory() * HOST_MEMORY_SHARE / max(1, workers)))


def parse_size(text: str) -> int:
    """``"4G"``, ``"512M"``, ``"1.5g"``, ``"1073741824"``: bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if match is None:
        raise ValueError(f"not a size: {text!r} (e.g. 4G, 512M)")
    return int(float(match[1]) * _UNITS[match[2]])


def format_size(size: int) -> str:
    """``4.0 GiB``."""
    return f"{size / 2**30:.1f} GiB" if size >= 1 << 30 else f"{size / 2**20:.0f} MiB"


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def enter_worker(device: str, memory: int | None, device_share: float) -> None:
    """Confine this process, a fresh worker: its own session, a subreaper, dead with its
    parent, in-process compiling, ``memory`` bytes of host memory on a CPU and
    ``device_share`` of its GPU's memory."""
    parent = os.getppid()
    with contextlib.suppress(OSError):
        os.setsid()
    libc = _libc()
    if libc is not None and sys.platform.startswith("linux"):
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        if os.getppid() != parent:  # the parent went before the signal was armed
            os._exit(1)
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
        config = sys.modules.get("torch._inductor.config")
        if config is not None:
            config.compile_threads = 1
    if memory is not None and not device.startswith("cuda"):
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        limit = memory if hard == resource.RLIM_INFINITY else min(memory, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    if device.startswith("cuda") and device_share < 1.0:
        import torch

        torch.cuda.set_per_process_memory_fraction(device_share, torch.device(device))


def children(pid: int) -> list[int]:
    """The live and unreaped children of process ``pid``."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            found += [int(c) for c in (task / "children").read_text().split()]
        return found
    except FileNotFoundError:
        if not Path(f"/proc/{pid}").exists():
            return []
    except OSError:
        return []
    for stat in Path("/proc").glob("[0-9]*/stat"):  # a kernel without /proc/*/children
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(_stat_fields(stat.read_text())[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of process ``pid``, parents before their children."""
    found, frontier = [], [pid]
    while frontier:
        level = [c for p in frontier for c in children(p)]
        found += level
        frontier = level
    return found


def _stat_fields(stat: str) -> list[str]:
    """``/proc/PID/stat`` after the command name: state, ppid, pgrp, session, ..."""
    return stat.rpartition(")")[2].split()


def _describe(pid: int) -> tuple[str, bool]:
    """A process's command name, and whether it is a zombie (exited, not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?", True
    return stat[stat.find("(") + 1:stat.rfind(")")], _stat_fields(stat)[0] in "ZX"


def kill_children() -> str | None:
    """Kill every process this one started that is still running (and any process they
    started: orphans come back to this subreaper), reap them; what was killed, in words,
    or None. Children that had exited already are reaped without a word."""
    killed: list[str] = []
    for _ in range(100):  # each round, the killed processes' orphans come back here
        pids = children(os.getpid())
        if not pids:
            break
        for pid in pids:
            name, exited = _describe(pid)
            if not exited:
                killed.append(name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    if not killed:
        return None
    names = ", ".join(sorted(set(killed)))
    return f"{len(killed)} process{'es' if len(killed) > 1 else ''} ({names})"


def kill_session(pid: int, alive: bool = True) -> None:
    """Kill worker ``pid`` (if ``alive``: not yet reaped), every descendant it has, and its
    process group (its session's, which it leads; the group outlives a dead leader while
    a member is left, and its id cannot be reused until then)."""
    if alive:
        for victim in descendants(pid):
            with contextlib.suppress(OSError):
                os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    if alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def resident_memory(pid: int) -> int | None:
    """Bytes of memory process ``pid`` holds that no file backs (``RssAnon`` plus
    ``RssShmem``: what it allocated, shared mappings included), or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    total = 0
    for line in status.splitlines():
        if line.startswith(("RssAnon:", "RssShmem:")):
            total += int(line.split()[1]) << 10
    return total
