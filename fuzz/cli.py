"""``prefix-fuzz``: fuzz targets, replay reproducers, check or regenerate golden/.

``python -m prefix_referee.fuzz`` is the same command (``python -m fuzz`` in a checkout).

Exit codes: 0 clean, 1 a failure (or a golden mismatch) was found, 2 a usage or input
error (reported in one line), 3 inconclusive (no failure, but a target judged fewer
cases than ``--min-cases``), 130 interrupted (the partial report is written).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import torch
from rich.console import Console

from prefix_referee.fuzz.cases.models import MODELS
from prefix_referee.fuzz.cases.spaces import SPACES, default_space, space_for
from prefix_referee.fuzz.cases.strategies import Space
from prefix_referee.fuzz.golden.cases import GoldenError, regenerate
from prefix_referee.fuzz.golden.replay import check_expectation, expectations, golden_files
from prefix_referee.fuzz.loop.campaign import Campaign, TargetRun
from prefix_referee.fuzz.loop.containment import (
    HOST_MEMORY_SHARE,
    MIN_WORKER_MEMORY,
    default_worker_memory,
    format_size,
    parse_size,
)
from prefix_referee.fuzz.loop.jobs import Job
from prefix_referee.fuzz.loop.schedule import run_campaigns
from prefix_referee.fuzz.loop.settings import RunSettings
from prefix_referee.fuzz.loop.workers import WorkerPool
from prefix_referee.fuzz.records.casefiles import COMMAND, relative
from prefix_referee.fuzz.records.findings import (
    ExpectationError,
    expected_findings,
    finding_json,
    write_findings,
)
from prefix_referee.fuzz.records.journal import (
    JournalError,
    RunDirectory,
    check_writable_file,
    replace_atomically,
    write_atomically,
)
from prefix_referee.fuzz.records.progress import FuzzProgress
from prefix_referee.fuzz.report.junit import write_junit
from prefix_referee.fuzz.report.summary import (
    RunReport,
    render_invariance_table,
    render_table,
    report_json,
    report_markdown,
    restart_counts,
)
from prefix_referee.golden import GOLDEN_DIR
from prefix_referee.verify.case import KV_DTYPES, CaseError, CaseSpec, read_case
from prefix_referee.verify.invariance import SYMPTOMS, Variant, variants_from_json
from prefix_referee.verify.kernels.interpreter import (
    interpreter_patches,
    use_interpreter_without_cuda,
)
from prefix_referee.verify.limits import Limits, memory_limit
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.plotting import PlotsUnavailable
from prefix_referee.verify.runner import TruthCache
from prefix_referee.verify.target import Target
from prefix_referee.verify.targets import available_targets, get_target
from prefix_referee.verify.versions import device_description, suite_version, versions

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# Seconds of exploration when neither --budget nor --examples is given: the whole
# default run (imports, every CPU target, reports) stays near a minute.
DEFAULT_BUDGET = 45.0
DEFAULT_SHRINK_SECONDS = 10.0
# A target's call may take this long: a first FA4 compile takes up to ~16 s, and a pack
# of the largest GPU cases some seconds more.
DEFAULT_CASE_TIMEOUT = 120.0
DEFAULT_MIN_CASES = 10
DEFAULT_MAX_FINDINGS = 8
# Cases and keys per pack: small on a CPU (cases are small, a pack is latency), large on
# a GPU (one kernel call, one reference for many cases).
PACK_SIZES = {"cpu": (8, 1024), "cuda": (32, 32768)}
COMMANDS = ("run", "replay", "golden")
PROG = COMMAND


class UsageError(Exception):
    """Bad arguments or input: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _positive(kind: type[int] | type[float]) -> type:
    """An argparse type: a finite number above zero of ``kind``."""
    what = "integer" if kind is int else "number"

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive {what}, got {text!r}")
        return value

    return parse


