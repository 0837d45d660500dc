"""The paged prefix-attention Triton kernel, called directly, against the float64 reference.

Compiled on a CUDA GPU with the kernel's default tiles; elsewhere under the Triton
interpreter (conftest turns it on) with small tiles. The default tiles are also compiled
offline for sm90 here, to check they fit an H100/H200. The target wrapper and random cases
are tested in test_triton_target.py; this file pins the kernel's own arguments, tiling and
input checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prefix_referee.verify import MaterializedCase, materialize, parse_case
from prefix_referee.verify.compare import check, expected

pytest.importorskip("triton", reason="triton is not installed: the Triton kernel cannot run")

from prefix_referee.verify.kernels import prefix_attention
from prefix_referee.verify.kernels.prefix_attention import (
    SHORT_QUERY_LEN,
    KernelConfig,
    TileCounts,
    default_config,
    kv_tiles_visited,
    prefix_attention_paged,
    split_requests,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The interpreter runs every program in Python: small tiles keep it fast and still give
# several tiles per request.
SMALL = KernelConfig(block_m=16, block_n=16, num_warps=4, num_stages=1)
BASE = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "dtype": "float32", "page_size": 3}

LAYOUTS = {
    "causal": {"requests": [{"query_len": 20}, {"context_len": 10, "query_len": 7}]},
    "range_middle": {"requests": [{"context_len": 5, "query_len": 30, "ranges": [[8, 19]]}]},
    "range_at_zero": {"requests": [{"query_len": 24, "ranges": [[0, 9]]}]},
    "range_past_seq_len": {"requests": [{"context_len": 4, "query_len": 20,
                                         "ranges": [[15, 40]]}]},
    "one_token_range": {"requests": [{"query_len": 18, "ranges": [[5, 5]]}]},
    "chunk_starts_in_range": {"requests": [{"context_len": 12, "query_len": 20,
                                            "ranges": [[6, 20]]}]},
    "several_ranges": {"requests": [{"context_len": 3, "query_len": 40,
                                     "ranges": [[2, 7], [10, 25], [30, 33]]}]},
    "overlapping_ranges": {"requests": [{"query_len": 30, "ranges": [[4, 15], [10, 22]]}],
                           "allow_overlapping_ranges": True},
    "decode": {"requests": [{"context_len": 30, "query_len": 1, "ranges": [[25, 35]]},
                            {"context_len": 17, "query_len": 1},
                            {"context_len": 6, "query_len": 1, "ranges": [[0, 6]]}]},
    "empty_request": {"requests": [{"context_len": 9, "query_len": 0, "ranges": [[0, 4]]},
                                   {"query_len": 17, "ranges": [[3, 9]]}]},
    "mixed_batch": {"requests": [{"query_len": 33, "ranges": [[1, 20]]},
                                 {"context_len": 16, "query_len": 16, "ranges": [[20, 40]]},
                                 {"context_len": 40, "query_len": 5, "ranges": [[38, 44]]}]},
}


def _case(layout: dict, **changes) -> MaterializedCase:
    return materialize(parse_case({**BASE, **layout, **changes}), DEVICE)


def _config(head_dim: int, dtype: torch.dtype) -> KernelConfig:
    return SMALL if DEVICE == "cpu" else default_config(head_dim, dtype)


def _run(case: MaterializedCase, **overrides) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel on the case's paged tensors; ``overrides`` replace its arguments."""
    kwargs = {
        "q": case.q, "k_cache": case.k_cache, "v_cache": case.v_cache,
        "page_table": case.page_table, "cu_seqlens_q": case.cu_seqlens_q,
        "seqused_k": case.seqused_k, "seq_ranges": case.seq_ranges,
        "softmax_scale": case.softmax_scale, "sliding_window": case.sliding_window,
        "clamp_ranges_to_window": case.clamp_ranges_to_window, "softcap": case.softcap,
        "config": _config(case.head_dim, case.dtype),
        "k_descale": case.k_descale, "v_descale": case.v_descale,
    }  # fmt: skip
    return prefix_attention_paged(**{**kwargs, **overrides})


def _assert_passes(case: MaterializedCase, out: torch.Tensor, lse: torch.Tensor) -> None:
    """The policy's verdict against the float64 reference, and the float32 LSE contract."""
    assert lse.dtype == torch.float32
    verdict = check(case, out, lse, expected(case))
    assert verdict.passed, verdict.summary()


