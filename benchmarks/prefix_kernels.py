"""Time the exact Triton kernel against FA4 and the other paths on the same prefix layouts.

``prefill`` / ``decode`` (issue #4): FA4 causal without a mask (the floor: no image ranges
at all), FA4 with the exact mask_mod, the two-call path on FA4, the exact replace variant
on FA4, and the Triton kernel; milliseconds and each one's ratio to FA4 mask_mod, plus the
share of KV tiles the Triton kernel skips.

``gemma4``: the Gemma 4 batch (:func:`benchmarks.layouts.gemma4`) for a local layer (head
dim 256, window 1024 with clamped ranges) and a global one (head dim 512): every target
that can run there, its milliseconds and the policy's error ratio, the reason of each one
that declines, and the fastest exact path per layer kind. With ``--kv-dtype`` (an FP8
dtype), FP8-KV rows follow: the same batch with its cache in that dtype, per-tensor and
per-head descales, every target judged (those that decline say why), and the Triton
kernel's FP8 time beside its bf16-KV time from the same run.

Every target's output is first judged by the policy, so a fast wrong kernel cannot post a
figure. ``--sm90`` needs no GPU: it compiles each default Triton config for sm90 offline and
prints shared memory, registers and spills (exit 1 if one does not fit, 3 if it cannot
compile here).

    python -m benchmarks.prefix_kernels [--layout prefill|decode|gemma4|all]
        [--page-size N]... [--kv-dtype float8_e4m3fn|float8_e5m2] [--json PATH]
    python -m benchmarks.prefix_kernels --sm90 [--dtype D]... [--dims 128,512x256,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from benchmarks.layouts import GEMMA4_LAYERS, decode_heavy, gemma4, prefill
from prefix_referee.verify import CaseSpec, materialize
from prefix_referee.verify.case import KV_DTYPES, KV_SCALES
from prefix_referee.verify.kernels.prefix_attention import (
    SM90_MAX_SHARED_BYTES,
    default_config,
    default_short_config,
    kv_tiles_visited,
    sm90_resources,
    sm90_unavailable_reason,
)
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.runner import Status, TruthCache, evaluate
from prefix_referee.verify.targets import get_target

LAYOUTS: dict[str, Callable[..., CaseSpec]] = {"prefill": prefill, "decode": decode_heavy}
TARGETS = ("fa4", "two_call_fa4", "replace_fa4", "triton")
BASELINE = "fa4"
GEMMA4_TARGETS = ("fa4", "replace_fa4", "two_call_fa4", "triton", "flex")
SM90_DTYPES = ("bfloat16", "float16", "float32")
SM90_DIMS = (16, 32, 64, 128, 256, 512)


def median_ms(fn: Callable[[], object]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def fa4_causal_call(case: MaterializedCase) -> Callable[[], object]:
    """FA4 causal with no mask_mod over the same cache: what the images cost on top."""
    from prefix_referee.verify.targets.fa4 import fa4_causal

    kwargs = ({"seqused_k": case.seqused_k, "page_table": case.page_table}
              if case.page_table is not None else {})
    k, v = (case.k_cache, case.v_cache) if case.page_table is not None else (case.k, case.v)
    cu_k = None if case.page_table is not None else case.cu_seqlens_k
    return lambda: fa4_causal(case.q, k, v, case.cu_seqlens_q, cu_k, case.max_seqlen_q,
                              case.max_seqlen_k, case.softmax_scale, **kwargs)


def skipped_tiles(spec: CaseSpec) -> tuple[int, int, int]:
    """KV tiles (visited, causal-only, dense) the Triton kernel's loop covers for ``spec``."""
    config = default_config(spec.head_dim, torch.bfloat16, spec.value_dim)
    counts = [kv_tiles_visited(r.context_len, r.query_len, r.ranges, config.block_m,
                               config.block_n, spec.sliding_window, spec.clamp_ranges_to_window)
              for r in spec.requests]
    return tuple(sum(c[i] for c in counts) for i in range(3))


