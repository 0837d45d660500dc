"""Audit of the float64 reference: an independent dense formulation, mpmath at 50 digits,
blockwise invariance, empty rows, and the low-precision baseline it is paired with."""

from __future__ import annotations

import math

import mpmath
import torch
from hypothesis import given
from hypothesis import strategies as st

from fuzz.strategies import CPU_SPACE, cases
from references import lowprec_attention, reference_attention
from tests.test_mask import literal_visible
from verify import CaseSpec, materialize

TINY = CPU_SPACE.narrowed(max_requests=2, max_seq_len=6, head_dims=(4,), max_kv_heads=2)
TINY_DTYPES = TINY.narrowed(dtypes=("float32",))


def dense_attention(case) -> tuple[torch.Tensor, torch.Tensor]:
    """Textbook softmax(QK^T)V per request with the literal mask: no blocks, no online softmax."""
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


@given(cases(CPU_SPACE.narrowed(max_seq_len=40)))
def test_reference_matches_dense_formulation(spec: CaseSpec) -> None:
    case = materialize(spec)
    out, lse = reference_attention(case)
    want_out, want_lse = dense_attention(case)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


@given(cases(CPU_SPACE.narrowed(max_seq_len=24)), st.integers(2, 9))
def test_blocks_do_not_change_the_result(spec: CaseSpec, block: int) -> None:
    case = materialize(spec)
    out, lse = reference_attention(case)
    out_b, lse_b = reference_attention(case, block=block)
    torch.testing.assert_close(out_b, out, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lse_b, lse, rtol=1e-12, atol=1e-13)


@given(cases(TINY_DTYPES))
def test_reference_matches_mpmath_at_50_digits(spec: CaseSpec) -> None:
    case = materialize(spec)
    out, lse = reference_attention(case)
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


def test_rows_with_no_visible_key_give_zero_and_minus_inf() -> None:
    case = materialize(next(iter([_tiny_case()])))

    def hide_query_one(view, q_pos, k_pos):
        bias = torch.zeros(len(q_pos), len(k_pos), dtype=torch.float64)
        bias[q_pos == 1] = -math.inf
        return bias

    out, lse = reference_attention(case, score_bias=hide_query_one)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert bool(torch.isneginf(lse[:, 1]).all()) and bool(torch.isfinite(lse[:, 0]).all())
    base_out, base_lse = lowprec_attention(case, score_bias=hide_query_one)
    assert not base_out.isnan().any() and bool(torch.isneginf(base_lse[:, 1]).all())


def test_score_bias_is_a_per_key_log_weight() -> None:
    """ln 2 on one key equals duplicating that key."""
    case = materialize(_tiny_case())

    def double_key_zero(view, q_pos, k_pos):
        return torch.where(k_pos == 0, math.log(2), 0.0).expand(len(q_pos), -1).double()

    out, _ = reference_attention(case, score_bias=double_key_zero)
    q, k, v = case.q.double(), case.k.double(), case.v.double()
    for row in range(case.q.shape[0]):
        keys = [0, *range(row + 1)]  # key 0 counted twice; causal, no ranges
        s = torch.einsum("hd,khd->hk", q[row], k[keys]) * case.softmax_scale
        torch.testing.assert_close(out[row], torch.einsum("hk,khd->hd", s.softmax(-1), v[keys]))


def _tiny_case() -> CaseSpec:
    from verify import parse_case

    return parse_case({"requests": [{"query_len": 3}], "num_heads": 2, "head_dim": 4,
                       "dtype": "float32"})


@given(cases(CPU_SPACE.narrowed(max_seq_len=32)))
def test_lowprec_baseline_is_close_but_rounded(spec: CaseSpec) -> None:
    case = materialize(spec)
    out, _ = reference_attention(case)
    base, _ = lowprec_attention(case)
    assert base.dtype == case.dtype
    scale = float(out.abs().max()) + 1.0
    assert float((base.double() - out).abs().max()) < 0.1 * scale