def _size(text: str) -> int:
    """An argparse type: a memory size (4G, 512M) of at least what a worker needs."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if size < MIN_WORKER_MEMORY:
        raise argparse.ArgumentTypeError(f"{text!r} is less than the "
                                         f"{format_size(MIN_WORKER_MEMORY)} a worker needs")
    return size


def _seed(text: str) -> int:
    if not text.isdigit() or int(text) >= 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}")
    return int(text)


def _version_line() -> str:
    found = versions()
    others = ", ".join(f"{name} {found[name]}" for name in ("torch", "triton", "flash-attn-4")
                       if found[name])
    return f"prefix-attention-referee {suite_version()} ({others}; python {found['python']})"


def _device_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where cases run (default: cuda if available, else cpu)")
    parser.add_argument("--isolation", choices=("process", "none"), default="process",
                        help="run kernels in worker processes that a crash or hang cannot take "
                             "down (default), or in this process, for a debugger")
    parser.add_argument("--case-timeout", type=_positive(float), default=DEFAULT_CASE_TIMEOUT,
                        metavar="SECONDS",
                        help="a target's call running longer is an error and its worker is "
                             "restarted (default: %(default)g, which allows for compiling)")
    parser.add_argument("--worker-memory", type=_size, metavar="SIZE",
                        help="host memory one worker may use, itself included (e.g. 8G); a "
                             "target that needs more gets an error and its worker is "
                             "restarted (default: "
                             f"{HOST_MEMORY_SHARE:.0%}% of this machine's memory shared by the "
                             "workers)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version_line())
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", prog=f"{PROG} [run]",
        description="Fuzz targets against the float64 reference; attribute every failure to "
                    "a finding (a cause: what is wrong and what it needs); shrink each new "
                    "finding to a small case and save it as a reproducer.",
        epilog=f"Other commands: '{PROG} replay FILE...' reruns reproducers or any case "
               f"file; '{PROG} golden [--regenerate]' checks (or rewrites) the golden cases. "
               "Exit codes: 0 clean, 1 a new or stale finding, 2 usage or input error, "
               "3 inconclusive, 130 interrupted.")
    what = run.add_argument_group("what to fuzz")
    what.add_argument("--target", action="append", metavar="NAME",
                      help="a registered target, fault:<name> or module:callable; repeatable "
                           "(default: every target available on the device)")
    what.add_argument("--model", choices=sorted(MODELS),
                      help="draw the attention shapes of this model's layers (docs/models.md)")
    what.add_argument("--space", choices=sorted(SPACES),
                      help="the space cases are drawn from, narrowed per target to what it "
                           "declares it accepts (default: gpu on cuda, cpu on cpu; --profile "
                           "is a deprecated alias)")
    what.add_argument("--kv-dtype", choices=KV_DTYPES,
                      help="draw every case with its K/V cache in this FP8 dtype, with float32 "
                           "descales per tensor or per KV head (docs/contract.md); targets "
                           "that do not declare it are left out (default: K/V in the query "
                           "dtype)")
    what.add_argument("--profile", dest="space", choices=sorted(SPACES), help=argparse.SUPPRESS)
    what.add_argument("--seed", type=_seed, help="seed of the case stream (default: random; "
                      "the report records it)")
    how_long = run.add_argument_group("how long")
    how_long.add_argument("--budget", type=_positive(float), metavar="SECONDS",
                          help="seconds of exploration in all, shared by the targets "
                               f"(default: {DEFAULT_BUDGET:g} unless --examples is given)")
    how_long.add_argument("--examples", type=_positive(int), metavar="N",
                          help="judged cases per target; with --budget, whichever ends first")
    how_long.add_argument("--min-cases", type=_positive(int), default=DEFAULT_MIN_CASES,
                          metavar="N", help="a target judging fewer cases is inconclusive, "
                                            "not clean (default: %(default)s)")
    findings = run.add_argument_group("findings")
    findings.add_argument("--max-findings", "--max-failures", dest="max_findings",
                          type=_positive(int), default=DEFAULT_MAX_FINDINGS, metavar="N",
                          help="stop a target after N new findings; sightings of known ones "
                               "never stop it (default: %(default)s; --max-failures is a "
                               "deprecated alias)")
    findings.add_argument("--shrink-budget", type=_positive(float), metavar="SECONDS",
                          default=DEFAULT_SHRINK_SECONDS,
                          help="seconds each new finding may be shrunk for (default: "
                               "%(default)g)")
    findings.add_argument("--invariance", action="store_true",
                          help="also measure what no target claims: determinism, batch "
                               "invariance, page placement and stale state, checked bit for bit "
                               "on every passing pack; the report says how far each target is "
                               "from each (claimed ones and stale state are checked anyway)")
    findings.add_argument("--tolerance-only", action="store_true",
                          help="judge tolerance only: no checks beyond it, not even of what a "
                               "target claims or of stale state (to time what they cost)")
    findings.add_argument("--expect", "--expect-failures", dest="expect", action="append",
                          type=Path, metavar="FILE", default=[],
                          help="expected findings: a findings/<target>.json a run wrote, or a "
                               "reproducer; replayed first, they are reported, not failing, "
                               "while they still reproduce; repeatable (--expect-failures is "
                               "a deprecated alias)")
    where = run.add_argument_group("where it runs")
    _device_options(where)
    where.add_argument("--devices", metavar="LIST",
                       help="with --device cuda: the GPUs to use, e.g. cuda:0,cuda:1 (default: "
                            "every visible one); each runs its own workers")
    where.add_argument("--pack-cases", type=_positive(int), metavar="N",
                       help="cases packed into one batch at most (default: 8 on a CPU, 32 on a "
                            "GPU; 1 judges every case alone); the composition of each pack is "
                            "drawn: a mix, one case alone, only text, only decodes, only images")
    where.add_argument("--workers", type=_positive(int), default=1, metavar="N",
                       help="worker processes per device, each with its own case stream "
                            "(default: %(default)s; on a CPU each takes one core)")
    output = run.add_argument_group("output")
    output.add_argument("--report-dir", type=Path, default=Path("fuzz-out"), metavar="DIR",
                        help="each run writes into a new directory here (default: %(default)s)")
    output.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    output.add_argument("--no-plots", dest="plots", action="store_false",
                        help="write no ratios.png (a second or two less per run)")
    run.set_defaults(handler=run_command)

    replay = commands.add_parser(
        "replay", prog=f"{PROG} replay",
        description="Rerun case files (reproducers, golden files, any case JSON) and print "
                    "each verdict. Exit 1 if any target fails, 2 if a target asked for "
                    "(--target, or a file's 'target') cannot run here.")
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("--target", action="append", metavar="NAME",
                        help="run on this target (repeatable; default: the file's 'target' "
                             "annotation, else the targets of its 'expect' annotation)")
    _device_options(replay)
    replay.set_defaults(handler=replay_command)

    golden = commands.add_parser(
        "golden", prog=f"{PROG} golden",
        description="Replay every golden file and compare each target's verdict with the "
                    "file's 'expect' annotation (exit 1 on a mismatch); targets that cannot "
                    "run here are skipped.")
    golden.add_argument("--regenerate", action="store_true",
                        help="rewrite the golden files from fuzz/golden/cases.py instead")
    golden.add_argument("--dir", type=Path, default=GOLDEN_DIR, metavar="DIR",
                        help="the golden directory (default: the cases shipped with the suite)")
    golden.add_argument("--target", action="append", metavar="NAME", dest="targets",
                        help="replay only this target's expected verdicts (repeatable; "
                             "default: every target a file names)")
    golden.add_argument("--device", choices=("cpu", "cuda"),
                        help="where cases run (default: cuda if available, else cpu)")
    golden.set_defaults(handler=golden_command)
    return parser


def _resolve_device(requested: str | None) -> str:
    """The device type to run on; on CPU, also one torch thread unless OMP_NUM_THREADS says.

    Cases are small: a thread pool only adds synchronisation per tiny op, which on a
    busy 2-core machine made the CPU fuzzer ten times slower.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here")
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return device


