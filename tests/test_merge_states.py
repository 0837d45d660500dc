"""Two-call attention merge: formula, the A ∪ B identity, the edge-case rules, planted faults.

``check_merge`` is the one battery of deterministic checks; the real merges must pass it
and each planted fault (a known engine bug, written below) must be named by it, because a
check that cannot fail is a defect. Hypothesis adds random shapes, values and layouts.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

# Importing verify (first, before triton) runs Triton under the interpreter without CUDA.
from prefix_referee.verify.kernels.merge_states import (
    merge_attn_states_torch,
    merge_attn_states_triton,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INF = math.inf
NAN = math.nan

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed, so the Triton merge kernel cannot run",
)
IMPLS = [
    pytest.param(merge_attn_states_torch, id="torch"),
    pytest.param(merge_attn_states_triton, id="triton", marks=needs_triton),
]

Merge = Callable[..., tuple[Tensor, Tensor | None]]


# ---------------------------------------------------------------------------- references


def ref_merge(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """The module's documented rules, row by row in Python floats: independent of torch.where."""
    t, h, d = out_a.shape
    oa, ob = out_a.double().tolist(), out_b.double().tolist()
    la, lb = lse_a.double().tolist(), lse_b.double().tolist()
    out = torch.empty(t, h, d, dtype=torch.float64)
    lse = torch.empty(h, t, dtype=torch.float64)
    for i in range(t):
        for j in range(h):
            a, b, xa, xb = la[j][i], lb[j][i], oa[i][j], ob[i][j]
            if math.isnan(a) or math.isnan(b):
                row, m = [NAN] * d, NAN
            elif math.isinf(a) and math.isinf(b):
                row, m = [0.0] * d, -INF
            elif math.isinf(b):
                row, m = xa, a
            elif math.isinf(a):
                row, m = xb, b
            else:
                top = max(a, b)
                wa, wb = math.exp(a - top), math.exp(b - top)
                row = [(wa * x + wb * y) / (wa + wb) for x, y in zip(xa, xb, strict=True)]
                m = top + math.log(wa + wb)
            out[i, j] = torch.tensor(row, dtype=torch.float64)
            lse[j, i] = m
    return out, lse