def _check(layout: dict, **changes) -> None:
    case = _case(layout, **changes)
    _assert_passes(case, *_run(case))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts(layout: str) -> None:
    _check(LAYOUTS[layout])


@pytest.mark.parametrize("page_size", [1, 3, 16])
def test_page_sizes(page_size: int) -> None:
    _check(LAYOUTS["mixed_batch"], page_size=page_size)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_gqa(kv_heads: int) -> None:
    _check(LAYOUTS["several_ranges"], num_kv_heads=kv_heads)


@pytest.mark.parametrize("head_dim", [64, 80, 128])
def test_head_dims(head_dim: int) -> None:
    """80 is not a power of two: the kernel pads it to a 128-wide tile and masks the rest."""
    layout = {"requests": [{"context_len": 4, "query_len": 20, "ranges": [[2, 12]]}]}
    _check(layout, num_heads=2, num_kv_heads=1, head_dim=head_dim)


@pytest.mark.parametrize(("head_dim", "head_dim_v"), [(64, 128), (128, 32), (80, 48)])
def test_value_head_dim_differs(head_dim: int, head_dim_v: int) -> None:
    """V (and out) padded and masked apart from Q/K; 80/48 pad both."""
    layout = {"requests": [{"context_len": 4, "query_len": 20, "ranges": [[2, 12]]}]}
    _check(layout, num_heads=2, num_kv_heads=1, head_dim=head_dim, head_dim_v=head_dim_v)


# Head dim 512 (Gemma 4's global layers) with each feature, at interpreter sizes: a few
# tokens, two query heads on one KV head (GQA), small tiles.
WIDE = {"head_dim": 512, "num_heads": 2, "num_kv_heads": 1, "dtype": "bfloat16"}
WIDE_LAYOUTS = {
    "window_clamp": {"requests": [{"context_len": 6, "query_len": 12, "ranges": [[3, 14]]}],
                     "sliding_window": 4, "clamp_ranges_to_window": True},
    "window": {"requests": [{"context_len": 6, "query_len": 12, "ranges": [[8, 12]]}],
               "sliding_window": 4},
    "softcap": {"requests": [{"context_len": 3, "query_len": 13, "ranges": [[4, 9]]}],
                "softcap": 30.0},
    "decode": {"requests": [{"context_len": 9, "query_len": 1, "ranges": [[5, 12]]},
                            {"context_len": 14, "query_len": 2}]},
    "paged": {"requests": [{"context_len": 5, "query_len": 11, "ranges": [[2, 8]]},
                           {"query_len": 6, "ranges": [[0, 3]]}], "page_size": 4},
    "value_dim_256": {"requests": [{"context_len": 2, "query_len": 14, "ranges": [[6, 10]]}],
                      "head_dim_v": 256, "dtype": "float32"},
}


@pytest.mark.parametrize("layout", WIDE_LAYOUTS)
def test_head_dim_512(layout: str) -> None:
    _check({**WIDE, **WIDE_LAYOUTS[layout]})


@pytest.mark.parametrize("head_dim", [8, 24, 528])
def test_rejects_head_dims_outside_16_to_512(head_dim: int) -> None:
    case = _case({"requests": [{"query_len": 4}]})
    with pytest.raises(ValueError, match=r"multiple of 16 in \[16, 512\]"):
        _run(case, v_cache=case.v_cache.new_zeros(*case.v_cache.shape[:3], head_dim))


@pytest.mark.parametrize("clamp", [False, True])
def test_sliding_window(clamp: bool) -> None:
    layout = {"requests": [{"context_len": 20, "query_len": 28, "ranges": [[2, 30], [40, 47]]},
                           {"query_len": 20, "ranges": [[0, 15]]}]}
    _check(layout, sliding_window=5, clamp_ranges_to_window=clamp)


