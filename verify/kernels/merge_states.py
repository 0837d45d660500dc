"""Merging two partial attention results by their log-sum-exp ("two-call" attention).

An engine that attends a query to two disjoint key sets A and B (prefix cache and new
tokens, split-KV halves, ...) gets two partials ``(out_x, lse_x)`` and merges them:

    M   = max(lse_a, lse_b)
    w_x = exp(lse_x - M)
    out = (w_a * out_a + w_b * out_b) / (w_a + w_b)
    lse = M + log(w_a + w_b)

which equals attention over A ∪ B. Layout is vLLM's ``merge_attn_states``: outputs
``(T, H, D)`` in bf16/fp16/fp32, LSEs ``(H, T)`` in float32, natural log. Both
implementations here share the signature and the rules below: the torch one states them
readably, the Triton one has the shape of the kernels engines ship.

Edge-case rules (per (token, head) row):

* An LSE of ``-inf`` or ``+inf`` marks an *empty* partial (no keys). ``+inf`` is what
  some kernels wrongly report for empty rows, so it is accepted as empty rather than
  allowed to poison the merge with ``inf - inf``.
* An empty side is never read: its ``out`` row may hold anything, NaN included
  (engines often leave empty partials unwritten). With one side empty the result is
  the other side exactly, ``out`` and ``lse``.
* Both sides empty: ``out`` is 0 and ``lse`` is ``-inf``, never NaN.
* NaN is never dropped: a NaN LSE makes the whole row's ``out`` and ``lse`` NaN, and a
  NaN in a non-empty side's ``out`` makes that element of the merged ``out`` NaN, even
  when the side's weight underflows to 0.

Math is float32 (float64 in the torch version when an input is float64); the merged
``out`` has the inputs' dtype and the merged LSE the LSEs' dtype. Every tensor may have
its own strides (slices, transposed views): the kernel takes strides per tensor,
because passing one tensor's strides for another is a real bug class.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ModuleNotFoundError:  # torch-only installs keep the torch merge
    triton = None

_TORCH_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TORCH_LSE_DTYPES = (torch.float32, torch.float64)
_TRITON_OUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_LSE_DTYPES = (torch.float32,)


def _validate(
    out_a: Tensor,
    lse_a: Tensor,
    out_b: Tensor,
    lse_b: Tensor,
    output: Tensor | None,
    output_lse: Tensor | None,
    return_lse: bool,
    out_dtypes: tuple[torch.dtype, ...],
    lse_dtypes: tuple[torch.dtype, ...],
) -> None:
    """Raise a one-line ValueError naming the first mismatch, before any kernel runs."""
    if out_a.dim() != 3:
        raise ValueError(f"merge_attn_states: out_a must be (T, H, D), got {tuple(out_a.shape)}")
    if out_b.shape != out_a.shape:
        raise ValueError(
            f"merge_attn_states: out_b shape {tuple(out_b.shape)} != out_a {tuple(out_a.shape)}"
        )
    t, h, _ = out_a.shape
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.shape != (h, t):
            raise ValueError(
                f"merge_attn_states: {name} must be (H, T)={(h, t)}, got {tuple(lse.shape)}"
            )
    if out_b.dtype != out_a.dtype:
        raise ValueError(f"merge_attn_states: out_a is {out_a.dtype} but out_b is {out_b.dtype}")
    if out_a.dtype not in out_dtypes:
        raise ValueError(f"merge_attn_states: out dtype {out_a.dtype} not in {out_dtypes}")
    for name, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if lse.dtype not in lse_dtypes:
            raise ValueError(
                f"merge_attn_states: {name} is {lse.dtype}, must be one of {lse_dtypes}"
            )
    if lse_b.dtype != lse_a.dtype:
        raise ValueError(f"merge_attn_states: lse_a is {lse_a.dtype} but lse_b is {lse_b.dtype}")
    if output_lse is not None and not return_lse:
        raise ValueError("merge_attn_states: output_lse given with return_lse=False")
    for name, x, shape, dtype in (
        ("output", output, out_a.shape, out_a.dtype),
        ("output_lse", output_lse, lse_a.shape, lse_a.dtype),
    ):
        if x is not None and (x.shape != shape or x.dtype != dtype):
            raise ValueError(
                f"merge_attn_states: {name} must be {tuple(shape)} {dtype}, "
                f"got {tuple(x.shape)} {x.dtype}"
            )
    devices = {x.device for x in (out_a, lse_a, out_b, lse_b, output, output_lse) if x is not None}
    if len(devices) > 1:
        raise ValueError(
            f"merge_attn_states: tensors on several devices {sorted(map(str, devices))}"
        )


def merge_attn_states_torch(
    out_a: Tensor,
    lse_a: Tensor,
    out_b: Tensor,
    lse_b: Tensor,
    *,
    return_lse: bool = True,
    output: Tensor | None = None,
    output_lse: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Merge two partials by the module's rules, into ``output``/``output_lse`` if given."""
    _validate(
        out_a, lse_a, out_b, lse_b, output, output_lse, return_lse,
        _TORCH_OUT_DTYPES, _TORCH_LSE_DTYPES,
    )  # fmt: skip
    ct = torch.float64 if torch.float64 in (out_a.dtype, lse_a.dtype) else torch.float32
    neg_inf = float("-inf")
    # (T, H) views; +inf is folded into -inf so one "empty" test covers both.
    la = lse_a.t().to(ct)
    lb = lse_b.t().to(ct)
    a_empty, b_empty = la.isinf(), lb.isinf()
    la = la.masked_fill(a_empty, neg_inf)
    lb = lb.masked_fill(b_empty, neg_inf)
    both = a_empty & b_empty
    # Both empty: m = 0 and s = 1 keep the math finite; out = 0 falls out, lse is set.
    m = torch.maximum(la, lb).masked_fill(both, 0.0)
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    s = (wa + wb).masked_fill(both, 1.0)
    # where(), not multiplication, so an empty side's garbage (even NaN) is never read.
    term_a = torch.where(a_empty[..., None], 0.0, wa[..., None] * out_a.to(ct))
    term_b = torch.where(b_empty[..., None], 0.0, wb[..., None] * out_b.to(ct))
    merged = (term_a + term_b) / s[..., None]
    if output is None:
        output = merged.to(out_a.dtype)
    else:
        output.copy_(merged)
    if not return_lse:
        return output, None
    lse = torch.where(both, neg_inf, m + torch.log(s)).t()
    if output_lse is None:
        return output, lse.to(lse_a.dtype)
    output_lse.copy_(lse)
    return output, output_lse