def partial_attention(q: Tensor, k: Tensor, v: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
    """Float64 softmax attention of every query over the selected keys: ``(T, H, D)``, ``(H, T)``.

    With no keys selected the LSE is -inf and ``out`` is NaN: an unwritten partial.
    """
    s = torch.einsum("thd,nhd->htn", q, k)[..., keys]
    lse = torch.logsumexp(s, dim=-1)
    out = torch.einsum("htn,nhd->thd", torch.softmax(s, dim=-1), v[keys])
    if not bool(keys.any()):
        out = torch.full_like(out, NAN)
    return out, lse


# ---------------------------------------------------------------------------- helpers


def tol(dtype: torch.dtype) -> float:
    """Relative tolerance: one unit of the output dtype, but not below float32 exp/log noise."""
    return max(torch.finfo(dtype).eps, 1e-5) if dtype != torch.float64 else 1e-12


def mismatch(name: str, got: Tensor, want: Tensor, rtol: float, scale: float = 1.0) -> list[str]:
    """``[]`` when ``got`` matches ``want`` (NaN and inf positions exactly), else one problem."""
    try:
        torch.testing.assert_close(
            got.detach().cpu().double(), want.detach().cpu().double(),
            rtol=rtol, atol=rtol * scale, equal_nan=True,
        )
    except AssertionError as e:
        return [f"{name}: {' '.join(str(e).split())[:300]}"]
    return []


def relayout(x: Tensor, kind: str) -> Tensor:
    """The same values under other strides; padding is NaN so a stride bug cannot hide."""
    if kind == "contiguous":
        return x.contiguous()
    if kind == "permuted":  # first two dims swapped in memory: (H, T, D) storage for out
        base = torch.full((x.shape[1], x.shape[0], *x.shape[2:]), NAN, dtype=x.dtype)
        view = base.to(x.device).transpose(0, 1)
    else:  # "sliced": a window of a bigger tensor, offset and strided in every dim
        base = torch.full([n + 1 for n in x.shape[:-1]] + [2 * x.shape[-1] + 1], NAN, dtype=x.dtype)
        index = (*(slice(1, None) for _ in x.shape[:-1]), slice(1, None, 2))
        view = base.to(x.device)[index]
    return view.copy_(x)


LAYOUTS = ("contiguous", "permuted", "sliced")


def random_case(
    t: int, h: int, d: int, dtype: torch.dtype, seed: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Finite partials on DEVICE: outputs ~N(0, 1) in ``dtype``, LSEs ~N(0, 16) in float32."""
    g = torch.Generator().manual_seed(seed)
    out_a, out_b = (torch.randn(t, h, d, generator=g).to(dtype) for _ in range(2))
    lse_a, lse_b = (4 * torch.randn(h, t, generator=g) for _ in range(2))
    return out_a.to(DEVICE), lse_a.to(DEVICE), out_b.to(DEVICE), lse_b.to(DEVICE)


# ---------------------------------------------------------------------------- the battery


def _check_formula(fn: Merge) -> list[str]:
    problems = []
    for dtype in (torch.float32, torch.bfloat16):
        case = random_case(5, 3, 7, dtype, seed=1)
        want_out, want_lse = ref_merge(*(x.cpu() for x in case))
        out, lse = fn(*case)
        if out.dtype != dtype or lse.dtype != torch.float32:
            problems.append(f"dtypes {out.dtype}, {lse.dtype} for {dtype} inputs")
        problems += mismatch(f"{dtype} out", out, want_out, tol(dtype), scale=4.0)
        problems += mismatch(f"{dtype} lse", lse, want_lse, 1e-6, scale=10.0)
        out_only, no_lse = fn(*case, return_lse=False)
        if no_lse is not None or not torch.equal(out_only, out):
            problems.append("return_lse=False changed the output or returned an LSE")
    return problems


def _check_union(fn: Merge) -> list[str]:
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(n, 2, 6, generator=g, dtype=torch.float64) for n in (4, 7, 7))
    in_a = torch.tensor([True, False, True, True, False, False, True])
    out_a, lse_a = partial_attention(q, k, v, in_a)
    out_b, lse_b = partial_attention(q, k, v, ~in_a)
    want_out, want_lse = partial_attention(q, k, v, torch.ones_like(in_a))
    args = (out_a.float(), lse_a.float(), out_b.float(), lse_b.float())
    out, lse = fn(*(x.to(DEVICE) for x in args))
    return mismatch("out", out, want_out, 1e-5) + mismatch("lse", lse, want_lse, 1e-5)


def _check_one_side_empty(fn: Merge, empty: float) -> list[str]:
    """``empty`` is -inf or +inf; the empty side's out is NaN garbage that must not be read."""
    problems = []
    for dtype in (torch.float32, torch.bfloat16):
        out_a, lse_a, out_b, lse_b = random_case(3, 2, 5, dtype, seed=3)
        lse_b[0, 1] = empty  # token 1, head 0: only side a
        out_b[1, 0] = NAN
        lse_a[1, 2] = empty  # token 2, head 1: only side b
        out_a[2, 1] = NAN
        out, lse = fn(out_a, lse_a, out_b, lse_b)
        if not (torch.equal(out[1, 0], out_a[1, 0]) and torch.equal(lse[0, 1], lse_a[0, 1])):
            problems.append(f"{dtype}: b empty, result {out[1, 0].tolist()} is not side a")
        if not (torch.equal(out[2, 1], out_b[2, 1]) and torch.equal(lse[1, 2], lse_b[1, 2])):
            problems.append(f"{dtype}: a empty, result {out[2, 1].tolist()} is not side b")
    return problems


def _check_both_empty(fn: Merge) -> list[str]:
    out_a, lse_a, out_b, lse_b = random_case(4, 1, 5, torch.bfloat16, seed=4)
    lse_a[0] = torch.tensor([-INF, INF, -INF, INF], device=DEVICE)
    lse_b[0] = torch.tensor([-INF, INF, INF, -INF], device=DEVICE)
    out, lse = fn(out_a, lse_a, out_b, lse_b)
    if out.isnan().any() or lse.isnan().any():
        return ["NaN in the merge of two empty partials"]
    if not (bool((out == 0).all()) and bool((lse == -INF).all())):
        return [f"want out 0 and lse -inf, got lse {lse.tolist()}"]
    return []


def _check_strides(fn: Merge, kinds: tuple[str, str, str, str]) -> list[str]:
    """Each tensor gets its own layout; the contiguous reference cannot see stride mix-ups."""
    case = random_case(5, 3, 7, torch.float32, seed=5)
    want_out, want_lse = ref_merge(*(x.cpu() for x in case))
    out, lse = fn(*(relayout(x, kind) for x, kind in zip(case, kinds, strict=True)))
    return mismatch(f"{kinds} out", out, want_out, tol(torch.float32), scale=4.0) + mismatch(
        f"{kinds} lse", lse, want_lse, 1e-6, scale=10.0
    )


def _check_nan(fn: Merge) -> list[str]:
    """NaN is never dropped, not by an empty other side nor by a weight that underflows to 0."""
    out_a, lse_a, out_b, lse_b = random_case(5, 1, 4, torch.float32, seed=6)
    lse_a[0, 0] = NAN  # token 0: NaN LSE against a finite one
    lse_a[0, 1], lse_b[0, 1] = NAN, -INF  # token 1: NaN LSE against an empty side
    lse_a[0, 2], lse_b[0, 2] = INF, NAN  # token 2: the same, mirrored, +inf empty
    lse_a[0, 3], lse_b[0, 3] = -200.0, 0.0  # token 3: a's weight exp(-200) is 0 in fp32
    out_a[3, 0, 2] = NAN
    out, lse = fn(out_a, lse_a, out_b, lse_b)
    problems = [
        f"NaN LSE at token {token} dropped: out {out[token].tolist()}"
        for token in (0, 1, 2)
        if not (bool(out[token].isnan().all()) and bool(lse[0, token].isnan()))
    ]
    if out[3].isnan().flatten().tolist() != [False, False, True, False]:
        problems.append(f"NaN in out_a under a zero weight gave {out[3].tolist()}")
    if out[4].isnan().any() or lse[0, 3:].isnan().any():
        problems.append("NaN leaked into rows without NaN inputs")
    return problems


CHECKS: dict[str, Callable[[Merge], list[str]]] = {
    "formula": _check_formula,
    "union": _check_union,
    "one-empty": lambda fn: _check_one_side_empty(fn, -INF),
    "plus-inf": lambda fn: _check_one_side_empty(fn, INF),
    "both-empty": _check_both_empty,
    "strides": lambda fn: _check_strides(fn, ("permuted", "contiguous", "contiguous", "permuted")),
    "strides-windowed": lambda fn: _check_strides(fn, ("sliced", "permuted", "permuted", "sliced")),
    "nan": _check_nan,
}


def check_merge(fn: Merge) -> list[str]:
    """Every problem the battery finds in ``fn``, as ``"<check>: <detail>"``."""
    problems = []
    for name, check in CHECKS.items():
        try:
            problems += [f"{name}: {detail}" for detail in check(fn)]
        except Exception as e:  # a crash is a finding, not a test error
            problems.append(f"{name}: raised {type(e).__name__}: {e}")
    return problems


# ---------------------------------------------------------------------------- planted faults


def textbook_merge(
    out_a: Tensor,
    lse_a: Tensor,
    out_b: Tensor,
    lse_b: Tensor,
    *,
    return_lse: bool = True,
    fault: str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """A plain float64 merge that is correct with ``fault=None``; each fault is a real bug class."""
    if fault == "mixed_strides":  # a launch that passes out_a's strides for out_b too
        out_b = out_b.as_strided(out_b.shape, out_a.stride(), out_b.storage_offset())
    la, lb = lse_a.t().double(), lse_b.t().double()
    if fault == "plus_inf_not_empty":
        a_empty, b_empty = la == -INF, lb == -INF
    elif fault == "nan_as_empty":  # ~isfinite looks like isinf but also swallows NaN
        a_empty, b_empty = ~la.isfinite(), ~lb.isfinite()
    else:
        a_empty, b_empty = la.isinf(), lb.isinf()
    la, lb = la.masked_fill(a_empty, -INF), lb.masked_fill(b_empty, -INF)
    both = a_empty & b_empty
    if fault == "both_empty_nan":  # unguarded: the max is -inf, and -inf - -inf is NaN
        both = torch.zeros_like(both)
    m = torch.maximum(la, lb).masked_fill(both, 0.0)
    exp, log = (torch.exp2, torch.log2) if fault == "base2_lse" else (torch.exp, torch.log)
    wa, wb = exp(la - m), exp(lb - m)
    s = (wa + wb).masked_fill(both, 1.0)
    term_a = torch.where(a_empty[..., None], 0.0, wa[..., None] * out_a.double())
    term_b = torch.where(b_empty[..., None], 0.0, wb[..., None] * out_b.double())
    out = ((term_a + term_b) / s[..., None]).to(out_a.dtype)
    lse = (m + log(s)).masked_fill(both, -INF)
    return out, (lse.t().float() if return_lse else None)


FAULTS = {
    "base2_lse": "formula",
    "plus_inf_not_empty": "plus-inf",
    "both_empty_nan": "both-empty",
    "mixed_strides": "strides",
    "nan_as_empty": "nan",
}


@pytest.mark.parametrize("fn", IMPLS)
def test_battery_accepts_the_real_merges(fn: Merge) -> None:
    assert check_merge(fn) == []


def test_battery_accepts_the_unfaulted_textbook_merge() -> None:
    assert check_merge(textbook_merge) == []


@pytest.mark.parametrize(("fault", "check"), FAULTS.items())
def test_battery_rejects_planted_fault(fault: str, check: str) -> None:
    """Caught by wrong values, not by a crash: on a GPU these bugs read garbage silently."""
    problems = check_merge(lambda *a, **kw: textbook_merge(*a, **kw, fault=fault))
    assert any(p.startswith(f"{check}: ") and ": raised " not in p for p in problems), problems


# ---------------------------------------------------------------------------- properties

_LSE = st.one_of(
    st.floats(-60, 60, width=32),
    st.floats(-1e4, 1e4, width=32),
    st.sampled_from([-INF, INF]),
)


@st.composite
def merge_inputs(draw: st.DrawFn) -> tuple[Tensor, ...]:
    """Small partials, some rows empty (±inf, out NaN garbage), each tensor in its own layout."""
    t, h, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 9))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    out_a, _, out_b, _ = random_case(t, h, d, dtype, seed=draw(st.integers(0, 2**16)))
    lse_a, lse_b = (
        torch.tensor(draw(st.lists(_LSE, min_size=h * t, max_size=h * t))).view(h, t).to(DEVICE)
        for _ in range(2)
    )
    out_a[lse_a.t().isinf()] = NAN
    out_b[lse_b.t().isinf()] = NAN
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(4)]
    return tuple(map(relayout, (out_a, lse_a, out_b, lse_b), layouts))


