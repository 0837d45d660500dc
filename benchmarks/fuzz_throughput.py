"""``python -m benchmarks.fuzz_throughput``: judged cases per second of ``python -m fuzz``.

Per target, a fixed-seed run of ``--budget`` seconds (compilation included) on the given
devices, and where its time went: compiling, the target's calls, reference and baseline
(with materialization), the policy, the checks beyond tolerance, and bookkeeping (drawing,
packing, the workers' round trips). ``--compare-devices`` also runs each target with one
worker on the first device and prints the speed-up of all the workers (``--workers`` per
device) together; ``--compare-checks`` also runs it judging tolerance only
(``--tolerance-only``) and prints what the default checks beyond tolerance cost.
The figures come from each run's report.json; docs/gpu.md records them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prefix_referee.fuzz.cli import main as fuzz

SHARES = ("compile", "target", "reference_and_baseline", "policy", "checks", "bookkeeping")


def run(target: str, budget: float, seed: int, devices: str | None, device: str,
        out: Path, isolation: str = "process", workers: int = 1,
        checks: str = "default") -> dict[str, Any]:
    """One fuzz run; its report's entry for ``target`` plus the wall time. ``checks``:
    ``default``, ``tolerance-only`` or ``invariance`` (every property measured)."""
    argv = ["--target", target, "--budget", str(budget), "--seed", str(seed),
            "--device", device, "--report-dir", str(out), "--isolation", isolation,
            "--workers", str(workers)]
    if checks != "default":
        argv.append(f"--{checks}")
    if devices:
        argv += ["--devices", devices]
    start = time.perf_counter()
    code = fuzz(argv)
    wall = time.perf_counter() - start
    report = json.loads((out / "latest" / "report.json").read_text())
    entry = report["targets"][0]
    return {"target": target, "devices": devices or device, "workers": workers,
            "isolation": isolation, "checks": checks, "check_jobs": entry["checks"],
            "exit": code, "wall_s": wall,
            "judged": entry["judged"],
            "cases_per_s": entry["judged"] / max(entry["seconds"]["explore"], 1e-9),
            "seconds": entry["seconds"], "compiles": entry["compiles"],
            "findings": [f["finding"] for f in entry["findings"]],
            "features": entry["features"], "declined": sum(entry["declined"].values()),
            "drawn": entry["drawn"], "versions": report["versions"], "device": report["device"]}


def _row(r: dict[str, Any]) -> str:
    explore = max(r["seconds"]["explore"], 1e-9)
    shares = " ".join(f"{name} {100 * r['seconds'][name] / explore:4.1f}%" for name in SHARES)
    return (f"{r['target']:<14} {r['devices']:<16} x{r['workers']} {r['isolation']:<8} "
            f"{r['checks']:<14} {r['judged']:>6} judged "
            f"{r['cases_per_s']:7.2f}/s  {r['compiles']:>3} compiles  {shares}"
            f"  findings: {', '.join(r['findings']) or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz_throughput",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--target", action="append", default=None,
                        help="targets to measure (default: fa4, triton, two_call_fa4 on cuda; "
                             "sdpa, reference on cpu)")
    parser.add_argument("--budget", type=float, default=180.0, help="seconds per target")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--devices", help="e.g. cuda:0,cuda:1 (default: every visible GPU)")
    parser.add_argument("--workers", type=int, default=1, help="workers per device")
    parser.add_argument("--compare-devices", action="store_true",
                        help="also run on the first device alone and print the speed-up")
    parser.add_argument("--compare-isolation", action="store_true",
                        help="also run in-process (--isolation none) and print what worker "
                             "processes cost per case")
    parser.add_argument("--compare-checks", action="store_true",
                        help="also run judging tolerance only and print what the default "
                             "checks beyond tolerance cost in judged cases per second")
    parser.add_argument("--repeat", type=int, default=1,
                        help="with --compare-checks: alternate the two runs this many times "
                             "(a busy machine's noise averages out)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    targets = args.target or (["fa4", "triton", "two_call_fa4"] if args.device == "cuda"
                              else ["sdpa", "reference"])
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for target in targets:
            plans = [(args.devices, "process", args.workers, "default")]
            if args.compare_devices:
                first = None if args.device == "cpu" else (args.devices or "cuda:0").split(",")[0]
                plans.insert(0, (first, "process", 1, "default"))
            if args.compare_isolation:
                plans.insert(0, (plans[0][0], "none", 1, "default"))
            if args.compare_checks:
                plans = [(args.devices, "process", args.workers, checks)
                         for _ in range(args.repeat)
                         for checks in ("tolerance-only", "default")]
            for devices, isolation, workers, checks in plans:
                out = Path(scratch) / f"{target}-{len(results)}"
                result = run(target, args.budget, args.seed, devices, args.device, out, isolation,
                             workers, checks)
                results.append(result)
                print(_row(result), flush=True)
            mine = results[-len(plans):]
            if args.compare_checks:
                rates = {c: sum(r["cases_per_s"] for r in mine if r["checks"] == c)
                         / args.repeat for c in ("tolerance-only", "default")}
                cost = 1 - rates["default"] / max(rates["tolerance-only"], 1e-9)
                print(f"{target}: the default checks beyond tolerance cost {100 * cost:.1f}% of "
                      f"judged cases/s ({rates['default']:.2f} against "
                      f"{rates['tolerance-only']:.2f} tolerance only)", flush=True)
            if args.compare_isolation:
                inline, isolated = mine[0], mine[1]
                cost = 1 / max(isolated["cases_per_s"], 1e-9) - 1 / max(inline["cases_per_s"],
                                                                         1e-9)
                print(f"{target}: isolation costs {1e3 * cost:.2f} ms per judged case", flush=True)
            if args.compare_devices:
                one, many = mine[-2], mine[-1]
                print(f"{target}: {many['cases_per_s'] / max(one['cases_per_s'], 1e-9):.2f}x "
                      f"on {many['devices']} x{many['workers']} against one worker on "
                      f"{one['devices']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
