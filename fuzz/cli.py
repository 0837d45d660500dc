"""``python -m fuzz``: fuzz targets, replay reproducers, check or regenerate golden/.

Exit codes: 0 clean, 1 a failure (or a golden mismatch) was found, 2 a usage or
input error, reported in one line (unknown target, invalid case file, bad value).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console

from fuzz.casefiles import save_reproducer
from fuzz.explore import Budget, explore
from fuzz.golden import GOLDEN_DIR, check_expectation, expectations, golden_files
from fuzz.golden_cases import GoldenError, regenerate
from fuzz.junit import write_junit
from fuzz.progress import FuzzProgress
from fuzz.report import RunReport, TargetReport, render_table, write_reports
from fuzz.spaces import PROFILES, default_profile, space_for
from verify.case import CaseError, CaseSpec, read_case
from verify.kernels.interpreter import use_interpreter_without_cuda
from verify.materialize import materialize
from verify.runner import TruthCache, evaluate
from verify.targets import Target, available_targets, get_target

EXIT_CLEAN, EXIT_FOUND, EXIT_USAGE = 0, 1, 2
# Seconds of exploration when neither --budget nor --examples is given: the whole
# default run (imports, every CPU target, reports) stays near a minute.
DEFAULT_BUDGET = 45.0
DEFAULT_SHRINK_BUDGET = 30.0
COMMANDS = ("run", "replay", "golden")
PROG = "python -m fuzz"


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


def _seed(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        help="where cases run (default: cuda if available, else cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", prog=f"{PROG} [run]",
        description="Fuzz targets against the float64 reference with Hypothesis; shrink "
                    "each failure to a minimal case and save it as a reproducer.",
        epilog=f"Other commands: '{PROG} replay FILE...' reruns reproducers or any case "
               f"file; '{PROG} golden [--regenerate]' checks (or rewrites) golden/. "
               "Exit codes: 0 clean, 1 failures found, 2 usage or input error.")
    run.add_argument("--target", action="append", metavar="NAME",
                     help="a registered target, fault:<name> or module:callable; repeatable "
                          "(default: every target available on the device)")
    run.add_argument("--budget", type=_positive(float), metavar="SECONDS",
                     help="seconds of exploration in all, split evenly over the targets "
                          f"(default: {DEFAULT_BUDGET:g} unless --examples is given)")
    run.add_argument("--examples", type=_positive(int), metavar="N",
                     help="cases per target; with --budget, whichever ends first")
    run.add_argument("--shrink-budget", type=_positive(float), metavar="SECONDS",
                     default=DEFAULT_SHRINK_BUDGET,
                     help="seconds a target's failure may be shrunk for, on top of the budget "
                          "(default: %(default)g)")
    run.add_argument("--seed", type=_seed, help="seed of the case stream (default: random; "
                     "the report records it)")
    run.add_argument("--profile", choices=sorted(PROFILES),
                     help="the space cases are drawn from, narrowed per target to what it "
                          "declares it accepts (default: gpu on cuda, cpu on cpu)")
    _device_option(run)
    run.add_argument("--report-dir", type=Path, default=Path("fuzz-out"), metavar="DIR",
                     help="where reproducers and reports go (default: %(default)s)")
    run.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    run.set_defaults(handler=run_command)

    replay = commands.add_parser(
        "replay", prog=f"{PROG} replay",
        description="Rerun case files (reproducers, golden files, any case JSON) and print "
                    "each verdict. Exit 1 if any target fails.")
    replay.add_argument("files", nargs="+", type=Path, metavar="FILE")
    replay.add_argument("--target", action="append", metavar="NAME",
                        help="run on this target (repeatable; default: the file's 'target' "
                             "annotation, else the targets of its 'expect' annotation)")
    _device_option(replay)
    replay.set_defaults(handler=replay_command)

    golden = commands.add_parser(
        "golden", prog=f"{PROG} golden",
        description="Replay every golden file and compare each target's verdict with the "
                    "file's 'expect' annotation (exit 1 on a mismatch); targets that cannot "
                    "run here are skipped.")
    golden.add_argument("--regenerate", action="store_true",
                        help="rewrite the golden files from fuzz/golden_cases.py instead")
    golden.add_argument("--dir", type=Path, default=GOLDEN_DIR, metavar="DIR",
                        help="the golden directory (default: the cases shipped with the suite)")
    _device_option(golden)
    golden.set_defaults(handler=golden_command)
    return parser


def _resolve_device(requested: str | None) -> str:
    """The device to run on; on CPU, also one torch thread unless OMP_NUM_THREADS says.

    Cases are small: a thread pool only adds synchronisation per tiny op, which on a
    busy 2-core machine made the CPU fuzzer ten times slower.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device here")
    device = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return device


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