def test_softcap() -> None:
    _check(LAYOUTS["several_ranges"], softcap=2.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision(dtype: str) -> None:
    _check(LAYOUTS["mixed_batch"], dtype=dtype, sliding_window=9, softcap=30.0)


@pytest.mark.parametrize(("kv_dtype", "dtype"), [("float8_e4m3fn", "bfloat16"),
                                                  ("float8_e5m2", "float32")])
def test_fp8_cache(kv_dtype: str, dtype: str) -> None:
    """Codes read as stored, per-head descales applied in the kernel, NaN poison unread."""
    layout = {"requests": [{"context_len": 4, "query_len": 18, "ranges": [[2, 9]]},
                           {"context_len": 7, "query_len": 1, "ranges": [[5, 12]]}]}
    _check(layout, kv_dtype=kv_dtype, kv_scale="head", dtype=dtype, poison="nan",
           softcap=30.0)


def test_fp8_cache_needs_its_descales() -> None:
    case = _case({"requests": [{"query_len": 4}]}, kv_dtype="float8_e4m3fn")
    with pytest.raises(ValueError, match="k_descale and v_descale go with an FP8"):
        _run(case, v_descale=None)
    with pytest.raises(ValueError, match=r"k_descale must be float32 of shape \(B, Hkv\)"):
        _run(case, k_descale=case.k_descale.double())


def test_no_range_columns_and_given_max_seqlen_q() -> None:
    layout = {"requests": [{"context_len": 3, "query_len": 20}, {"query_len": 5}]}
    case = _case(layout, num_heads=2, page_size=16, softmax_scale=0.25)
    out, lse = _run(case, seq_ranges=case.seq_ranges[:, :0], max_seqlen_q=20)
    _assert_passes(case, out, lse)


def test_poison_cannot_leak() -> None:
    """Spare pages, page-table padding and slots past seq_len must not matter, even as NaN."""
    layout = {"requests": [{"context_len": 5, "query_len": 13, "ranges": [[8, 30]]},
                           {"query_len": 7, "ranges": [[2, 20]]},
                           {"context_len": 2, "query_len": 1}]}
    finite, nan = _case(layout, poison="finite"), _case(layout, poison="nan")
    out_finite, lse_finite = _run(finite)
    out_nan, lse_nan = _run(nan)
    assert torch.equal(out_finite, out_nan) and torch.equal(lse_finite, lse_nan)
    _assert_passes(nan, out_nan, lse_nan)


def test_fully_masked_tiles_are_skipped() -> None:
    """NaN in keys no query can see stays out when their whole tile is skipped."""
    config = _config(BASE["head_dim"], torch.float32)
    n = config.block_n
    # Queries from position 2n on see 8 keys back and no range: key tile 0, one page as
    # page_size == block_n, is outside every row's interval.
    layout = {"requests": [{"context_len": 2 * n, "query_len": n, "ranges": [[0, 3]]}]}
    case = _case(layout, num_heads=2, num_kv_heads=1, page_size=n, sliding_window=8)
    tile_0 = case.page_table[0, 0]
    case.k_cache[tile_0] = float("nan")
    case.v_cache[tile_0] = float("nan")
    _assert_passes(case, *_run(case))
    visits = kv_tiles_visited(2 * n, n, [(0, 3)], config.block_m, n, sliding_window=8)
    assert visits == TileCounts(visited=2, causal=2, dense=3)


def test_tile_counts() -> None:
    assert kv_tiles_visited(0, 32, [], 16, 16) == TileCounts(visited=3, causal=3, dense=4)
    assert kv_tiles_visited(0, 32, [(0, 31)], 16, 16) == TileCounts(visited=4, causal=3, dense=4)
    assert kv_tiles_visited(0, 32, [(10, 20)], 16, 16) == TileCounts(4, 3, 4)
    assert kv_tiles_visited(0, 48, [(40, 47)], 16, 16, 4, True).visited == 5


# Decode steps with context and images, a short multi-token request, and one chunk that
# starts inside an image, in an order where a request's place in its group is not its index.
SHORT_AND_LONG = {"requests": [{"context_len": 30, "query_len": 1, "ranges": [[25, 35]]},
                               {"context_len": 17, "query_len": 1},
                               {"context_len": 12, "query_len": 40, "ranges": [[6, 20]]},
                               {"context_len": 6, "query_len": 1, "ranges": [[0, 6]]},
                               {"context_len": 9, "query_len": 3, "ranges": [[8, 11]]}]}
# Distinct tiles for the two groups, so each launch compiles its own variant.
SHORT_SMALL = KernelConfig(block_m=16, block_n=32, num_warps=4, num_stages=1)
LONG_SMALL = KernelConfig(block_m=32, block_n=16, num_warps=4, num_stages=1)


def test_split_requests() -> None:
    assert split_requests([1, 0, 40, 16, 17, 3], 16) == ([0, 3, 5], [2, 4])
    assert split_requests([100, 20]) == ([], [0, 1])
    assert split_requests([1, 1]) == ([0, 1], [])
    assert split_requests([]) == ([], [])
    assert SHORT_QUERY_LEN >= 1


class _Launches:
    """Stands in for the kernel: records each launch's grid and tiles, then runs it."""

    def __init__(self, kernel) -> None:
        self.kernel, self.seen = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.seen.append((grid, kwargs["BLOCK_M"], kwargs["BLOCK_N"]))
            return self.kernel[grid](*args, **kwargs)

        return launch


def _launches(monkeypatch, case: MaterializedCase, **overrides) -> list[tuple]:
    """The kernel's launches for ``case``, after checking the result against the reference."""
    recorder = _Launches(prefix_attention._prefix_attention_kernel)
    monkeypatch.setattr(prefix_attention, "_prefix_attention_kernel", recorder)
    _assert_passes(case, *_run(case, **overrides))
    return recorder.seen


@pytest.mark.parametrize("lengths", ["read_back", "given", "max_given"])
def test_short_and_long_requests_run_apart(monkeypatch, lengths: str) -> None:
    """Short requests run in 16-row tiles, the chunk in its own launch; both are exact."""
    case = _case(SHORT_AND_LONG, page_size=4)
    query_lens = [r.query_len for r in case.spec.requests]
    given = {"read_back": {}, "given": {"query_lens_host": query_lens},
             "max_given": {"max_seqlen_q": max(query_lens)}}[lengths]
    seen = _launches(monkeypatch, case, config=LONG_SMALL, short_config=SHORT_SMALL, **given)
    heads = case.num_heads
    assert seen == [((1, heads, 4), 16, 32), ((2, heads, 1), 32, 16)]


def test_short_and_long_requests_with_window_and_softcap() -> None:
    case = _case(SHORT_AND_LONG, dtype="bfloat16", sliding_window=9, softcap=30.0)
    _assert_passes(case, *_run(case, config=LONG_SMALL, short_config=SHORT_SMALL))


def test_given_config_applies_to_both_groups(monkeypatch) -> None:
    seen = _launches(monkeypatch, _case(SHORT_AND_LONG), config=LONG_SMALL)
    assert [tiles for _, *tiles in seen] == [[32, 16], [32, 16]]


def test_prefill_batch_launches_once(monkeypatch) -> None:
    """No short request: one launch over the whole batch, as before the split."""
    case = _case(LAYOUTS["mixed_batch"])  # query lengths 33, 16 and 5
    config = _config(case.head_dim, case.dtype)
    seen = _launches(monkeypatch, case, short_query_len=4)
    assert seen == [((-(-33 // config.block_m), case.num_heads, 3),
                     config.block_m, config.block_n)]


def test_decode_batch_launches_once_without_reading_back(monkeypatch) -> None:
    """All requests short by ``max_seqlen_q``: one short launch over the whole batch."""
    case = _case(LAYOUTS["decode"])
    seen = _launches(monkeypatch, case, max_seqlen_q=1)
    assert [grid for grid, *_ in seen] == [(1, case.num_heads, 3)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_default_configs_fit_sm90(dtype: str, tmp_path: Path) -> None:
    """Each tier's default configs (widest dims, every flag on) compile offline for sm90
    within shared memory, without spills, all key loops pipelined. Compiled in a child
    process: here the kernel may be interpreted. fp16 shares bf16's configs; the whole
    table: ``python -m benchmarks.prefix_kernels --sm90``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    table = tmp_path / "sm90.json"
    run = subprocess.run([sys.executable, "-m", "benchmarks.prefix_kernels", "--sm90",
                          "--dtype", dtype, "--dims", "128,256,512", "--json", str(table)],
                         env=env, cwd=Path(__file__).parents[1], capture_output=True,
                         text=True, timeout=600)
    if run.returncode == 3:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(json.loads(table.read_text())) == 6


def test_rejects_bad_inputs() -> None:
    case = _case({"requests": [{"query_len": 4}]})
    with pytest.raises(ValueError, match="multiple of kv heads"):
        _run(case, q=case.q[:, :1])
    with pytest.raises(ValueError, match="int32"):
        _run(case, page_table=case.page_table.long())
    strided_q = torch.zeros(*case.q.shape[:2], 2 * case.head_dim, device=DEVICE)[..., ::2]
    with pytest.raises(ValueError, match="contiguous"):
        _run(case, q=strided_q)
    with pytest.raises(ValueError, match="query_lens_host"):
        _run(case, query_lens_host=[4, 1])
