"""How far the two-call path is from exact attention, per query and head (DESIGN.md section 3).

Everything is float64 from the case's rounded inputs, so the numbers are the
approximation alone, free of rounding noise: the two-call result comes from the
decomposition run on the float64 reference engine, the exact one from the reference,
and the overlap mass ``m`` and the total-variation distance from explicit probability
rows. The theory says ``lse_shift = ln(1 + m)`` and ``tv = m (1 - m) / (1 + m) <=
3 - 2 sqrt(2)``; the tests hold these numbers to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from references import reference_attention
from references.overlap import OverlapBias, overlap_keys
from references.scores import block_mask, expand_kv_heads, masked_scores
from verify.compare import check, expected
from verify.engines import REFERENCE_ENGINE
from verify.materialize import MaterializedCase
from verify.targets.two_call import TwoCallTarget

# Query rows per block of explicit (H, rows, seq_len) probabilities.
QUERY_BLOCK = 256
# The largest total variation the overlap can cause: m (1 - m) / (1 + m) at m = sqrt 2 - 1.
TV_BOUND = 3 - 2 * math.sqrt(2)


@dataclass(frozen=True)
class OverlapError:
    """Per (head, query) measures, each ``(H, total_q)`` float64.

    ``inside`` ``(total_q,)`` marks the queries inside an image range, the only ones
    the approximation touches; ``out_scale`` is the largest exact output magnitude.
    """

    mass: Tensor  # exact attention mass on the overlap keys
    lse_shift: Tensor  # lse_two_call - lse_exact
    tv: Tensor  # total variation between the exact and the two-call distribution
    abs_error: Tensor  # max over the head dim of |out_two_call - out_exact|
    rel_l2: Tensor  # ||out_two_call - out_exact|| / ||out_exact|| over the head dim
    inside: Tensor
    out_scale: float


def _mass_and_tv(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """Overlap mass and total variation from explicit exact and two-call probability rows."""
    h = case.num_heads
    mass = torch.zeros(h, case.q.shape[0], dtype=torch.float64, device=case.device)
    tv = torch.zeros_like(mass)
    bias = OverlapBias(case.sliding_window)
    for view in case.requests():
        k = expand_kv_heads(case.k[view.k_slice].double(), h)
        k_pos = torch.arange(view.seq_len, device=case.device)
        for q0 in range(0, view.query_len, QUERY_BLOCK):
            q1 = min(q0 + QUERY_BLOCK, view.query_len)
            q_pos = torch.arange(view.context_len + q0, view.context_len + q1, device=case.device)
            q = case.q[view.q_slice][q0:q1].double()
            mask = block_mask(case, view, q_pos, k_pos)
            exact = torch.softmax(masked_scores(case, view, q, k, q_pos, k_pos, mask, None), -1)
            two_call = torch.softmax(masked_scores(case, view, q, k, q_pos, k_pos, mask, bias), -1)
            overlap = overlap_keys(q_pos, k_pos, view.ranges, view.seq_len, case.sliding_window)
            rows = slice(view.q_start + q0, view.q_start + q1)
            mass[:, rows] = (exact * overlap).sum(dim=-1)
            tv[:, rows] = 0.5 * (exact - two_call).abs().sum(dim=-1)
    return mass, tv


def measure(case: MaterializedCase) -> OverlapError:
    """Every per-query measure of the two-call approximation on ``case``.

    Raises ValueError for a case the two-call path does not define (overlapping ranges).
    """
    two_call = TwoCallTarget(REFERENCE_ENGINE)
    reason = two_call.unsupported_reason(case.spec, case.device.type)
    if reason:
        raise ValueError(f"two-call error of this case: {reason}")
    exact_out, exact_lse = reference_attention(case)
    two_call_out, two_call_lse = two_call.attend(case)
    mass, tv = _mass_and_tv(case)
    diff = two_call_out - exact_out
    norm = exact_out.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return OverlapError(
        mass=mass, lse_shift=two_call_lse - exact_lse, tv=tv,
        abs_error=diff.abs().amax(dim=-1).T, rel_l2=(diff.norm(dim=-1) / norm).T,
        inside=case.query_ranges[:, 0] >= 0,
        out_scale=float(exact_out.abs().max()) if exact_out.numel() else 0.0)


def matches_two_call_model(case: MaterializedCase, out: Tensor, lse: Tensor | None) -> bool:
    """Does an output pass the policy against the two-call model (overlap counted twice)?

    Run on a target that claims to be exact and fails: True names the bug, an
    unmerged-overlap two-call path.
    """
    return check(case, out, lse, expected(case, OverlapBias(case.sliding_window))).passed