@pytest.mark.parametrize("fn", IMPLS)
@given(case=merge_inputs())
def test_matches_float64_rules(fn: Merge, case: tuple[Tensor, ...]) -> None:
    want_out, want_lse = ref_merge(*(x.cpu() for x in case))
    out, lse = fn(*case)
    assert out.dtype == case[0].dtype
    assert mismatch("out", out, want_out, tol(out.dtype), scale=4.0) == []
    assert mismatch("lse", lse, want_lse, 1e-6, scale=10.0) == []


@needs_triton
@given(case=merge_inputs())
def test_torch_and_triton_agree(case: tuple[Tensor, ...]) -> None:
    out_t, lse_t = merge_attn_states_torch(*case)
    out_k, lse_k = merge_attn_states_triton(*case)
    assert mismatch("out", out_k, out_t.double(), tol(out_t.dtype), scale=4.0) == []
    assert mismatch("lse", lse_k, lse_t.double(), 1e-6, scale=10.0) == []


@pytest.mark.parametrize("fn", IMPLS)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 8)),
    in_a=st.lists(st.booleans(), min_size=0, max_size=6),
    score_scale=st.floats(0.1, 4.0),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_merge_of_partials_is_attention_over_the_union(
    fn: Merge,
    shape: tuple[int, int, int],
    in_a: list[bool],
    score_scale: float,
    dtype: torch.dtype,
    seed: int,
) -> None:
    """Attention over A and over B, merged, is attention over A ∪ B (either may be empty)."""
    t, h, d = shape
    g = torch.Generator().manual_seed(seed)
    q = score_scale * torch.randn(t, h, d, generator=g, dtype=torch.float64)
    k, v = (torch.randn(len(in_a), h, d, generator=g, dtype=torch.float64) for _ in range(2))
    keys_a = torch.tensor(in_a, dtype=torch.bool)
    out_a, lse_a = partial_attention(q, k, v, keys_a)
    out_b, lse_b = partial_attention(q, k, v, ~keys_a)
    want_out, want_lse = partial_attention(q, k, v, torch.ones_like(keys_a))
    if not in_a:  # no keys at all: the merge's both-empty rule
        want_out = torch.zeros_like(want_out)
    args = (out_a.to(dtype), lse_a.float(), out_b.to(dtype), lse_b.float())
    out, lse = fn(*(x.to(DEVICE) for x in args))
    # Partials are rounded to dtype before the merge, so allow that rounding twice over.
    assert mismatch("out", out, want_out, 2 * tol(dtype)) == []
    assert mismatch("lse", lse, want_lse, 1e-5, scale=10.0) == []


