"""Audit of the float64 reference: an independent dense formulation, mpmath at 50 digits,
block invariance, fast against plain (torch and the fused Triton pass), empty rows, the
log-weight model, and the low-precision baseline it is paired with."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import mpmath
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES, CPU_SPACE, cases
from prefix_referee.references import Batch, LogWeight, lowprec_attention, reference_attention
from prefix_referee.references.batch import plan_blocks
from prefix_referee.references.reference import _fast
from prefix_referee.verify import CaseSpec, materialize, parse_case
from tests.test_mask import literal_visible

TINY = CPU_SPACE.narrowed(max_requests=2, max_seq_len=6, head_dims=(4,), max_kv_heads=2)
TINY_DTYPES = TINY.narrowed(dtypes=("float32",))
WIDE = CPU_SPACE.narrowed(overlapping_ranges=True)
# Float64 agreement of two computations of one quantity (values are O(1) to O(100)).
FLOAT64_TOLERANCE = 1e-12


def dense_attention(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook softmax(QK^T)V per request with the literal mask: no blocks, no intervals."""
    spec: CaseSpec = case.spec
    group = spec.num_heads // spec.num_kv_heads
    out = torch.zeros(spec.total_q, spec.num_heads, spec.value_dim, dtype=torch.float64)
    lse = torch.full((spec.num_heads, spec.total_q), -math.inf, dtype=torch.float64)
    for view, r in zip(case.requests(), spec.requests, strict=True):
        mask = torch.tensor([[literal_visible(spec, r.context_len, r.query_len, r.ranges, i, j)
                              for j in range(r.seq_len)] for i in range(r.query_len)],
                            dtype=torch.bool).reshape(r.query_len, r.seq_len)
        for h in range(spec.num_heads):
            q = case.q[view.q_slice, h].double()
            k = case.k[view.k_slice, h // group].double()
            v = case.v[view.k_slice, h // group].double()
            s = q @ k.T * case.softmax_scale
            if spec.softcap is not None:
                s = spec.softcap * torch.tanh(s / spec.softcap)
            s = s.masked_fill(~mask, -math.inf)
            lse[h, view.q_slice] = torch.logsumexp(s, dim=-1)
            out[view.q_slice, h] = torch.softmax(s, dim=-1).nan_to_num(0.0) @ v
    return out, lse


def _assert_same(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]
                 ) -> None:
    """Equal up to float64 rounding (different summation order), -inf rows exactly."""
    torch.testing.assert_close(a[0].cpu(), b[0].cpu(), rtol=FLOAT64_TOLERANCE,
                               atol=FLOAT64_TOLERANCE)
    assert torch.equal(torch.isneginf(a[1]).cpu(), torch.isneginf(b[1]).cpu())
    torch.testing.assert_close(a[1].cpu(), b[1].cpu(), rtol=FLOAT64_TOLERANCE,
                               atol=FLOAT64_TOLERANCE)


@pytest.mark.parametrize("method", ["fast", "plain"])
@given(spec=cases(WIDE.narrowed(max_seq_len=40)))
def test_reference_matches_dense_formulation(method: str, spec: CaseSpec) -> None:
    case = materialize(spec)
    _assert_same(reference_attention(case.batch(), method=method), dense_attention(case))


@given(cases(WIDE.narrowed(max_seq_len=24)), st.integers(1, 9))
def test_blocks_do_not_change_the_result(spec: CaseSpec, block: int) -> None:
    batch = materialize(spec).batch()
    for method in ("fast", "plain"):
        _assert_same(reference_attention(batch, method=method, block=block),
                     reference_attention(batch, method=method))


@given(cases(TINY_DTYPES))
def test_reference_matches_mpmath_at_50_digits(spec: CaseSpec) -> None:
    case = materialize(spec)
    out, lse = reference_attention(case.batch())
    mpmath.mp.dps = 50
    group = spec.num_heads // spec.num_kv_heads
    for view, r in zip(case.requests(), spec.requests, strict=True):
        for i in range(r.query_len):
            row = view.q_start + i
            for h in range(spec.num_heads):
                keys = [j for j in range(r.seq_len)
                        if literal_visible(spec, r.context_len, r.query_len, r.ranges, i, j)]
                q = [mpmath.mpf(float(x)) for x in case.q[row, h]]
                scores = []
                for j in keys:
                    k = case.k[view.k_start + j, h // group]
                    s = mpmath.fsum(a * mpmath.mpf(float(b)) for a, b in zip(q, k, strict=True))
                    s *= mpmath.mpf(case.softmax_scale)
                    if spec.softcap is not None:
                        s = spec.softcap * mpmath.tanh(s / spec.softcap)
                    scores.append(s)
                weights = [mpmath.exp(s) for s in scores]
                total = mpmath.fsum(weights)
                assert abs(float(mpmath.log(total)) - float(lse[h, row])) < 1e-13
                values = case.v[view.k_start:view.k_start + r.seq_len, h // group]
                for d in range(spec.value_dim):
                    want = mpmath.fsum(w * mpmath.mpf(float(values[j, d]))
                                       for w, j in zip(weights, keys, strict=True)) / total
                    assert abs(float(want) - float(out[row, h, d])) < 1e-13


def _tiny_case(**changes: Any):
    return materialize(parse_case({"requests": [{"query_len": 3}], "num_heads": 2,
                                   "head_dim": 4, "dtype": "float32", **changes}))


def test_rows_with_no_visible_key_give_zero_and_minus_inf() -> None:
    batch = _tiny_case().batch()
    lo, hi = batch.lo.clone(), batch.hi.clone()
    lo[1], hi[1] = 5, 4  # row 1 sees nothing
    hidden = replace(batch, lo=lo, hi=hi)
    for method in ("fast", "plain"):
        out, lse = reference_attention(hidden, method=method)
        assert torch.equal(out[1], torch.zeros_like(out[1]))
        assert bool(torch.isneginf(lse[:, 1]).all()) and bool(torch.isfinite(lse[:, 0]).all())
    base_out, base_lse = lowprec_attention(hidden)
    assert not base_out.isnan().any() and bool(torch.isneginf(base_lse[:, 1]).all())


@pytest.mark.parametrize("method", ["fast", "plain"])
def test_log_weight_is_a_per_key_weight(method: str) -> None:
    """ln 2 on one key equals duplicating that key."""
    case = _tiny_case()
    total_q = case.q.shape[0]
    doubled = LogWeight(torch.zeros(total_q, dtype=torch.long),
                        torch.zeros(total_q, dtype=torch.long), math.log(2))
    out, _ = reference_attention(case.batch(doubled), method=method)
    q, k, v = case.q.double(), case.k.double(), case.v.double()
    for row in range(total_q):
        keys = [0, *range(row + 1)]  # key 0 counted twice; causal, no ranges
        s = torch.einsum("hd,khd->hk", q[row], k[keys]) * case.softmax_scale
        torch.testing.assert_close(out[row], torch.einsum("hk,khd->hd", s.softmax(-1), v[keys]))


def test_block_plan_covers_every_visible_row_once_with_bounded_waste() -> None:
    lo = torch.tensor([0, 0, 0, 100, 200, 300, 5, 5])
    hi = torch.tensor([0, 1, 2, 150, 260, 399, 4, 9])  # row 6 sees nothing
    blocks = plan_blocks(lo, hi, max_rows=4)
    rows = sorted(r for b in blocks for r in range(b.r0, b.r1))
    assert [r for r in rows if r != 6] == [0, 1, 2, 3, 4, 5, 7]
    for b in blocks:
        seen = (hi[b.r0:b.r1] >= lo[b.r0:b.r1])
        assert b.k0 == int(lo[b.r0:b.r1][seen].min()) and b.k1 == int(hi[b.r0:b.r1][seen].max()) + 1


@given(cases(CPU_SPACE.narrowed(max_seq_len=32)))
def test_lowprec_baseline_is_close_but_rounded(spec: CaseSpec) -> None:
    batch = materialize(spec).batch()
    out, _ = reference_attention(batch)
    base, _ = lowprec_attention(batch)
    assert base.dtype == batch.q.dtype
    scale = float(out.abs().max()) + 1.0
    assert float((base.double() - out).abs().max()) < 0.1 * scale


@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=ADVERSARIAL_CASES.keys())
def test_fast_reference_matches_plain_on_adversarial_layouts(spec: CaseSpec) -> None:
    batch = materialize(spec).batch()
    _assert_same(reference_attention(batch), reference_attention(batch, method="plain"))


# The fused pass runs compiled on a GPU, under the Triton interpreter elsewhere.
FUSED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _device(fused: bool) -> str:
    """The device to run on; skips the fused variant without Triton."""
    if fused:
        pytest.importorskip("triton", reason="the fused exp pass is a Triton kernel")
    return FUSED_DEVICE if fused else "cpu"


def _spec(**changes: Any) -> CaseSpec:
    base = {"requests": [{"context_len": 100, "query_len": 100, "ranges": [[80, 150]]}],
            "num_heads": 4, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16"}
    return parse_case({**base, **changes})


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "triton"])
@given(cases(WIDE.narrowed(max_seq_len=24, max_requests=2)), st.sampled_from([1, 7, 64]))
def test_fast_reference_passes_agree(fused: bool, spec: CaseSpec, block: int) -> None:
    """The Triton exp pass (CUDA's default; here under the interpreter) and the torch one."""
    batch = materialize(spec, _device(fused)).batch()
    _assert_same(_fast(batch, block, fused=fused), reference_attention(batch, method="plain"))


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "triton"])
def test_fast_reference_with_huge_scores_subtracts_the_max(fused: bool) -> None:
    """Scores far past e^300 take the exact-max pass; the result still matches."""
    batch = materialize(_spec(softmax_scale=40.0, dtype="float32", value_distribution="peaky"),
                        _device(fused)).batch()
    plain = reference_attention(batch, method="plain")
    assert float(plain[1].max()) > 300
    # Scores in the thousands carry float64 rounding of ~1e-12 each, which exp turns into
    # relative differences of that order times the score: compare at that scale.
    fast = _fast(batch, 32, fused=fused)
    torch.testing.assert_close(fast[0].cpu(), plain[0].cpu(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fast[1].cpu(), plain[1].cpu(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "triton"])
def test_fast_reference_with_a_log_weight_and_empty_rows(fused: bool) -> None:
    batch: Batch = materialize(_spec(num_kv_heads=1, sliding_window=30), _device(fused)).batch()
    lo, hi = batch.lo.clone(), batch.hi.clone()
    lo[30], hi[30] = 1, 0  # row 30 sees nothing
    weight = LogWeight(torch.full_like(lo, 80), torch.arange(100, 200), math.log(2))
    biased = replace(batch, lo=lo, hi=hi, bias=weight)
    fast = _fast(biased, 16, fused=fused)
    _assert_same(fast, reference_attention(biased, method="plain"))
    assert bool(torch.isneginf(fast[1][:, 30]).all()) and not fast[0][30].any()


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method"):
        reference_attention(_tiny_case().batch(), method="dense")