def time_target(name: str, case: MaterializedCase, truths: TruthCache) -> dict[str, object]:
    """Judge ``name`` on ``case``; time it if it passes. Verdict, ratio, ms or the reason."""
    target = get_target(name)
    outcome = evaluate(target, case, truths)
    result: dict[str, object] = {"verdict": outcome.status.value, "exact": target.exact}
    if outcome.verdict is not None:
        result["ratio"] = outcome.verdict.ratio
    if outcome.status == Status.PASS:
        result["ms"] = median_ms(lambda: target.run(case))
    else:
        result["reason"] = outcome.summary()
    if case.device.type == "cuda":
        torch.cuda.empty_cache()  # a target that ran out of memory must not starve the next
    return result


def bench_layout(name: str, spec: CaseSpec) -> dict[str, object]:
    case, truths = materialize(spec, "cuda"), TruthCache()
    row: dict[str, object] = {"layout": name, "page_size": spec.page_size,
                              "tokens_q": spec.total_q, "tokens_k": spec.total_k}
    row["fa4_causal_no_mask_ms"] = median_ms(fa4_causal_call(case))
    for target_name in TARGETS:
        result = time_target(target_name, case, truths)
        row[f"{target_name}_verdict"] = result["verdict"]
        if "ms" in result:
            row[f"{target_name}_ms"] = result["ms"]
        else:
            print(f"  {result['reason']}", file=sys.stderr)
    visited, causal, dense = skipped_tiles(spec)
    row.update(triton_tiles_visited=visited, causal_tiles=causal, dense_tiles=dense)
    return row


def print_table(rows: list[dict[str, object]]) -> None:
    columns = ["fa4_causal_no_mask", *TARGETS]
    print(f"{'layout':<10}{'page':>6}" + "".join(f"{c:>22}" for c in columns))
    for row in rows:
        base = row.get(f"{BASELINE}_ms")
        cells = []
        for c in columns:
            ms = row.get(f"{c}_ms")
            if ms is None:
                cells.append(f"{row.get(f'{c}_verdict', '-'):>22}")
            else:
                ratio = f" ({ms / base:.2f}x)" if base else ""
                cells.append(f"{ms:>12.3f} ms{ratio:>8}")
        print(f"{row['layout']:<10}{row['page_size']!s:>6}" + "".join(cells))
        print(f"{'':<16}triton visits {row['triton_tiles_visited']} KV tiles; causal-only "
              f"{row['causal_tiles']}, dense (mask_mod without block sparsity) "
              f"{row['dense_tiles']}")
    print(f"ratios are to {BASELINE} (FA4 with the exact mask_mod); lower is faster")


def bench_gemma4(layer: str) -> dict[str, object]:
    """Every Gemma 4 target on one layer kind's batch."""
    spec = gemma4(layer)
    case, truths = materialize(spec, "cuda"), TruthCache()
    return {"layout": f"gemma4_{layer}", "page_size": spec.page_size,
            "tokens_q": spec.total_q, "tokens_k": spec.total_k,
            "targets": {name: time_target(name, case, truths) for name in GEMMA4_TARGETS}}


def bench_gemma4_fp8(layer: str, kv_dtype: str, bf16_row: dict[str, object]
                     ) -> list[dict[str, object]]:
    """The Gemma 4 batch of one layer kind with an FP8 cache, per descale granularity: every
    Gemma 4 target judged (and timed if it passes), the Triton kernel's time against its
    bf16-KV time on the same batch (``bf16_row``, from this run)."""
    rows = []
    bf16_ms = bf16_row["targets"]["triton"].get("ms")
    for kv_scale in KV_SCALES:
        spec = gemma4(layer, kv_dtype=kv_dtype, kv_scale=kv_scale)
        case, truths = materialize(spec, "cuda"), TruthCache()
        targets = {name: time_target(name, case, truths) for name in GEMMA4_TARGETS}
        fp8_ms = targets["triton"].get("ms")
        rows.append({"layout": f"gemma4_{layer}", "kv_dtype": kv_dtype, "kv_scale": kv_scale,
                     "page_size": spec.page_size, "tokens_q": spec.total_q,
                     "tokens_k": spec.total_k, "targets": targets,
                     "triton_bf16_kv_ms": bf16_ms, "triton_fp8_kv_ms": fp8_ms,
                     "triton_fp8_over_bf16": (fp8_ms / bf16_ms if fp8_ms and bf16_ms
                                              else None)})
    return rows


