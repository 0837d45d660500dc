"""Probe FA4 on the GPU: compile time per kernel configuration, verdicts, paged-poison behaviour.

One line of JSON per configuration: the first call's seconds (compile + run), the second
call's (run), the policy's verdict and ratios, and where the output is not finite.
docs/gpu.md quotes its figures.

    python -m benchmarks.fa4_probe [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prefix_referee.verify.case import parse_case
from prefix_referee.verify.compare import check, expected
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.targets.fa4 import FA4Target

BASE: dict[str, Any] = {
    "requests": [{"context_len": 300, "query_len": 700, "ranges": [[250, 420], [900, 1100]]},
                 {"query_len": 333, "ranges": [[10, 200]]}, {"context_len": 50, "query_len": 1}],
    "num_heads": 8, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16", "page_size": None,
    "seed": 3}
CONFIGS: dict[str, dict[str, Any]] = {
    "varlen_bf16_d128_g4": {},
    "varlen_fp16_d64_mha": {"dtype": "float16", "head_dim": 64, "num_kv_heads": 8},
    "varlen_bf16_d256_g2": {"head_dim": 256, "num_kv_heads": 4},
    "window_clamp": {"sliding_window": 100, "clamp_ranges_to_window": True},
    "softcap30": {"softcap": 30.0},
    "paged16": {"page_size": 16},
    "paged128_tma": {"page_size": 128},
    "paged80_d256_tma": {"page_size": 80, "head_dim": 256, "num_kv_heads": 4},
    "paged7": {"page_size": 7},
    "paged1": {"page_size": 1},
    "paged128_tma_nan": {"page_size": 128, "poison": "nan"},
    "paged64_nan": {"page_size": 64, "poison": "nan"},
    "paged16_nan": {"page_size": 16, "poison": "nan"},
}


def probe(name: str, changes: dict[str, Any], target: FA4Target) -> dict[str, Any]:
    spec = parse_case({**BASE, **changes})
    case = materialize(spec, "cuda")
    row: dict[str, Any] = {"config": name, "out_of_contract": target.unsupported_reason(
        spec, "cuda")}
    seconds = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            out, lse = target.run(case)
        except Exception as exc:  # a probe reports, it does not stop
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
            return row
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    row.update(first_call_s=round(seconds[0], 3), second_call_s=round(seconds[1], 4))
    bad_rows = (~torch.isfinite(out)).flatten(1).any(dim=1)
    row.update(nonfinite_rows=int(bad_rows.sum()), total_rows=int(out.shape[0]),
               nonfinite_lse=int((~torch.isfinite(lse)).sum()))
    if bool(bad_rows.any()):
        row["nonfinite_requests"] = sorted({v.index for v in case.requests()
                                            if bool(bad_rows[v.q_slice].any())})
    verdict = check(case, out, lse, expected(case))
    row.update(passed=verdict.passed, ratio=round(verdict.ratio, 3),
               lse_error=verdict.lse_error, lse_allowed=verdict.lse_allowed_error,
               problems=verdict.problems[:3])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the rows here (JSON lines)")
    args = parser.parse_args()
    target = FA4Target()
    reason = target.unavailable_reason()
    if reason:
        sys.exit(reason)
    rows = []
    for name, changes in CONFIGS.items():
        row = probe(name, changes, target)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