def _devices(device: str, listed: str | None) -> tuple[str, ...]:
    if device == "cpu":
        if listed:
            raise UsageError("--devices needs --device cuda")
        return ("cpu",)
    count = torch.cuda.device_count()
    if not listed:
        return tuple(f"cuda:{i}" for i in range(count))
    devices = tuple(d.strip() for d in listed.split(",") if d.strip())
    for d in devices:
        index = d.removeprefix("cuda:")
        if not d.startswith("cuda:") or not index.isdigit() or int(index) >= count:
            raise UsageError(f"--devices: {d!r} is not one of cuda:0..cuda:{count - 1}")
    return tuple(dict.fromkeys(devices))


def _target(name: str) -> Target:
    try:
        return get_target(name)
    except KeyError as exc:  # UnknownTargetError, or fault:<unknown>
        raise UsageError(str(exc.args[0])) from None
    except Exception as exc:  # a registered target whose factory is broken
        raise UsageError(f"target {name} cannot be loaded: {type(exc).__name__}: {exc}"
                         ) from None


def select_targets(names: Sequence[str] | None, device: str) -> list[Target]:
    """The targets to fuzz; each must be able to run on ``device``."""
    if not names:
        try:
            names = available_targets(device)
        except Exception as exc:  # a registered target whose factory is broken
            raise UsageError(f"cannot list the available targets: {type(exc).__name__}: "
                             f"{exc}") from None
        if not names:
            raise UsageError(f"no registered target is available on {device}")
    targets = []
    for name in dict.fromkeys(names):
        target = _target(name)
        reason = target.unavailable_reason()
        if reason is None and device not in target.capabilities.devices:
            reason = f"it runs on {', '.join(sorted(target.capabilities.devices))}"
        if reason is not None:
            raise UsageError(f"target {name} cannot run on {device} here: {reason}")
        targets.append(target)
    return targets