# ---------------------------------------------------------------------------- API details


@pytest.mark.parametrize("fn", IMPLS)
def test_writes_into_preallocated_strided_outputs(fn: Merge) -> None:
    case = random_case(5, 3, 7, torch.float16, seed=7)
    want_out, want_lse = fn(*case)
    output = relayout(torch.zeros_like(case[0]), "sliced")
    output_lse = relayout(torch.zeros_like(case[1]), "permuted")
    out, lse = fn(*case, output=output, output_lse=output_lse)
    assert out is output and lse is output_lse
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)


@pytest.mark.parametrize("fn", IMPLS)
@pytest.mark.parametrize("shape", [(0, 2, 4), (3, 0, 4), (3, 2, 0)])
def test_degenerate_shapes(fn: Merge, shape: tuple[int, int, int]) -> None:
    t, h, d = shape
    case = random_case(t, h, d, torch.float32, seed=8)
    out, lse = fn(*case)
    assert out.shape == shape and lse.shape == (h, t)
    assert mismatch("lse", lse, ref_merge(*(x.cpu() for x in case))[1], 1e-6, scale=10.0) == []


def test_torch_merge_computes_in_float64_for_float64_inputs() -> None:
    case = tuple(x.double() for x in random_case(4, 2, 6, torch.float32, seed=9))
    out, lse = merge_attn_states_torch(*case)
    want_out, want_lse = ref_merge(*(x.cpu() for x in case))
    assert out.dtype == lse.dtype == torch.float64
    assert mismatch("out", out, want_out, 1e-12) == []
    assert mismatch("lse", lse, want_lse, 1e-12) == []


