"""Triton's interpreter with bf16 / fp8 dots and bf16 casts fixed (verify.kernels.interpreter).

The kernels here are written the way engines write them, not the suite's way: bf16 loads
straight into ``tl.dot``, a ``.to(bf16)`` P for the second dot. Under the interpreter they
must match torch only with the patch; the unpatched runs show what it fixes (so these
tests can fail). Compiled on a GPU they run as they are, as a control.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")
import triton.language as tl  # noqa: E402

from prefix_referee.verify.kernels.interpreter import (  # noqa: E402
    CAST_PATCH,
    DOT_PATCH,
    FP8_CAST_PATCH,
    interpreter_enabled,
    interpreter_patches,
    patch_interpreter_dot,
    use_interpreter_without_cuda,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_interpreter = pytest.mark.skipif(not interpreter_enabled(),
                                       reason="the Triton interpreter is not on here")
M, N, D = 16, 32, 64


@triton.jit
def _attention_tile(q_ptr, k_ptr, v_ptr, o_ptr, scale,
                    M: tl.constexpr, N: tl.constexpr, D: tl.constexpr):
    """One causal attention tile (bottom-right aligned), bf16 in and out."""
    rows, cols, dims = tl.arange(0, M), tl.arange(0, N), tl.arange(0, D)
    q = tl.load(q_ptr + rows[:, None] * D + dims[None, :])
    k = tl.load(k_ptr + cols[:, None] * D + dims[None, :])
    v = tl.load(v_ptr + cols[:, None] * D + dims[None, :])
    s = tl.dot(q, tl.trans(k)) * scale
    s = tl.where(cols[None, :] <= rows[:, None] + (N - M), s, float("-inf"))
    p = tl.exp(s - tl.max(s, 1)[:, None])
    out = tl.dot(p.to(v.dtype), v) / tl.sum(p, 1)[:, None]
    tl.store(o_ptr + rows[:, None] * D + dims[None, :], out.to(o_ptr.dtype.element_ty))


@triton.jit
def _matmul_tile(a_ptr, b_ptr, c_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    rows, cols, ks = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + ks[None, :])
    b = tl.load(b_ptr + ks[:, None] * N + cols[None, :])
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], tl.dot(a, b))


@triton.jit
def _cast(x_ptr, y_ptr, SIZE: tl.constexpr):
    offs = tl.arange(0, SIZE)
    tl.store(y_ptr + offs, tl.load(x_ptr + offs).to(y_ptr.dtype.element_ty))


def _unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """The interpreter's own create_dot, cast_impl and create_fp_to_fp, for the rest of one
    test."""
    from triton.runtime.interpreter import InterpreterBuilder

    for name in ("create_dot", "cast_impl", "create_fp_to_fp"):
        method = getattr(InterpreterBuilder, name)
        monkeypatch.setattr(InterpreterBuilder, name, getattr(method, "__wrapped__", method))


def _attention_inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(rows, D, generator=gen).to(DEVICE, torch.bfloat16)
                 for rows in (M, N, N))


def _attention_errors() -> tuple[float, float]:
    """Max error of the Triton tile and of the same bf16 steps in torch, vs float64."""
    q, k, v = _attention_inputs()
    scale = 1 / math.sqrt(D)
    out = torch.empty_like(q)
    _attention_tile[(1,)](q, k, v, out, scale, M, N, D)
    mask = torch.ones(M, N, dtype=torch.bool, device=DEVICE).tril(N - M)
    s = (q.double() @ k.double().T * scale).masked_fill(~mask, float("-inf"))
    exact = torch.softmax(s, -1) @ v.double()
    s32 = (q.float() @ k.float().T * scale).masked_fill(~mask, float("-inf"))
    p = torch.exp(s32 - s32.amax(-1, keepdim=True))
    baseline = ((p.bfloat16().float() @ v.float()) / p.sum(-1, keepdim=True)).bfloat16()
    return ((out.double() - exact).abs().max().item(),
            (baseline.double() - exact).abs().max().item())


def test_outside_bf16_attention_tile_matches_torch() -> None:
    """FlashAttention's rule: within 2x the error of torch doing the same bf16 steps."""
    err, baseline = _attention_errors()
    assert err <= 2 * baseline + 2.0**-8, (err, baseline)


@needs_interpreter
def test_unpatched_interpreter_gets_the_tile_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpatched(monkeypatch)
    err, baseline = _attention_errors()
    assert not err <= 100 * baseline, (err, baseline)  # NaN counts as wrong


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn,
                                   torch.float8_e5m2], ids=str)
