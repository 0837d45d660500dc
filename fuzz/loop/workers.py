"""Each target runs in worker processes, ``--workers`` per device, supervised (docs/design.md).

A kernel under test may segfault, abort, call ``os._exit``, poison its CUDA context, hang,
allocate without bound, change process-wide state or leave processes and threads
running. None of that may take the run down or blame another target: the supervisor sees
the worker die (or pass ``--case-timeout`` inside the target's own call, or
``--worker-memory``), turns that into an ``error`` outcome for the job it was running,
starts a fresh worker and hands it the jobs that were still queued. A worker that must
not judge again (the target ran out of memory, left threads running, changed state that
could not be put back, broke its CUDA context) says so with its result and is replaced
too. Workers come from a fork server that has imported torch and the suite, so a new one
costs milliseconds, and a worker's CUDA context is its own. Only the target's call is
timed: the supervisor learns from the worker when it starts. How a worker is confined
(its session, memory limits, stray processes) is :mod:`fuzz.loop.containment`.

Workers talk to the supervisor in small messages: :class:`Started` when a job begins,
:class:`Calling` right before the target's call, :class:`Done` with the result, or
:class:`Fatal` if the target cannot even load.

``isolation="none"`` runs jobs in this process instead (for a debugger); then nothing
protects the run from the kernel but the in-process checks of :mod:`verify.runner`.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import signal
import sys
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path

from prefix_referee.fuzz.loop.containment import (
    enter_worker,
    format_size,
    kill_children,
    kill_session,
    resident_memory,
)
from prefix_referee.fuzz.loop.jobs import (
    Job,
    JobResult,
    WorkerState,
    execute,
    quiet_progress_monitor,
)
from prefix_referee.verify.runner import Outcome, Status, out_of_memory
from prefix_referee.verify.targets import get_target

# Modules the fork server imports once, so each worker starts warm.
PRELOAD = ["torch", "prefix_referee.fuzz.loop.jobs", "prefix_referee.verify.targets",
           "prefix_referee.fuzz.loop.workers"]
# How long the referee's own work on one job may take before the worker counts as stuck:
# materializing and the float64 reference of the largest packs take seconds, not minutes.
REFEREE_TIMEOUT = 600.0
# Jobs queued per worker: one running, one waiting, so the device never waits for the
# main process to draw the next one.
DEPTH = 2
# Workers that die before beginning any job, in a row, before the job is failed instead
# (a target whose import crashes the process would otherwise restart forever).
MAX_STARTUP_DEATHS = 3
# How often the supervisor reads a busy worker's memory: an allocation at memory speed
# overshoots --worker-memory by at most this long's worth before the worker is killed.
MEMORY_POLL = 0.05


@dataclass(frozen=True)
class Started:
    """The worker began job ``job`` (the referee's work first)."""

    job: int


@dataclass(frozen=True)
class Calling:
    """The target's call for job ``job`` starts now (its timeout starts too)."""

    job: int


@dataclass(frozen=True)
class Done:
    """Job ``job`` is judged; ``result.restart`` says if the worker now exits."""

    job: int
    result: JobResult


@dataclass(frozen=True)
class Fatal:
    """The target cannot load in a worker; the worker exits."""

    reason: str


Message = Started | Calling | Done | Fatal


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


@dataclass(frozen=True)
class WorkerLimits:
    """What a worker may use: host memory in bytes (None: unbounded), and its share of
    its GPU's memory."""

    memory: int | None = None
    device_share: float = 1.0


def _serve(conn: Connection, target_name: str, device: str, threads: int,
           log: str | None, limits: WorkerLimits) -> None:
    """The worker's loop: jobs in, :class:`Started`, :class:`Calling` and :class:`Done`
    out for each."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    if log is not None:  # what the kernel prints must not garble the progress display
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
    enter_worker(device, limits.memory, limits.device_share)
    import torch

    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    quiet_progress_monitor()
    try:
        state = WorkerState(get_target(target_name), device)
    except Exception as exc:
        conn.send(Fatal(f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        conn.send(Started(job.id))
        try:
            result = execute(job, state, lambda job=job: conn.send(Calling(job.id)),
                             kill_children)
        except Exception as exc:  # the referee's own failure: said so, never blamed on the target
            traceback.print_exc()
            result = _referee_failed(job, state.target.name, exc, limits.memory)
        if result.restart:  # said before the result: the supervisor kills it on receipt
            print(f"worker {os.getpid()} ({target_name} on {device}) is replaced: "
                  f"{result.restart}", file=sys.stderr, flush=True)
            sys.stdout.flush()
        conn.send(Done(job.id, result))
        if result.restart:
            os._exit(0)  # now: threads the target left must not keep the process alive


def _referee_failed(job: Job, target: str, exc: Exception, memory: int | None) -> JobResult:
    """The result of a job the referee's own work failed on (out of memory: the target's
    allocations, which the worker's limit counts, are the likely cause)."""
    if out_of_memory(exc):
        limit = "" if memory is None else f" (--worker-memory {format_size(memory)})"
        result = failed_result(job, target, "memory", "the worker ran out of memory outside "
                               f"the target's call{limit}: {type(exc).__name__}")
        result.restart = "out of memory"
        return result
    return failed_result(job, target, "referee",
                         f"the referee failed on this job: {type(exc).__name__}: {exc}")


def describe_exit(code: int | None) -> str:
    """'SIGSEGV', 'exit code 3', ... for a process's exit code."""
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def failed_result(job: Job, target: str, kind: str, reason: str, seconds: float = 0.0
                  ) -> JobResult:
    """The result of a job the worker could not finish: an error for each case and the batch."""
    def outcome() -> Outcome:
        return Outcome(target, Status.ERROR, reason=reason, kind=kind, seconds=seconds)

    batch = outcome() if job.packed and len(job.cases) > 1 else None
    return JobResult(job.id, [outcome() for _ in job.cases], batch)


@dataclass(eq=False)  # a worker is itself, whatever its jobs
class _Worker:
    device: str
    process: multiprocessing.process.BaseProcess
    conn: Connection
    jobs: deque[Job] = field(default_factory=deque)
    started: int | None = None  # the job the worker said it began
    in_target: bool = False
    since: float = field(default_factory=time.perf_counter)
    retiring: str = ""  # why it said it exits after its last result


def worker_threads(device: str, workers: int) -> int:
    """Intra-op threads of one worker: one on a CPU (small cases: a thread pool only adds
    synchronization, and each worker has a core); a CUDA worker's host work gets its share
    of the cores (every worker taking every core oversubscribes the host)."""
    if device == "cpu":
        return 1
    return max(1, (os.cpu_count() or 1) // workers)


class WorkerPool:
    """Workers for one target, one per entry of ``devices`` (a device may be listed more
    than once); each keeps its slot (its index) across restarts. Submit jobs, collect
    results. ``memory``: the host memory one worker may use (None: unbounded)."""

    def __init__(self, target_name: str, devices: Iterable[str], *, case_timeout: float,
                 isolation: str = "process", log: Path | None = None,
                 memory: int | None = None) -> None:
        self.target_name = target_name
        self.case_timeout = case_timeout
        self.isolation = isolation
        self.log = None if log is None else str(log)
        self.memory = memory
        self.devices = list(devices)
        for device in self.devices:
            if device != "cpu" and not re.fullmatch(r"cuda:\d+", device):
                raise ValueError(f"a worker runs on 'cpu' or one GPU ('cuda:N'), not {device!r}")
        self.restart_reasons: Counter[str] = Counter()
        self._startup_deaths = 0
        self._done: list[JobResult] = []
        self._workers: list[_Worker] = []
        self._local: WorkerState | None = None
        if isolation == "none":
            self._local = WorkerState(get_target(target_name), self.devices[0])
        elif isolation != "process":
            raise ValueError(f"isolation must be 'process' or 'none', got {isolation!r}")
        else:
            self._workers = [self._start(device) for device in self.devices]

    def _start(self, device: str) -> _Worker:
        parent, child = _context().Pipe()
        threads = worker_threads(device, len(self.devices))
        limits = WorkerLimits(self.memory, 1.0 / self.devices.count(device))
        process = _context().Process(target=_serve, args=(child, self.target_name, device,
                                                          threads, self.log, limits),
                                     daemon=True)
        process.start()
        child.close()
        return _Worker(device, process, parent)

    def free_slot(self) -> int | None:
        """The least loaded worker that can take a job without queueing past ``DEPTH``."""
        if self._local is not None:
            return 0
        slot = self._least_loaded()
        return slot if len(self._workers[slot].jobs) < DEPTH else None

    def _least_loaded(self) -> int:
        return min(range(len(self._workers)), key=lambda i: len(self._workers[i].jobs))

    @property
    def busy(self) -> bool:
        return any(w.jobs for w in self._workers)

    def submit(self, job: Job, slot: int | None = None) -> None:
        """Queue ``job`` on worker ``slot`` (default: the least loaded one), or run it now
        without isolation."""
        if self._local is not None:
            self._done.append(execute(job, self._local))
            return
        worker = self._workers[self._least_loaded() if slot is None else slot]
        if not worker.jobs:
            worker.since, worker.in_target = time.perf_counter(), False
        worker.jobs.append(job)
        with contextlib.suppress(OSError):  # a dead worker: seen in wait(), the job moves on
            worker.conn.send(job)

    def wait(self, timeout: float) -> list[JobResult]:
        """Results that are ready within ``timeout`` seconds (crashes and hangs included)."""
        if self._done or self._local is not None:
            done, self._done = self._done, []
            return done
        deadline = time.perf_counter() + timeout
        while not self._done:
            now = time.perf_counter()
            busy = [w for w in self._workers if w.jobs]
            waits = [deadline - now, *(self._deadline(w) - now for w in busy)]
            if self.memory is not None and busy:
                waits.append(MEMORY_POLL)
            ready = wait([w.conn for w in self._workers] + [w.process.sentinel
                                                            for w in self._workers],
                         max(0.0, min(waits)))
            for worker in list(self._workers):
                self._service(worker, ready)
            if time.perf_counter() >= deadline:
                break
        done, self._done = self._done, []
        return done

    def _deadline(self, worker: _Worker) -> float:
        return worker.since + (self.case_timeout if worker.in_target else REFEREE_TIMEOUT)

    def _service(self, worker: _Worker, ready: list) -> None:
        if worker.conn in ready:
            try:
                while worker.conn.poll():
                    self._message(worker, worker.conn.recv())
            except (EOFError, OSError):
                pass
        if worker.retiring:
            self._kill(worker)
            self._replace(worker, "", worker.retiring)
        elif not worker.process.is_alive():
            worker.process.join()
            kill_session(worker.process.pid, alive=False)  # what it started dies with it
            self._replace(worker, "crash" if worker.in_target else "referee",
                          f"the worker died ({describe_exit(worker.process.exitcode)}) "
                          + ("during the target's call" if worker.in_target
                             else "outside the target's call"))
        elif worker.jobs and time.perf_counter() > self._deadline(worker):
            seconds = time.perf_counter() - worker.since
            self._kill(worker)
            self._replace(worker, "timeout" if worker.in_target else "referee",
                          f"timeout: the target's call ran {seconds:.0f} s "
                          f"(--case-timeout {self.case_timeout:g})" if worker.in_target
                          else f"the referee's work on this job ran past {REFEREE_TIMEOUT:g} s")
        elif worker.jobs and self.memory is not None:
            held = resident_memory(worker.process.pid)
            if held is not None and held > self.memory:
                self._kill(worker)
                self._replace(worker, "memory",
                              f"the worker held {format_size(held)} of memory "
                              f"(--worker-memory {format_size(self.memory)}) "
                              + ("during the target's call" if worker.in_target
                                 else "outside the target's call") + "; killed")

    @staticmethod
    def _kill(worker: _Worker) -> None:
        kill_session(worker.process.pid, alive=worker.process.is_alive())
        worker.process.join()

    def _message(self, worker: _Worker, message: Message) -> None:
        match message:
            case Started(job):
                worker.started, worker.since = job, time.perf_counter()
                self._startup_deaths = 0
            case Calling():
                worker.in_target, worker.since = True, time.perf_counter()
            case Done(_, result):
                worker.jobs.popleft()
                self._done.append(result)
                worker.started, worker.in_target = None, False
                worker.since = time.perf_counter()
                worker.retiring = result.restart
            case Fatal(reason):
                for job in worker.jobs:
                    self._done.append(failed_result(job, self.target_name, "error:load",
                                                    f"the target cannot load in a worker: "
                                                    f"{reason}"))
                worker.jobs.clear()

    def _replace(self, worker: _Worker, kind: str, reason: str) -> None:
        """The job the worker began fails with ``reason``; a fresh worker takes the others
        (a job the worker never began is not its fault; a retiring worker began none)."""
        began = bool(worker.jobs) and worker.started == worker.jobs[0].id
        if not began and worker.jobs and not worker.retiring:
            self._startup_deaths += 1
            if self._startup_deaths >= MAX_STARTUP_DEATHS:
                began, reason = True, f"the worker dies before it can begin ({reason})"
        if began:
            seconds = time.perf_counter() - worker.since
            self._done.append(failed_result(worker.jobs.popleft(), self.target_name, kind,
                                            reason, seconds))
            self._startup_deaths = 0
        pending = list(worker.jobs)
        worker.conn.close()
        self.restart_reasons[reason] += 1
        fresh = self._start(worker.device)
        self._workers[self._workers.index(worker)] = fresh
        for job in pending:
            fresh.jobs.append(job)
            fresh.conn.send(job)
        fresh.since = time.perf_counter()

    def close(self) -> None:
        """Stop every worker (politely, then for good)."""
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        for worker in self._workers:
            worker.process.join(timeout=2)
            kill_session(worker.process.pid, alive=worker.process.is_alive())
            worker.process.join()
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
