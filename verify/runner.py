"""Run one target on a case and judge it: the step shared by tests, fuzz, replay and workers.

The referee never blames the innocent and never loses a verdict to the kernel it judges:

* the truth (float64 reference, baseline) is computed before the target runs;
* the target runs on its own copy of every input; a copy that changed afterwards names the
  tensor the target wrote into; the originals and the truth are fingerprinted before and
  after the call, so a write outside the target's own tensors is seen too;
* an exception, ``sys.exit``, running out of memory or a result of the wrong type, device,
  dtype or shape is an ``error`` verdict with one line that says which, never a traceback
  of the suite;
* process-wide state the call changed (default dtype, thread count, backend flags, the
  working directory, ...) is put back at once and the change is an ``error`` verdict;
* what the target returned is fingerprinted when its call returns and again after judging:
  an output that changed meanwhile (a thread or stream still writing) is an ``error``.

Crashes, hangs, ``os._exit``, memory without bound and processes or threads left running
cannot be dealt with in-process: :mod:`fuzz.loop.workers` runs this in a worker process
and turns those into verdicts too.
"""

from __future__ import annotations

import dataclasses
import enum
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prefix_referee.verify.compare import Expected, Segment, Verdict, expected, judge, whole
from prefix_referee.verify.digest import bits, segment_digests
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.process_state import RestoreError, capture
from prefix_referee.verify.target import Target


class Status(str, enum.Enum):
    """What happened to one target on one case.

    A ``str``: a member equals and hashes like its value, and ``str()``/``format()`` give
    the value, so JSON, counters keyed by it and messages show ``pass``, ``fail``,
    ``skip``, ``error`` (write ``.value`` where a plain string is meant).
    """

    PASS = "pass"
    FAIL = "fail"
    SKIP = "skip"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass
class Outcome:
    """What happened: ``status`` is pass, fail, skip (with a reason) or error (``reason``).

    ``kind`` says what went wrong (the verdict's kind, ``error:<Exception>``,
    ``mutated-input``, ``crash``, ``timeout``, ...); ``distance`` is an approximate
    target's verdict against the exact reference (how far it is from exact attention).
    """

    target: str
    status: Status
    verdict: Verdict | None = None
    reason: str = ""
    seconds: float = 0.0
    kind: str = ""
    distance: Verdict | None = None
    digest: str = ""  # the bits of this case's out rows and lse columns (verify/invariance.py)

    @property
    def failed(self) -> bool:
        return self.status in (Status.FAIL, Status.ERROR)

    def summary(self) -> str:
        if self.verdict is not None:
            return f"{self.target}: {self.verdict.summary()}"
        return f"{self.target}: {self.status.value.upper()}: {self.reason}"


class TruthCache:
    """Reference results per case and approximation (None: exact), shared by every target
    run on that case."""

    def __init__(self) -> None:
        self._case: MaterializedCase | None = None
        self._truths: dict[str | None, Expected] = {}

    def get(self, case: MaterializedCase, target: Target | None) -> Expected:
        """The truth ``target`` is judged against (None: the exact reference)."""
        if case is not self._case:
            self._case, self._truths = case, {}
        bias = None if target is None else target.approximation_bias(case)
        key = None if bias is None else type(target).approximation_bias.__qualname__
        if key not in self._truths:
            self._truths[key] = expected(case, bias)
        return self._truths[key]


@dataclass
class Judged:
    """One run of a target on a (packed) case: an outcome per segment, the batch's own
    outcome when there are several segments (a pack is a case too), and timings."""

    outcomes: list[Outcome]
    timings: dict[str, float] = field(default_factory=dict)
    batch: Outcome | None = None
    fault: str | None = None  # process-wide state the target changed that could not be put back


def _fingerprint(t: Tensor) -> int:
    """A cheap checksum of a tensor's bits: a write outside the target's own tensors changes
    it (a wild write of random bits leaves a sum unchanged about never)."""
    return int(bits(t).sum(dtype=torch.int64)) if t.numel() else 0