def _fuzz_each(targets: list[Target], args: argparse.Namespace, device: str, profile: str,
               seconds: float | None, base_seed: int) -> list[TargetReport]:
    """Explore the targets one after the other, each with an even share of the time left."""
    explored_seconds = 0.0
    reports = []
    with FuzzProgress(len(targets)) as progress:
        for index, target in enumerate(targets):
            share = None if seconds is None else max(
                0.0, (seconds - explored_seconds) / (len(targets) - index))
            budget = Budget(share, args.examples, args.shrink_budget)
            progress.start_target(target.name, budget)
            exploration = explore(target, space_for(target.capabilities, PROFILES[profile]),
                                  device=device, budget=budget, base_seed=base_seed,
                                  on_case=progress.case)
            progress.finish_target()
            explored_seconds += exploration.explore_seconds
            reproducer = None
            if exploration.failure is not None:
                reproducer = save_reproducer(exploration.failing_spec, exploration.failure,
                                             args.report_dir)
            reports.append(TargetReport(exploration, reproducer))
    return reports


def _publish(report: RunReport, report_dir: Path, junit: Path | None) -> None:
    """The table and replay hints on stdout; the report files on disk."""
    # A log or a pipe gets a wide table rather than rich's default 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(render_table(report))
    written = write_reports(report, report_dir)
    if junit is not None:
        write_junit(report, junit)
        written.append(junit)
    for target in report.targets:
        if target.reproducer is not None:
            console.print(f"{target.exploration.target}: replay with "
                          f"'{PROG} replay {target.reproducer}'", soft_wrap=True, markup=False)
    console.print("reports: " + ", ".join(str(p) for p in written), soft_wrap=True,
                  markup=False)


def run_command(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    targets = select_targets(args.target, device)
    profile = args.profile or default_profile(device)
    seconds = args.budget if args.budget is not None or args.examples else DEFAULT_BUDGET
    base_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    settings = {"targets": [t.name for t in targets], "device": device, "profile": profile,
                "seed": base_seed, "budget": seconds, "examples": args.examples,
                "shrink_budget": args.shrink_budget}
    start = time.perf_counter()
    reports = _fuzz_each(targets, args, device, profile, seconds, base_seed)
    report = RunReport(settings, reports, time.perf_counter() - start)
    _publish(report, args.report_dir, args.junit)
    return EXIT_FOUND if report.failed else EXIT_CLEAN


def _read(path: Path) -> CaseSpec:
    try:
        return read_case(path)
    except CaseError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _expectations(path: Path, spec: CaseSpec) -> dict[str, str]:
    try:
        return expectations(spec)
    except CaseError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _replay_targets(path: Path, spec: CaseSpec, requested: Sequence[str] | None
                    ) -> tuple[list[str], bool]:
    """The targets to rerun a file on, and whether each must exist here: --target or the
    file's ``target`` annotation must; the targets of its ``expect`` annotation may be
    missing from this checkout (a GPU-only target) and are then skipped."""
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


def replay_command(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    jobs = []
    for path in args.files:
        spec = _read(path)
        names, required = _replay_targets(path, spec, args.target)
        if required:
            for name in names:
                _target(name)
        jobs.append((path, spec, names))
    failed = False
    for path, spec, names in jobs:
        case = materialize(spec, device)
        truths = TruthCache()
        for name in names:
            try:
                target = get_target(name)
            except KeyError:
                print(f"{path}: {name}: SKIP: not registered here")
                continue
            outcome = evaluate(target, case, truths)
            print(f"{path}: {outcome.summary()}")
            failed |= outcome.failed
    return EXIT_FOUND if failed else EXIT_CLEAN


def golden_command(args: argparse.Namespace) -> int:
    device = _resolve_device(args.device)
    if args.regenerate:
        try:
            written = regenerate(args.dir, device)
        except GoldenError as exc:
            raise UsageError(str(exc)) from None
        print(f"wrote {len(written)} golden files to {args.dir}")
        return EXIT_CLEAN
    files = golden_files(args.dir)
    if not files:
        raise UsageError(f"no golden files in {args.dir}")
    mismatches = skipped = checked = 0
    for path in files:
        spec = _read(path)
        case = materialize(spec, device)
        truths = TruthCache()
        for name, verdict in _expectations(path, spec).items():
            check = check_expectation(name, verdict, case, truths)
            checked += 1
            skipped += check.skip_reason is not None
            if check.skip_reason is None and not check.matches:
                mismatches += 1
                print(f"{path}: {check.describe()}")
    print(f"{len(files)} golden files, {checked} expected verdicts: {mismatches} mismatches, "
          f"{skipped} skipped (target not runnable here)")
    return EXIT_FOUND if mismatches else EXIT_CLEAN


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (never raises for bad input)."""
    use_interpreter_without_cuda()  # before anything imports triton
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] not in COMMANDS:
        arguments.insert(0, "run")
    try:
        args = build_parser().parse_args(arguments)
        return args.handler(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
