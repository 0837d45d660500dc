"""``python -m benchmarks.invariance_faults``: each fault beyond tolerance is found by its
check, and by nothing else.

For each planted fault of ``verify.targets.faults.INVARIANCE_FAULTS`` (and the batch-level
decision ``noncausal_without_images``), fixed-seed ``python -m fuzz`` runs of
``--examples`` cases per seed: whether the finding its check must report came (and after
how many judged cases), whatever else was reported, and the same run with
``--tolerance-only``, where a fault within tolerance must come out clean. docs/fuzzing.md
records the figures.
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
from prefix_referee.verify.invariance import SYMPTOMS
from prefix_referee.verify.targets.faults import INVARIANCE_FAULT_PROPERTIES

# The batch-level decision is a tolerance bug: any finding of the values is its finding.
BATCH_LEVEL = "noncausal_without_images"


def expected_symptom(fault: str) -> str | None:
    """The symptom the fault's finding must have (None: any tolerance symptom)."""
    prop = INVARIANCE_FAULT_PROPERTIES.get(fault)
    return None if prop is None else SYMPTOMS[prop]


def run(fault: str, seed: int, examples: int, out: Path, *extra: str) -> dict[str, Any]:
    argv = ["--target", f"fault:{fault}", "--examples", str(examples), "--seed", str(seed),
            "--device", "cpu", "--report-dir", str(out), "--shrink-budget", "2", "--no-plots",
            *extra]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fuzz(argv)
    entry = json.loads((out / "latest" / "report.json").read_text())["targets"][0]
    return {"fault": fault, "seed": seed, "mode": extra[0] if extra else "default",
            "judged": entry["judged"], "checks": entry["checks"],
            "findings": {f["finding"]: f["found_after"] for f in entry["findings"]}}


def found(result: dict[str, Any]) -> int | None:
    """After how many judged cases the fault's own finding came, or None."""
    want = expected_symptom(result["fault"])
    hits = [after for name, after in result["findings"].items()
            if (want is None and name.split(":")[0] not in SYMPTOMS.values())
            or (want is not None and name.startswith(f"{want}:"))]
    return min(hits) if hits else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.invariance_faults",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--faults", nargs="*",
                        default=[*INVARIANCE_FAULT_PROPERTIES, BATCH_LEVEL])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--examples", type=int, default=150)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args(argv)
    rows = []
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for fault in args.faults:
            for seed in args.seeds:
                result = run(fault, seed, args.examples, Path(tmp) / f"{fault}-{seed}")
                after = found(result)
                want = expected_symptom(fault)
                # Whatever else came: another symptom, or a second finding of a tolerance bug.
                others = [n for n, at in result["findings"].items()
                          if (n.split(":")[0] in SYMPTOMS.values()) != (want is not None)
                          or (want is not None and not n.startswith(f"{want}:"))
                          or (want is None and at != after)]
                line = (f"{fault:<26} seed {seed}: "
                        + (f"found after {after} judged" if after is not None else "NOT FOUND")
                        + f" ({result['judged']} judged, {result['checks']} check jobs)"
                        + (f"; also {', '.join(others)}" if others else ""))
                if fault in INVARIANCE_FAULT_PROPERTIES:
                    alone = run(fault, seed, args.examples, Path(tmp) / f"{fault}-{seed}-t",
                                "--tolerance-only")
                    rows.append(alone)
                    line += ("; tolerance only: clean" if not alone["findings"] else
                             f"; tolerance only: {', '.join(alone['findings'])}")
                    ok &= not alone["findings"]
                ok &= after is not None and not others
                rows.append(result)
                print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