def copy_case(case: MaterializedCase) -> MaterializedCase:
    """The case with every tensor (and host index tensor) copied: what the target gets."""
    layout = dataclasses.replace(case.layout, **{
        f.name: getattr(case.layout, f.name).clone() for f in dataclasses.fields(case.layout)})
    return dataclasses.replace(case, layout=layout,
                               **{name: t.clone() for name, t in case.tensors().items()})


def _changed(original: MaterializedCase, copy: MaterializedCase) -> list[str]:
    """Names of the tensors whose bits differ between the two."""
    copies = copy.tensors()
    names = [name for name, t in original.tensors().items()
             if copies[name].shape != t.shape or not torch.equal(bits(copies[name]), bits(t))]
    return names + [f"layout.{f.name}" for f in dataclasses.fields(original.layout)
                    if not torch.equal(getattr(original.layout, f.name),
                                       getattr(copy.layout, f.name))]


def _one_line(exc: BaseException) -> str:
    """``Type: first line of the message (file:line where it was raised)``."""
    lines = str(exc).strip().splitlines()
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {lines[0] if lines else ''}{where}"


def _error(target: Target, kind: str, reason: str, count: int, seconds: float = 0.0
           ) -> list[Outcome]:
    return [Outcome(target.name, Status.ERROR, reason=reason, kind=kind, seconds=seconds)
            for _ in range(count)]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says an allocation failed (host or device)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text)


def _call_error(exc: BaseException) -> tuple[str, str]:
    """The kind and the one-line reason of an exception the target's call raised."""
    if isinstance(exc, SystemExit):
        return "exit", f"the target called sys.exit({exc.code!r})"
    if out_of_memory(exc):
        return "memory", f"the target ran out of memory: {_one_line(exc)}"
    return f"error:{type(exc).__name__}", _one_line(exc)


def _output_fingerprints(out: object, lse: object) -> list[int | None]:
    """Fingerprints of what the target returned (None for what is no tensor)."""
    found: list[int | None] = []
    for t in (out, lse):
        try:
            found.append(_fingerprint(t) if isinstance(t, Tensor) else None)
        except Exception:  # a dtype or device the checksum cannot read: the judge says why
            found.append(None)
    return found


@dataclass
class Call:
    """One contained call of a target: what it returned, or how it failed (``error``: the
    verdict's kind and reason; ``raised``: the call itself raised). Process-wide state the
    call changed is already put back; ``fault`` is what could not be."""

    out: object = None
    lse: object = None
    error: tuple[str, str] | None = None
    raised: bool = False
    seconds: float = 0.0
    fault: str | None = None


def contained_call(target: Target, given: MaterializedCase,
                   on_target_call: Callable[[], None] = lambda: None,
                   after_target_call: Callable[[], str | None] = lambda: None) -> Call:
    """Call ``target`` on ``given`` (its own copy of the case) and contain it: an exception
    or exit is an error, process-wide state it changed is put back (and is an error), what
    it left running is an error (``after_target_call`` kills it and says what it was)."""
    on_target_call()
    before = capture()
    start = time.perf_counter()
    call = Call()
    try:
        call.out, call.lse = target.run(given)
        _synchronize(given.device)
    except (Exception, SystemExit) as exc:  # the target's own failure is a verdict
        call.error, call.raised = _call_error(exc), True
    call.seconds = time.perf_counter() - start
    if call.error is not None and call.error[0] == "memory" and given.device.type == "cuda":
        torch.cuda.empty_cache()  # what the target allocated went with its exception
    try:
        changed = before.restore()
    except RestoreError as exc:
        changed, call.fault = [f"{exc} (could not be restored)"], str(exc)
    left = after_target_call()
    if call.error is None and changed:
        call.error = ("global-state", "the target changed process-wide state: "
                      + "; ".join(changed))
    elif call.error is None and left is not None:
        call.error = ("stray-process", f"the target left {left} running after its call "
                      "returned (killed)")
    return call


