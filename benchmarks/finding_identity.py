"""``python -m benchmarks.finding_identity``: one bug, one finding, on every seed.

For each planted single-cause fault (``verify.targets.faults.SINGLE_CAUSE``) and each
combination given, a fixed-seed ``python -m fuzz`` run of ``--examples`` cases per seed:
how many findings it reported (each fault must give exactly one, a combination of N
faults exactly N), which, and the share of the exploration spent triaging failures. The
figures come from each run's report.json; docs/fuzzing.md records them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from prefix_referee.fuzz.cli import main as fuzz
from prefix_referee.verify.kernels.interpreter import use_interpreter_without_cuda
from prefix_referee.verify.targets.faults import SINGLE_CAUSE

COMBINATIONS = ("gqa_ratio_4+lse_base2+window_inclusive_under_clamp",
                "context_positions_restart+low_precision_accumulator+page_size_assumed_16")


def run(fault: str, seed: int, examples: int, space: str | None, out: Path) -> dict[str, Any]:
    """One fuzz run of ``fault:<fault>``: its findings and where the time went."""
    argv = ["--target", f"fault:{fault}", "--examples", str(examples), "--seed", str(seed),
            "--device", "cpu", "--report-dir", str(out), "--shrink-budget", "2", "--no-plots"]
    if space:
        argv += ["--space", space]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fuzz(argv)
    entry = json.loads((out / "latest" / "report.json").read_text())["targets"][0]
    seconds = entry["seconds"]
    return {"fault": fault, "seed": seed, "judged": entry["judged"],
            "failed": entry["stats"]["counts"].get("fail", 0)
            + entry["stats"]["counts"].get("error", 0),
            "findings": [f["finding"] for f in entry["findings"]],
            "triage_share": seconds["triage"] / seconds["explore"] if seconds["explore"] else 0,
            "explore_seconds": seconds["explore"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.finding_identity",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="*", default=[*SINGLE_CAUSE, *COMBINATIONS],
                        help="faults (a+b for one kernel with several; default: every "
                             "single-cause fault and two combinations of three)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--space", help="the case space (default: the device's)")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    use_interpreter_without_cuda()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fault in args.faults:
            for seed in args.seeds:
                rows.append(run(fault, seed, args.examples, args.space, Path(tmp)))
                r = rows[-1]
                print(f"{fault} seed {seed}: {len(r['findings'])} findings "
                      f"({'; '.join(r['findings'])}), {r['failed']} failing cases, triage "
                      f"{100 * r['triage_share']:.0f}% of {r['explore_seconds']:.1f} s",
                      flush=True)
    wrong = [r for r in rows if len(r["findings"]) != r["fault"].count("+") + 1]
    print(f"\n{len(rows) - len(wrong)} of {len(rows)} runs gave one finding per cause")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