def print_gemma4_fp8(rows: list[dict[str, object]]) -> None:
    print(f"\n{'FP8 KV':<16}{'descales':>9}{'triton bf16 KV':>16}{'triton FP8 KV':>15}"
          f"{'FP8/bf16':>10}  other targets")
    for row in rows:
        bf16, fp8 = row["triton_bf16_kv_ms"], row["triton_fp8_kv_ms"]
        ratio = row["triton_fp8_over_bf16"]
        others = ", ".join(f"{name} {r['verdict']}" + (f" {r['ms']:.3f} ms" if "ms" in r
                                                       else "")
                           for name, r in row["targets"].items() if name != "triton")
        print(f"{row['layout']:<16}{row['kv_scale']:>9}"
              f"{(f'{bf16:.3f} ms' if bf16 else '-'):>16}"
              f"{(f'{fp8:.3f} ms' if fp8 else row['targets']['triton']['verdict']):>15}"
              f"{(f'{ratio:.2f}x' if ratio else '-'):>10}  {others}")
        reason = row["targets"]["triton"].get("reason")
        if reason:
            print(f"{'':<16}triton: {reason.splitlines()[0]}")
    print(f"{rows[0]['kv_dtype']} K/V with float32 descales; the kernel reads the codes and "
          "applies the descales itself. FP8/bf16 below 1: the FP8 cache is faster")


def fastest_exact(row: dict[str, object]) -> str | None:
    """The exact target that passed in the least time, or None."""
    timed = {name: r["ms"] for name, r in row["targets"].items() if r["exact"] and "ms" in r}
    return min(timed, key=timed.get) if timed else None


def print_gemma4(rows: list[dict[str, object]]) -> None:
    for row in rows:
        layer = row["layout"].removeprefix("gemma4_")
        dims = GEMMA4_LAYERS[layer]
        print(f"\n{row['layout']}: {row['tokens_q']} query / {row['tokens_k']} key tokens, "
              f"{dims['num_heads']}/{dims['num_kv_heads']} heads, head_dim {dims['head_dim']}, "
              f"window {dims.get('sliding_window')}, page {row['page_size']}")
        print(f"{'target':<16}{'verdict':>9}{'ms':>10}{'ratio':>8}  kind / reason")
        for name, r in row["targets"].items():
            ms = f"{r['ms']:.3f}" if "ms" in r else "-"
            ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
            kind = "exact" if r["exact"] else "approximation"
            reason = r.get("reason", "").splitlines()[0] if "reason" in r else kind
            print(f"{name:<16}{r['verdict']:>9}{ms:>10}{ratio:>8}  {reason}")
        print(f"fastest exact path ({layer} layers): {fastest_exact(row) or 'none passed'}")
    print("ratio: the policy's error / low-precision baseline error (above 2 fails)")


def sm90_variants(dtypes: Sequence[str], dims: Sequence[tuple[int, int]],
                  kv_dtype: str | None = None) -> list[tuple[str, int, int, str, str | None]]:
    """(dtype, head_dim, head_dim_v, launch, kv_dtype) for every default config to check."""
    return [(dtype, d, dv, launch, kv_dtype) for dtype, (d, dv), launch
            in itertools.product(dtypes, dims, ("long", "short"))]


def sm90_row(variant: tuple[str, int, int, str, str | None]) -> dict[str, object]:
    """One default config compiled for sm90 (in a worker process); with an FP8
    ``kv_dtype``, the variant that reads an FP8 cache."""
    dtype_name, d, dv, launch, kv_dtype = variant
    dtype = getattr(torch, dtype_name)
    config = (default_config if launch == "long" else default_short_config)(d, dtype, dv)
    resources = sm90_resources(d, dv, dtype, config,
                               kv_dtype=getattr(torch, kv_dtype) if kv_dtype else None)
    return {"dtype": dtype_name, "kv_dtype": kv_dtype, "head_dim": d, "head_dim_v": dv,
            "launch": launch, "config": dataclasses.asdict(config), **resources._asdict(),
            "problem": resources.problem()}


