"""Time and peak memory of the compiled ``flex`` target on the layouts that broke eager flex.

Eager FlexAttention materializes the dense scores: 13.5 GiB peak RSS for one 16k-token
request on CPU, out of memory (67.5 GiB) on a 10k-query Gemma layout on an H200. This
prints, for the compiled target:

* CPU: one request of ``--tokens`` tokens (images of a few hundred tokens), run in a
  child process so that its peak RSS is the flex run's: the child's RSS before the call,
  its peak (``VmHWM``), and the peak of every child (``RUSAGE_CHILDREN``: inductor's
  compile workers too). The first call compiles; the second is timed alone.
* CUDA: the Gemma-like layout below; peak GPU memory of the call above what the inputs
  hold, compile and run time.

Then it judges flex with the policy (:func:`verify.runner.evaluate`) on the CPU layout
(``--check-tokens``, default all of them: the float64 reference of 16k tokens takes about
a minute and a half on 2 cores) and on the Gemma layout on CUDA.

    python -m benchmarks.flex_memory [--device cpu|cuda|all] [--tokens N] [--check-tokens N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prefix_referee.verify import CaseSpec, parse_case
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.runner import evaluate
from prefix_referee.verify.targets.flex import FlexTarget

GIB = 1 << 30


def cpu_layout(tokens: int) -> CaseSpec:
    """One prefill of ``tokens`` tokens, 4/2 heads of 128 dims, a 300-token image per 2k."""
    ranges = [[start, start + 299] for start in range(700, tokens - 300, 2048)]
    return parse_case({"requests": [{"query_len": tokens, "ranges": ranges}],
                       "num_heads": 4, "num_kv_heads": 2, "head_dim": 128,
                       "dtype": "bfloat16", "seed": 0})


def gemma_layout() -> CaseSpec:
    """Gemma-like: 32/16 heads of 256 dims, window 1024 clamping ranges, pages of 16.

    An 8192-token prefill with four 280-token images, a 2048-token chunk whose cached
    context ends inside an image, and 8 decodes (some inside an image): 10248 queries.
    """
    prefill = {"query_len": 8192, "ranges": [[s, s + 279] for s in (300, 2200, 4700, 7600)]}
    chunk = {"context_len": 3000, "query_len": 2048, "ranges": [[2900, 3179], [4200, 4479]]}
    decodes = [{"context_len": 1500 + 700 * i, "query_len": 1,
                "ranges": [[1400 + 700 * i - 50 * (i % 3), 1400 + 700 * i + 279]]}
               for i in range(8)]
    return parse_case({"requests": [prefill, chunk, *decodes], "num_heads": 32,
                       "num_kv_heads": 16, "head_dim": 256, "dtype": "bfloat16",
                       "page_size": 16, "sliding_window": 1024,
                       "clamp_ranges_to_window": True, "seed": 0})


def _rss_kib(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process, KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _two_calls(spec: CaseSpec, device: str) -> dict[str, Any]:
    """Run flex twice on ``spec``: the first call compiles, the second is timed alone."""
    case = materialize(spec, device)
    target = FlexTarget()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    figures: dict[str, Any] = {"rss_before_gib": _rss_kib("VmRSS") / (1 << 20)}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        figures["gpu_before_gib"] = torch.cuda.memory_allocated() / GIB
    seconds = []
    for _ in range(2):
        sync()
        start = time.perf_counter()
        target.run(case)
        sync()
        seconds.append(time.perf_counter() - start)
    figures.update(first_call_s=seconds[0], second_call_s=seconds[1], compiles=target.compiled,
                   rss_peak_gib=_rss_kib("VmHWM") / (1 << 20))
    if device == "cuda":
        figures["gpu_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    return figures


def _in_child(spec: CaseSpec) -> dict[str, Any]:
    """:func:`_two_calls` on CPU in a fresh process (its RSS is the flex run's alone)."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.flex_memory", "--child",
                           spec.to_json()], capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.splitlines()[-1])
    figures["children_peak_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (
        1 << 20)
    return figures


def _calls(figures: dict[str, Any]) -> str:
    first, second = figures["first_call_s"], figures["second_call_s"]
    return (f"first call {first:.2f} s ({figures['compiles']} compile: about "
            f"{first - second:.1f} s), second call {second:.3f} s")


def _judge(spec: CaseSpec, device: str) -> str:
    start = time.perf_counter()
    summary = evaluate(FlexTarget(), materialize(spec, device)).summary().splitlines()[0]
    return f"{summary} ({time.perf_counter() - start:.0f} s with the reference)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--check-tokens", type=int, help="default: --tokens")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_two_calls(parse_case(json.loads(args.child)), "cpu")))
        return 0
    if args.device in ("cpu", "all"):
        figures = _in_child(cpu_layout(args.tokens))
        print(f"cpu, 1 x {args.tokens} tokens, 4/2 heads, head_dim 128, bf16: "
              f"{_calls(figures)}; "
              f"RSS {figures['rss_before_gib']:.2f} GiB before, peak "
              f"{figures['rss_peak_gib']:.2f} GiB (children incl. compile workers: "
              f"{figures['children_peak_gib']:.2f} GiB)")
        check = args.check_tokens or args.tokens
        print(f"  policy on {check} tokens: " + _judge(cpu_layout(check), "cpu"))
    if args.device in ("cuda", "all"):
        if not torch.cuda.is_available():
            print("cuda: no CUDA device, skipped")
            return 0
        figures = _two_calls(gemma_layout(), "cuda")
        print(f"cuda, Gemma-like 10248 queries, 32/16 heads, head_dim 256, window 1024: "
              f"{_calls(figures)}; "
              f"GPU memory {figures['gpu_before_gib']:.2f} GiB before, peak "
              f"{figures['gpu_peak_gib']:.2f} GiB")
        print("  policy: " + _judge(gemma_layout(), "cuda"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
