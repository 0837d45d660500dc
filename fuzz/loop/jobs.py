"""A job: the unit of work a worker process runs for one target (docs/design.md).

Case JSON goes in (never tensors, so a job crosses a process boundary cheaply), small
:class:`verify.runner.Outcome` records come out, one per case plus one for the batch
when the cases were packed, with the time spent materializing, in the reference, in
the target and in the policy. The worker also says whether the job compiled a new
kernel configuration (the first time this process saw the target's compile key), and
whether it must be replaced before the next job (why, in ``restart``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from prefix_referee.verify.case import CaseSpec, parse_case
from prefix_referee.verify.compare import Segment
from prefix_referee.verify.invariance import Comparison, Variant, compare_variants
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.pack import pack
from prefix_referee.verify.runner import Outcome, run_and_judge
from prefix_referee.verify.target import Target


@dataclass(frozen=True)
class Job:
    """Run ``cases`` (JSON mappings) as one batch (``packed``) or the first one alone; or,
    with ``variants`` (:meth:`verify.invariance.Variant.to_json` mappings), run those in
    order and compare them bit for bit (each subject judged too with ``judge``)."""

    id: int
    cases: tuple[dict[str, Any], ...]
    packed: bool = True
    variants: tuple[dict[str, Any], ...] = ()
    judge: bool = False


@dataclass
class JobResult:
    """Outcomes in the job's case order, the batch's own when packed, timings, compile."""

    id: int
    outcomes: list[Outcome]
    batch: Outcome | None = None
    timings: dict[str, float] = field(default_factory=dict)
    compiled: bool = False
    compile_key: str = ""
    # Why the worker must not run another job (its device may be unusable, the target
    # keeps what it allocated, left threads running, or changed what could not be put
    # back): a fresh one takes the next. Empty: the worker goes on.
    restart: str = ""
    comparison: Comparison | None = None  # the runs and differences of a job of variants


@dataclass
class WorkerState:
    """What a worker keeps between jobs: its target, device and the kernels it compiled."""

    target: Target
    device: str
    compiled: set[str] = field(default_factory=set)


def _device_works(device: str) -> bool:
    """Whether the CUDA context survived (an illegal access poisons it for good)."""
    if not device.startswith("cuda"):
        return True
    try:
        torch.ones(1, device=device).add_(1).item()
        torch.cuda.synchronize(device)
    except Exception:
        return False
    return True


def _threads() -> set[int]:
    """The Python threads of this process (``threading`` or not)."""
    return set(sys._current_frames())


def quiet_progress_monitor() -> None:
    """Keep tqdm from starting its monitor thread (Inductor's and Triton's compiles make
    progress bars): that thread outlives the call that made the first bar, so it would
    read as one the target left running, and every compile would cost a worker."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    tqdm.monitor_interval = 0


def _thread_names(idents: set[int]) -> list[str]:
    """The names of threads ``idents`` (a thread ``threading`` does not know by its id)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return sorted(names.get(i, f"thread {i}") for i in idents)


def _restart_reason(kinds: set[str], fault: str | None, threads_left: set[int], device: str
                    ) -> str:
    """Why a worker whose job ended in verdicts of ``kinds`` (and left ``fault``, state it
    could not put back) must not run another job, or ''."""
    if fault:
        return f"process-wide state could not be restored: {fault}"
    if "memory" in kinds:
        return "the target ran out of memory (and may keep what it allocated)"
    if "late-write" in kinds:
        return "the target's output changed after its call returned: something of it runs on"
    if threads_left:
        names = _thread_names(threads_left)
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"the target left {len(names)} thread{'s' * (len(names) > 1)} running ({shown})"
    if any(k.startswith("error:") for k in kinds) and not _device_works(device):
        return "the CUDA context does not work any more"
    return ""


def execute(job: Job, state: WorkerState,
            on_target_call: Callable[[], None] = lambda: None,
            after_target_call: Callable[[], str | None] = lambda: None) -> JobResult:
    """Materialize, judge and time one job; ``on_target_call`` fires before the target runs
    (so a supervisor times the target, not the referee), ``after_target_call`` after it
    (see :func:`verify.runner.run_and_judge`)."""
    start = time.perf_counter()
    threads = _threads()
    if job.variants:
        return compare(job, state, threads, on_target_call, after_target_call)
    specs: list[CaseSpec] = [parse_case(c) for c in job.cases]
    segments: list[Segment] | None = None
    spec = specs[0]
    if job.packed and len(specs) > 1:
        spec, segments = pack(specs)
    case = materialize(spec, state.device)
    materialize_seconds = time.perf_counter() - start
    key = state.target.compile_key(spec)
    compiled = key is not None and repr(key) not in state.compiled
    state.compiled.add(repr(key))
    judged = run_and_judge(state.target, case, segments, on_target_call=on_target_call,
                           after_target_call=after_target_call)
    restart = _restart_reason({o.kind for o in judged.outcomes}, judged.fault,
                              _threads() - threads, state.device)
    return JobResult(job.id, judged.outcomes, judged.batch,
                     {"materialize": materialize_seconds, **judged.timings}, compiled,
                     "" if key is None else repr(key), restart)


def compare(job: Job, state: WorkerState, threads: set[int],
            on_target_call: Callable[[], None] = lambda: None,
            after_target_call: Callable[[], str | None] = lambda: None) -> JobResult:
    """Run a job's variants in order on the worker's target and compare them (``threads``:
    the worker's threads before the job)."""
    start = time.perf_counter()
    variants = [Variant.from_json(v) for v in job.variants]
    comparison = compare_variants(state.target, variants, state.device, job.judge,
                                  on_target_call, after_target_call)
    for variant in variants:
        for spec in variant.cases:
            state.compiled.add(repr(state.target.compile_key(spec)))
    restart = _restart_reason({r.kind for r in comparison.errors}, comparison.fault,
                              _threads() - threads, state.device)
    return JobResult(job.id, [], timings={"checks": time.perf_counter() - start},
                     restart=restart, comparison=comparison)
