"""Throughput of the float64 reference on CUDA, as a fraction of float64 matmul throughput.

The shape of issue #5: 8 requests x 4096 tokens, 16 query / 8 KV heads, head_dim 128, two
image ranges per request (256 and 1024 tokens). Only the FLOPs the mask needs count:
``4 * head_dim * visible (query, key) pairs * heads`` (QK^T and PV). The matmul baseline
is torch.mm in float64 at the two GEMM shapes of that attention (all heads' rows of a
512-query block against 4096 keys), timed in the same run.

    python -m benchmarks.reference_throughput [--repeats N] [--fa4] [--plain] [--profile]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.layouts import HEAD_DIM, HEADS, TOKENS, prefill
from prefix_referee.references import reference_attention
from prefix_referee.references.reference import FAST_BLOCK, _fast
from prefix_referee.verify.mask import request_mask
from prefix_referee.verify.materialize import materialize


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_tflops(repeats: int) -> float:
    """float64 torch.mm at the reference's GEMM shapes: (H*512, D) x (D, 4096), then x (4096, D)."""
    rows = HEADS * 512
    a = torch.randn(rows, HEAD_DIM, dtype=torch.float64, device="cuda")
    b = torch.randn(HEAD_DIM, TOKENS, dtype=torch.float64, device="cuda")
    p = torch.randn(rows, TOKENS, dtype=torch.float64, device="cuda")
    v = torch.randn(TOKENS, HEAD_DIM, dtype=torch.float64, device="cuda")
    seconds = timed(lambda: (torch.mm(a, b), torch.mm(p, v)), repeats)
    return 2 * 2 * rows * TOKENS * HEAD_DIM / seconds / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fa4", action="store_true", help="also time the FA4 mask_mod target")
    parser.add_argument("--plain", action="store_true",
                        help="also time the fast path with torch passes instead of the fused "
                             "Triton one, and the plain (CPU-default) path, on CUDA")
    parser.add_argument("--profile", action="store_true",
                        help="print torch.profiler's CUDA-time table of one reference call")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")

    spec = prefill()
    case = materialize(spec, "cuda")
    batch = case.batch()
    pairs = sum(int(request_mask(spec, r, device="cuda").sum()) for r in spec.requests)
    useful_tflop = 4 * HEAD_DIM * pairs * HEADS / 1e12

    figures: dict[str, object] = {"device": torch.cuda.get_device_name(), "visible_pairs": pairs,
                                  "useful_tflop": useful_tflop}
    seconds = timed(lambda: reference_attention(batch), args.repeats)
    mm = matmul_tflops(args.repeats)
    figures.update(reference_ms=seconds * 1e3, reference_tflops=useful_tflop / seconds,
                   matmul_fp64_tflops=mm, fraction_of_matmul=useful_tflop / seconds / mm)
    if args.plain:
        figures["unfused_fast_ms"] = timed(
            lambda: _fast(batch, FAST_BLOCK, fused=False), args.repeats) * 1e3
        figures["plain_reference_ms"] = timed(
            lambda: reference_attention(batch, method="plain"), 1) * 1e3
    if args.fa4:
        from prefix_referee.verify.targets import get_target

        fa4 = get_target("fa4")
        figures["fa4_ms"] = timed(lambda: fa4.run(case), args.repeats) * 1e3
        figures["reference_over_fa4"] = figures["reference_ms"] / figures["fa4_ms"]
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            reference_attention(batch)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    for key, value in figures.items():
        print(f"{key:>22}: {value:.4g}" if isinstance(value, float) else f"{key:>22}: {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