if triton is not None:

    @triton.jit
    def _merge_kernel(
        out_a, lse_a, out_b, lse_b, out, lse_out,
        T, D,
        s_oa_t, s_oa_h, s_oa_d,
        s_ob_t, s_ob_h, s_ob_d,
        s_o_t, s_o_h, s_o_d,
        s_la_h, s_la_t,
        s_lb_h, s_lb_t,
        s_lo_h, s_lo_t,
        WRITE_LSE: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):  # fmt: skip
        """One program per (block of BLOCK_T tokens, head); D is one masked vector."""
        h = tl.program_id(1).to(tl.int64)
        t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
        d = tl.arange(0, BLOCK_D)
        t_ok = t < T
        la = tl.load(lse_a + h * s_la_h + t * s_la_t, mask=t_ok, other=float("-inf"))
        lb = tl.load(lse_b + h * s_lb_h + t * s_lb_t, mask=t_ok, other=float("-inf"))
        a_empty = tl.abs(la) == float("inf")
        b_empty = tl.abs(lb) == float("inf")
        la = tl.where(a_empty, float("-inf"), la)
        lb = tl.where(b_empty, float("-inf"), lb)
        both = a_empty & b_empty
        # Both empty: m = 0 and s = 1 keep the math finite; out = 0 falls out, lse is set.
        # PropagateNan.ALL: a NaN LSE makes m, hence the row's weights and lse, NaN.
        m = tl.where(both, 0.0, tl.maximum(la, lb, propagate_nan=tl.PropagateNan.ALL))
        wa = tl.exp(la - m)
        wb = tl.exp(lb - m)
        s = tl.where(both, 1.0, wa + wb)
        row_d = t_ok[:, None] & (d[None, :] < D)
        # An empty side is masked off the load, so its garbage is never read.
        oa = tl.load(
            out_a + t[:, None] * s_oa_t + h * s_oa_h + d[None, :] * s_oa_d,
            mask=row_d & ~a_empty[:, None],
            other=0.0,
        ).to(tl.float32)
        ob = tl.load(
            out_b + t[:, None] * s_ob_t + h * s_ob_h + d[None, :] * s_ob_d,
            mask=row_d & ~b_empty[:, None],
            other=0.0,
        ).to(tl.float32)
        # IEEE division (plain / compiles to a 2-ulp approximation): x / 1 stays x exactly.
        merged = tl.div_rn(wa[:, None] * oa + wb[:, None] * ob, s[:, None])
        tl.store(
            out + t[:, None] * s_o_t + h * s_o_h + d[None, :] * s_o_d,
            merged.to(out.dtype.element_ty),
            mask=row_d,
        )
        if WRITE_LSE:
            lse = tl.where(both, float("-inf"), m + tl.log(s))
            tl.store(lse_out + h * s_lo_h + t * s_lo_t, lse, mask=t_ok)


def merge_attn_states_triton(
    out_a: Tensor,
    lse_a: Tensor,
    out_b: Tensor,
    lse_b: Tensor,
    *,
    return_lse: bool = True,
    output: Tensor | None = None,
    output_lse: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Triton version of :func:`merge_attn_states_torch`: same rules, float32 LSEs only."""
    if triton is None:
        raise ModuleNotFoundError("merge_attn_states_triton needs triton")
    _validate(
        out_a, lse_a, out_b, lse_b, output, output_lse, return_lse,
        _TRITON_OUT_DTYPES, _TRITON_LSE_DTYPES,
    )  # fmt: skip
    t, h, d = out_a.shape
    if output is None:
        output = torch.empty(out_a.shape, dtype=out_a.dtype, device=out_a.device)
    if return_lse and output_lse is None:
        output_lse = torch.empty((h, t), dtype=torch.float32, device=out_a.device)
    if t * h == 0:
        return output, output_lse
    block_d = triton.next_power_of_2(max(d, 1))
    block_t = max(1, min(16, triton.next_power_of_2(t), 2048 // block_d))
    lse_dst = output_lse if return_lse else lse_a  # never written when WRITE_LSE is False
    _merge_kernel[(triton.cdiv(t, block_t), h)](
        out_a, lse_a, out_b, lse_b, output, lse_dst,
        t, d,
        *out_a.stride(), *out_b.stride(), *output.stride(),
        *lse_a.stride(), *lse_b.stride(), *lse_dst.stride(),
        WRITE_LSE=return_lse,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
    )  # fmt: skip
    return output, output_lse