def _spaces(targets: list[Target], base: list[Space], named: bool,
            console: Console) -> list[tuple[Target, list[Space]]]:
    """Each target with the spaces it accepts; a target that accepts none is left out (or,
    named explicitly, is a usage error)."""
    chosen = []
    for target in targets:
        spaces = [s for s in (space_for(target.capabilities, b) for b in base) if s is not None]
        if spaces:
            chosen.append((target, spaces))
        elif named:
            raise UsageError(f"target {target.name} accepts none of the cases of this space "
                             "or model (head dims, dtypes or page sizes)")
        else:
            console.print(f"skipping {target.name}: it accepts none of these cases",
                          markup=False)
    if not chosen:
        raise UsageError("no target accepts these cases")
    return chosen


class Interrupted(KeyboardInterrupt):
    """SIGTERM, treated like Ctrl-C: stop, write the partial report, exit 130."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted


def _publish(report: RunReport, run_dir: RunDirectory, junit: Path | None,
             console: Console, plots: bool = True) -> None:
    """The table and replay hints on stdout; the report files on disk (``plots``: and
    ratios.png)."""
    console.print(render_table(report))
    if report.settings.invariance:
        console.print(render_invariance_table(report))
    run_dir.snapshot("report.json", report_json(report), force=True)
    write_atomically(run_dir.path / "report.md", report_markdown(report))
    written = [run_dir.path / "report.json", run_dir.path / "report.md"]
    try:
        if plots:
            from prefix_referee.fuzz.report.plots import plot_ratios

            stats = {t.target: t.stats for t in report.targets}
            replace_atomically(run_dir.path / "ratios.png",
                               lambda path: plot_ratios(stats, path))
            written.append(run_dir.path / "ratios.png")
    except PlotsUnavailable as exc:
        console.print(f"no ratios.png: {exc}", markup=False)
    if junit is not None:
        replace_atomically(junit, lambda path: write_junit(report, path))
        written.append(junit)
    for run in report.targets:
        for finding in run.new_findings:
            console.print(f"{run.target} [{finding.identity}] {finding.words}; replay with "
                          f"'{_replay_hint(finding.path)}'", soft_wrap=True, markup=False)
        for stale in run.stale:
            console.print(f"{run.target} [{stale.expected.identity}] is expected in "
                          f"{stale.expected.path} but its case {stale.now}: fixed? remove it",
                          soft_wrap=True, markup=False)
        if run.restarts:  # a fresh worker compiles again: say why each went
            console.print(f"{run.target}: workers replaced: {'; '.join(restart_counts(run))}",
                          soft_wrap=True, markup=False)
        if run.findings:
            path = _write_findings(run, run_dir)
            written.append(path)
            if run.new_findings:
                console.print(f"{run.target}: to accept these findings, pass --expect "
                              f"{relative(path)}", soft_wrap=True, markup=False)
    console.print("reports: " + ", ".join(relative(p) for p in written), soft_wrap=True,
                  markup=False)


def _write_findings(run: TargetRun, run_dir: RunDirectory) -> Path:
    """findings/<target>.json: every finding of the target, in the form --expect reads."""
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in run.target)
    path = run_dir.path / "findings" / f"{slug}.json"
    try:
        path.parent.mkdir(exist_ok=True)
    except OSError as exc:
        raise JournalError(f"cannot create {path.parent}: {exc.strerror}") from None
    write_findings(path, run.target, (finding_json(f.identity, f.words, f.spec)
                                      for f in run.findings))
    return path


def _replay_hint(path: Path | None) -> str:
    if path is None:
        return "-"
    spec = read_case(path)
    return str(spec.extra.get("replay", f"{PROG} replay {relative(path)}"))


def run_command(args: argparse.Namespace) -> int:
    if args.invariance and args.tolerance_only:
        raise UsageError("--invariance and --tolerance-only exclude each other")
    device = _resolve_device(args.device)
    devices = _devices(device, args.devices)
    try:
        if args.junit is not None:
            check_writable_file(args.junit, "--junit")
        expected = expected_findings(args.expect)
    except (JournalError, ExpectationError) as exc:
        raise UsageError(str(exc)) from None
    # A log or a pipe gets a wide table rather than rich's default 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    space = args.space or default_space(device)
    drawn = SPACES[space]
    if args.kv_dtype is not None:
        drawn = drawn.narrowed(kv_dtypes=(args.kv_dtype,))
    base = [drawn] if args.model is None else MODELS[args.model].spaces(drawn)
    chosen = _spaces(select_targets(args.target, device), base, bool(args.target), console)
    seconds = args.budget if args.budget is not None or args.examples else DEFAULT_BUDGET
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        run_dir = RunDirectory(args.report_dir, seed)
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    pack_cases, pack_tokens = PACK_SIZES[device]
    if args.pack_cases is not None:
        pack_cases = args.pack_cases
    settings = RunSettings(
        targets=tuple(t.name for t, _ in chosen), device=device, devices=devices,
        workers=args.workers, space=space, model=args.model, kv_dtype=args.kv_dtype, seed=seed,
        budget=seconds,
        examples=args.examples, min_cases=args.min_cases, max_findings=args.max_findings,
        shrink_seconds=args.shrink_budget, case_timeout=args.case_timeout,
        isolation=args.isolation, pack_cases=pack_cases, pack_tokens=pack_tokens,
        expected=tuple(expected), versions=versions(), interpreter=interpreter_patches(),
        worker_memory=args.worker_memory or default_worker_memory(len(devices) * args.workers),
        invariance=args.invariance, checks=not args.tolerance_only)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    # Ctrl-C too, even where the run was started with SIGINT ignored (a shell's background
    # job, some CI runners): a signal the user sends must stop it the same way.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.perf_counter()
    campaigns: list[Campaign] = []
    described = device_description(devices[0])

    def report(*, partial: bool = False, interrupted: bool = False) -> RunReport:
        return RunReport(settings, [c.run for c in campaigns], time.perf_counter() - start,
                         described, run_dir.path, interrupted, partial)

    def snapshot() -> None:  # report.json every SNAPSHOT_INTERVAL s while the run goes on
        if run_dir.due():
            run_dir.snapshot("report.json", lambda: report_json(report(partial=True)))

    interrupted = False
    try:
        with FuzzProgress(seconds, None if seconds else args.examples) as progress:
            run_dir.snapshot("report.json", report_json(report(partial=True)), force=True)
            for target, spaces in chosen:
                campaigns.append(Campaign(target, spaces, settings, run_dir, progress.case,
                                          snapshot))
            run_campaigns(campaigns, budget=seconds, examples=args.examples,
                          min_cases=args.min_cases)
            for campaign in campaigns:
                if campaign.run.new_findings:
                    progress.note(f"shrinking {campaign.target.name}")
                campaign.finish()
    except KeyboardInterrupt:
        interrupted = True
    except JournalError as exc:  # the disk is full, the directory went: nothing more to write
        raise UsageError(str(exc)) from None
    finally:
        for campaign in campaigns:
            campaign.close()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        run_dir.close()
    final = report(interrupted=interrupted)
    try:
        _publish(final, run_dir, args.junit, console, args.plots)
    except JournalError as exc:
        raise UsageError(str(exc)) from None
    if interrupted:
        return EXIT_INTERRUPTED
    if final.failed:
        return EXIT_FOUND
    return EXIT_INCONCLUSIVE if final.inconclusive else EXIT_CLEAN


def _read(path: Path, limits: Limits) -> CaseSpec:
    try:
        return read_case(path, limits)
    except CaseError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _expectations(path: Path, spec: CaseSpec) -> dict[str, str]:
    try:
        return expectations(spec)
    except CaseError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _replay_targets(path: Path, spec: CaseSpec, requested: Sequence[str] | None
                    ) -> tuple[list[str], bool]:
    """The targets to rerun a file on, and whether each must run here: --target or the
    file's ``target`` annotation must; the targets of its ``expect`` annotation may be
    missing from this checkout or machine (a GPU-only target) and are then skipped."""
    if requested:
        return list(dict.fromkeys(requested)), True
    annotated = spec.extra.get("target")
    if annotated is not None:
        if not isinstance(annotated, str):
            raise UsageError(f"{path}: target: must be a target name, got {annotated!r}")
        return [annotated], True
    names = list(_expectations(path, spec))
    if not names:
        raise UsageError(f"{path}: no 'target' or 'expect' annotation; pass --target NAME")
    return names, False


def _runnable(name: str, device: str) -> str | None:
    """Why target ``name`` cannot run on ``device`` here, or None."""
    try:
        target = get_target(name)
    except KeyError:
        return "not registered here"
    reason = target.unavailable_reason()
    if reason is None and device not in target.capabilities.devices:
        reason = f"it runs on {', '.join(sorted(target.capabilities.devices))}"
    return reason


def replay_command(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    limits = Limits(max_bytes=memory_limit(device))
    work: dict[str, list[tuple[Path, CaseSpec]]] = {}
    skipped = 0
    for path in args.files:
        spec = _read(path, limits)
        _comparison(path, spec)
        names, required = _replay_targets(path, spec, args.target)
        for name in names:
            reason = _runnable(name, device) if required else None
            if required and reason is not None:
                _target(name)  # an unknown name gets its own message
                raise UsageError(f"target {name} cannot run here: {reason}")
            if not required and _runnable(name, device) is not None:
                skipped += 1
                continue
            work.setdefault(name, []).append((path, spec))
    failed = False
    worker_device = _devices(device, None)[0]
    for name, cases in work.items():
        unsupported = [(p, get_target(name).unsupported_reason(s, device)) for p, s in cases]
        with WorkerPool(name, [worker_device], case_timeout=args.case_timeout,
                        isolation=args.isolation,
                        memory=args.worker_memory or default_worker_memory(1)) as pool:
            for job_id, (path, spec) in enumerate(cases):
                reason = unsupported[job_id][1]
                if reason is not None:
                    print(f"{path}: {name}: SKIP: {reason}")
                    skipped += 1
                    continue
                compared = _comparison(path, spec)
                if compared is not None:
                    failed |= _replay_comparison(pool, job_id, path, name, *compared)
                    continue
                pool.submit(Job(job_id, (spec.to_dict(),), packed=False))
                results = []
                while not results:
                    results = pool.wait(1.0)
                outcome = results[0].outcomes[0]
                print(f"{path}: {outcome.summary()}")
                failed |= outcome.failed
    if skipped:
        print(f"{skipped} verdicts skipped (target not runnable here or declines the case)")
    return EXIT_FOUND if failed else EXIT_CLEAN


def _comparison(path: Path, spec: CaseSpec) -> tuple[str, list[Variant]] | None:
    """The property and the runs a reproducer of a finding beyond tolerance compares."""
    if "invariance" not in spec.extra:
        return None
    try:
        return variants_from_json(spec.extra["invariance"])
    except CaseError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _replay_comparison(pool: WorkerPool, job_id: int, path: Path, name: str, prop: str,
                       variants: list[Variant]) -> bool:
    """Run a reproducer's variants in order on one worker and print what each gave and how
    they compare; True if the property it names is broken again."""
    pool.submit(Job(job_id, (), packed=False, variants=tuple(v.to_json() for v in variants),
                    judge=True))
    results = []
    while not results:
        results = pool.wait(1.0)
    comparison = results[0].comparison
    if comparison is None:
        reason = results[0].outcomes[0].reason if results[0].outcomes else "no result"
        print(f"{path}: {name}: ERROR: the comparison did not finish: {reason}")
        return True
    for run in comparison.runs:
        said = (run.error or (run.verdict.splitlines()[0].removeprefix(f"{name}: ")
                              if run.verdict else "ran (no subject)"))
        print(f"{path}: {name}: {run.name}: {said}")
    broken = False
    for difference in comparison.differences:
        what = ("differs: " + difference.describe() if difference.differs
                else "the same bits")
        print(f"{path}: {name}: '{difference.variant}' against '{difference.against}' "
              f"({difference.property}): {what}")
        broken |= difference.property == prop and difference.differs
    print(f"{path}: {name}: {SYMPTOMS[prop].upper() if broken else prop + ' HOLDS'}")
    return broken


def golden_command(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    if args.targets and args.regenerate:
        raise UsageError("--target replays some targets; --regenerate rewrites every file")
    if args.regenerate:
        try:
            written = regenerate(args.dir, device)
        except (GoldenError, JournalError) as exc:
            raise UsageError(str(exc)) from None
        print(f"wrote {len(written)} golden files to {args.dir}")
        return EXIT_CLEAN
    files = golden_files(args.dir)
    if not files:
        raise UsageError(f"no golden files in {args.dir}")
    mismatches = skipped = checked = 0
    for path in files:
        spec = _read(path, Limits())
        case = materialize(spec, device)
        truths = TruthCache()
        for name, verdict in _expectations(path, spec).items():
            if args.targets and name not in args.targets:
                continue
            check = check_expectation(name, verdict, case, truths)
            checked += 1
            skipped += check.skip_reason is not None
            if check.skip_reason is None and not check.matches:
                mismatches += 1
                print(f"{path}: {check.describe()}")
    if not checked:
        raise UsageError(f"no golden file expects a verdict of {', '.join(args.targets)}")
    print(f"{len(files)} golden files, {checked} expected verdicts: {mismatches} mismatches, "
          f"{skipped} skipped (target not runnable here)")
    return EXIT_FOUND if mismatches else EXIT_CLEAN


def script(argv: Sequence[str] | None = None) -> int:
    """``prefix-fuzz``: like ``python -m``, it imports ``module:callable`` targets from the
    working directory (a console script's path starts at its own bin/ instead)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return main(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (never raises for bad input)."""
    use_interpreter_without_cuda()  # before anything imports triton
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or (arguments[0] not in COMMANDS and arguments[0] not in
                         ("-h", "--help", "--version")):
        arguments.insert(0, "run")
    try:
        args = build_parser().parse_args(arguments)
        return args.handler(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