def test_dot_products_are_exact_and_accumulate_in_fp32(dtype: torch.dtype) -> None:
    """bf16 and fp8 products are exact; only the fp32 sum rounds. fp16 was already right."""
    if DEVICE == "cuda" and dtype.itemsize == 1 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 dots need sm89+")
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(16, 32, generator=gen).to(dtype).to(DEVICE),
            torch.randn(32, 16, generator=gen).to(dtype).to(DEVICE))
    c = torch.empty(16, 16, device=DEVICE)
    _matmul_tile[(1,)](a, b, c, 16, 16, 32)
    exact = a.double() @ b.double()
    bound = 32 * 2.0**-24 * (a.double().abs() @ b.double().abs())  # fp32 summation
    assert ((c.double() - exact).abs() <= bound).all()


@needs_interpreter
def test_fp8_nan_code_stays_nan() -> None:
    """0x7F is e4m3fn's NaN; the interpreter's own conversion read it as 480."""
    a = torch.full((16, 16), 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn)
    b = torch.ones(16, 16).to(torch.float8_e4m3fn)
    c = torch.empty(16, 16)
    _matmul_tile[(1,)](a, b, c, 16, 16, 16)
    assert c.isnan().all()


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
@pytest.mark.parametrize("to", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_every_fp8_code_decodes_like_torch(dtype: torch.dtype, to: torch.dtype) -> None:
    """All 256 codes, NaNs and infinities included: an FP8 cache's poison stays poison."""
    if DEVICE == "cuda" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 conversions need sm89+")
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).to(DEVICE)
    out = torch.empty(256, dtype=to, device=DEVICE)
    _cast[(1,)](codes, out, 256)
    want = codes.float().to(to)
    assert torch.equal(out.isnan(), want.isnan())
    assert torch.equal(out.nan_to_num(), want.nan_to_num())


@needs_interpreter
def test_unpatched_fp8_decoding_loses_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpatched(monkeypatch)
    nan = torch.tensor([0x7F], dtype=torch.uint8).view(torch.float8_e4m3fn).expand(16)
    out = torch.empty(16)
    _cast[(1,)](nan.contiguous(), out, 16)
    assert not out.isnan().any()


def _rounding_inputs() -> torch.Tensor:
    """Ties, near-ties, overflow to inf, subnormals, NaN and signed zeros."""
    gen = torch.Generator().manual_seed(2)
    ties = np.array([0x3F818000, 0x3F808000, 0xBF818000, 0x3F807FFF, 0x7F7FFFFF,
                     0x00008000, 0x00018000], dtype=np.uint32).view(np.float32)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    random = torch.randn(1024 - 12, generator=gen) * torch.logspace(-40, 38, 1024 - 12)
    return torch.cat([torch.from_numpy(ties), special, random]).to(DEVICE)


def test_bf16_casts_round_to_nearest_even() -> None:
    x = _rounding_inputs()
    y = torch.empty_like(x, dtype=torch.bfloat16)
    _cast[(1,)](x, y, x.numel())
    want = x.to(torch.bfloat16)
    assert torch.equal(y.isnan(), want.isnan())
    assert torch.equal(y[~want.isnan()].view(torch.int16), want[~want.isnan()].view(torch.int16))
    back = torch.empty(x.numel(), dtype=torch.float64, device=DEVICE)
    _cast[(1,)](want, back, x.numel())
    assert torch.equal(back.nan_to_num(), want.double().nan_to_num())


@needs_interpreter
def test_unpatched_cast_truncates(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpatched(monkeypatch)
    x = _rounding_inputs()
    y = torch.empty_like(x, dtype=torch.bfloat16)
    _cast[(1,)](x, y, x.numel())
    assert y[0] != x[0].to(torch.bfloat16)  # the tie 0x3F81_8000 rounds up to even


@needs_interpreter
def test_patch_is_idempotent_and_described() -> None:
    from triton.runtime.interpreter import InterpreterBuilder

    dot = InterpreterBuilder.create_dot
    assert (patch_interpreter_dot() == [DOT_PATCH, CAST_PATCH, FP8_CAST_PATCH]
            == interpreter_patches())
    assert InterpreterBuilder.create_dot is dot
    assert not hasattr(dot.__wrapped__, "__wrapped__")


@needs_interpreter
def test_patched_when_triton_was_imported_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton is imported and the interpreter on (say by the user): the entry point patches."""
    _unpatched(monkeypatch)
    assert interpreter_patches() == []
    assert use_interpreter_without_cuda()
    assert interpreter_patches() == [DOT_PATCH, CAST_PATCH, FP8_CAST_PATCH]