def run_and_judge(target: Target, case: MaterializedCase, segments: list[Segment] | None = None,
                  truths: TruthCache | None = None,
                  on_target_call: Callable[[], None] = lambda: None,
                  after_target_call: Callable[[], str | None] = lambda: None,
                  on_result: Callable[[object, object], None] | None = None) -> Judged:
    """Run ``target`` once on ``case`` and judge every segment (default: the whole case).

    Never raises for the target's fault. ``on_target_call`` fires right before the call;
    ``after_target_call`` right after it, and returns what the target left running (a
    worker kills the processes it started), or None. Process-wide state the call changed
    is put back before anything else (:mod:`verify.process_state`). ``on_result`` gets
    what the call returned (``out``, ``lse``). Timings: ``reference`` (truth), ``target``
    (the call, synchronized), ``judge``.
    """
    segments = segments or [whole(case)]
    truths = truths or TruthCache()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    truth = truths.get(case, target)
    exact = None if target.exact else truths.get(case, None)
    fingerprints = [_fingerprint(t) for t in (*case.tensors().values(), truth.out, truth.lse)]
    given = copy_case(case)
    _synchronize(case.device)
    timings["reference"] = time.perf_counter() - start
    call = contained_call(target, given, on_target_call, after_target_call)
    seconds, fault = call.seconds, call.fault

    def failed(kind: str, reason: str) -> Judged:
        return Judged(_error(target, kind, reason, len(segments), seconds), timings,
                      fault=fault)

    if not call.raised:
        timings["target"] = seconds
    if call.error is not None:
        return failed(*call.error)
    out, lse = call.out, call.lse
    if on_result is not None:
        on_result(out, lse)
    start = time.perf_counter()
    mutated = _changed(case, given)
    if mutated:
        return failed("mutated-input", "the target wrote into its input " + ", ".join(mutated))
    after = [_fingerprint(t) for t in (*case.tensors().values(), truth.out, truth.lse)]
    if after != fingerprints:
        return failed("wild-write", "memory outside the target's own tensors changed during "
                      "its call (the referee's inputs or truth)")
    returned = _output_fingerprints(out, lse)
    # A kernel without an LSE may return None even if it did not say so: out alone is judged.
    wants_lse, packed = target.capabilities.lse and lse is not None, len(segments) > 1
    verdicts = judge(case, out, lse, truth, segments, wants_lse, with_batch=packed)
    distances = (judge(case, out, lse, exact, segments, wants_lse, with_batch=packed)
                 if exact is not None else [None] * len(verdicts))
    outcomes = [_outcome(target, v, d, seconds / len(segments))
                for v, d in zip(verdicts, distances, strict=True)]
    if verdicts[0].kind != "contract":
        lse_bits = lse if wants_lse else None
        digests = segment_digests(out, lse_bits, segments)
        if packed:
            digests += segment_digests(out, lse_bits, [whole(case)])
        for outcome, digest in zip(outcomes, digests, strict=True):
            outcome.digest = digest
    timings["judge"] = time.perf_counter() - start
    late = [name for name, a, b in zip(("out", "lse"), returned,
                                       _output_fingerprints(out, lse), strict=True)
            if a is not None and a != b]
    if late:
        return failed("late-write", f"the target's {' and '.join(late)} changed after its "
                      "call returned (a thread, timer or stream of the target still writing)")
    return Judged(outcomes[:len(segments)], timings, outcomes[-1] if packed else None)


def _outcome(target: Target, verdict: Verdict, distance: Verdict | None, seconds: float
             ) -> Outcome:
    status = (Status.PASS if verdict.passed
              else Status.FAIL if verdict.judgeable else Status.ERROR)
    return Outcome(target.name, status, verdict, kind=verdict.kind, seconds=seconds,
                   distance=distance)


def evaluate(target: Target, case: MaterializedCase, truths: TruthCache | None = None
             ) -> Outcome:
    """Run ``target`` on ``case`` and apply the policy, or skip it with the reason why."""
    reason = target.unavailable_reason() or target.unsupported_reason(case.spec,
                                                                      case.device.type)
    if reason:
        return Outcome(target.name, Status.SKIP, reason=reason)
    return run_and_judge(target, case, truths=truths).outcomes[0]