def _cast(*names: str, to: torch.dtype) -> Callable[[dict], dict]:
    return lambda kw: {n: kw[n].to(to) for n in names}


def _bad_inputs() -> list:
    """One param per (merge, validation rule): the changes that break a valid call."""
    both, triton_only = ("torch", "triton"), ("triton",)  # torch takes float64 (tested above)
    rules = [
        ("out_b shape", lambda kw: {"out_b": kw["out_b"][..., :-1]}, both),
        ("out 2-D", lambda kw: {"out_a": kw["out_a"][0], "out_b": kw["out_b"][0]}, both),
        ("lse_a shape", lambda kw: {"lse_a": kw["lse_a"].t()}, both),
        ("lse_b shape", lambda kw: {"lse_b": kw["lse_b"][:, :-1]}, both),
        ("out dtypes differ", _cast("out_b", to=torch.float16), both),
        ("out int", _cast("out_a", "out_b", to=torch.int32), both),
        ("lse fp16", _cast("lse_a", "lse_b", to=torch.float16), both),
        ("lse dtypes differ", _cast("lse_b", to=torch.float64), both),
        ("lse fp64", _cast("lse_a", "lse_b", to=torch.float64), triton_only),
        ("out fp64", _cast("out_a", "out_b", to=torch.float64), triton_only),
        ("output dtype", lambda kw: {"output": kw["out_a"].float()}, both),
        (
            "output_lse without return_lse",
            lambda kw: {"output_lse": kw["lse_a"].clone(), "return_lse": False},
            both,
        ),
    ]
    impls = {"torch": IMPLS[0], "triton": IMPLS[1]}
    return [
        pytest.param(impls[i].values[0], change, id=f"{i}-{name}", marks=impls[i].marks)
        for name, change, names in rules
        for i in names
    ]


@pytest.mark.parametrize(("fn", "change"), _bad_inputs())
def test_rejects_bad_inputs_with_one_line_value_error(
    fn: Merge, change: Callable[[dict], dict]
) -> None:
    out_a, lse_a, out_b, lse_b = random_case(3, 2, 4, torch.bfloat16, seed=10)
    kw = {"out_a": out_a, "lse_a": lse_a, "out_b": out_b, "lse_b": lse_b}
    kw.update(change(kw))
    with pytest.raises(ValueError, match="merge_attn_states") as err:
        fn(**kw)
    assert "\n" not in str(err.value)