def sm90_table(dtypes: Sequence[str], dims: Sequence[tuple[int, int]],
               kv_dtype: str | None = None) -> list[dict[str, object]]:
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(sm90_row, sm90_variants(dtypes, dims, kv_dtype)))


def print_sm90(rows: list[dict[str, object]]) -> None:
    kv = rows[0].get("kv_dtype") if rows else None
    print(f"sm90, all flags on (window, clamp, softcap){f', K/V in {kv}' if kv else ''}; "
          f"shared memory limit {SM90_MAX_SHARED_BYTES // 1024} KiB per block")
    print(f"{'dtype':<10}{'d':>5}{'dv':>5}{'launch':>7}{'m x n':>10}{'warps':>6}{'stages':>7}"
          f"{'smem KiB':>10}{'regs':>6}{'spill B':>8}{'piped':>6}  verdict")
    for r in rows:
        c = r["config"]
        print(f"{r['dtype']:<10}{r['head_dim']:>5}{r['head_dim_v']:>5}{r['launch']:>7}"
              f"{c['block_m']:>5} x{c['block_n']:>3}{c['num_warps']:>6}{c['num_stages']:>7}"
              f"{r['shared_bytes'] / 1024:>10.1f}{r['registers']:>6}{r['spill_bytes']:>8}"
              f"{r['pipelined_loops']:>6}  {r['problem'] or 'fits'}")


def parse_dims(text: str) -> list[tuple[int, int]]:
    """``128,512x256`` -> [(128, 128), (512, 256)] (head_dim x head_dim_v)."""
    pairs = []
    for item in text.split(","):
        d, _, dv = item.partition("x")
        pairs.append((int(d), int(dv or d)))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=[*LAYOUTS, "gemma4", "all"], default="all")
    parser.add_argument("--page-size", type=int, action="append", dest="page_sizes",
                        help="paged KV page size of prefill/decode (repeatable; default 16 "
                             "and 128); gemma4 always uses 16")
    parser.add_argument("--kv-dtype", choices=KV_DTYPES,
                        help="gemma4: also time the batch with its KV cache in this FP8 "
                             "dtype (per-tensor and per-head descales) against bf16 KV; "
                             "--sm90: compile the variants that read such a cache")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--sm90", action="store_true",
                        help="no GPU: compile the default Triton configs for sm90 and print "
                             "shared memory, registers, spills")
    parser.add_argument("--dtype", action="append", dest="dtypes", choices=SM90_DTYPES,
                        help="--sm90: dtypes (repeatable; default all)")
    parser.add_argument("--dims", type=parse_dims,
                        help="--sm90: head dims, D or DxDV, comma-separated (default every "
                             "pair of 16, 32, ..., 512)")
    args = parser.parse_args()
    if args.sm90:
        reason = sm90_unavailable_reason()
        if reason:
            print(f"cannot compile for sm90 here: {reason}")
            sys.exit(3)
        rows = sm90_table(args.dtypes or SM90_DTYPES,
                          args.dims or list(itertools.product(SM90_DIMS, SM90_DIMS)),
                          args.kv_dtype)
        print_sm90(rows)
    else:
        if not torch.cuda.is_available():
            sys.exit("needs a CUDA device (FA4 and compiled Triton); --sm90 does not")
        rows = [bench_layout(name, LAYOUTS[name](page_size=ps))
                for name in LAYOUTS if args.layout in (name, "all")
                for ps in (args.page_sizes or [16, 128])]
        gemma_rows = ([bench_gemma4(layer) for layer in GEMMA4_LAYERS]
                      if args.layout in ("gemma4", "all") else [])
        fp8_rows = [fp8_row for row in gemma_rows if args.kv_dtype
                    for fp8_row in bench_gemma4_fp8(row["layout"].removeprefix("gemma4_"),
                                                    args.kv_dtype, row)]
        print(f"device: {torch.cuda.get_device_name()}")
        if rows:
            print_table(rows)
        if gemma_rows:
            print_gemma4(gemma_rows)
        if fp8_rows:
            print_gemma4_fp8(fp8_rows)
        rows += gemma_rows + fp8_rows
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    if args.sm90 and any(r["problem"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
