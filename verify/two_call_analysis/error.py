"""How far the two-call path is from exact attention, per query and head (docs/two_call.md).

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

from prefix_referee.references import reference_attention
from prefix_referee.references.batch import interval_mask, plan_blocks
from prefix_referee.references.reference import scores
from prefix_referee.verify.compare import check, expected
from prefix_referee.verify.mask import overlap_weight
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.targets.engines import REFERENCE_ENGINE
from prefix_referee.verify.targets.two_call import TwoCallTarget

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
    mass = torch.zeros(case.num_heads, case.q.shape[0], dtype=torch.float64, device=case.device)
    tv = torch.zeros_like(mass)
    batch, weight = case.batch(), overlap_weight(case)
    lo, hi = batch.lo.to(case.device), batch.hi.to(case.device)
    overlap_lo, overlap_hi = weight.lo.to(case.device), weight.hi.to(case.device)
    for b in plan_blocks(batch.lo, batch.hi, QUERY_BLOCK):
        rows = slice(b.r0, b.r1)
        s = scores(batch, rows, b.k0, b.k1)
        hidden = ~interval_mask(lo[rows], hi[rows], b.k0, b.k1)
        overlap = interval_mask(overlap_lo[rows], overlap_hi[rows], b.k0, b.k1)
        exact = torch.softmax(s.masked_fill(hidden, -math.inf), dim=-1)
        biased = s + overlap.double() * weight.weight
        two_call = torch.softmax(biased.masked_fill(hidden, -math.inf), dim=-1)
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
    exact_out, exact_lse = reference_attention(case.batch())
    two_call_out, two_call_lse = two_call.attend(case)
    mass, tv = _mass_and_tv(case)
    diff = two_call_out - exact_out
    norm = exact_out.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
    return OverlapError(
        mass=mass, lse_shift=two_call_lse - exact_lse, tv=tv,
        abs_error=diff.abs().amax(dim=-1).T, rel_l2=(diff.norm(dim=-1) / norm).T,
        inside=case.query_ranges[:, 0] >= 0,
        out_scale=float(exact_out.abs().max()) if exact_out.numel() else 0.0)


def matches_two_call_approximation(case: MaterializedCase, out: Tensor, lse: Tensor | None) -> bool:
    """Does an output pass the policy against the two-call approximation (overlap counted
    twice)?

    Run on a target that claims to be exact and fails: True names the bug, an
    unmerged-overlap two-call path.
    """
    return check(case, out, lse, expected(case, overlap_weight(case))).passed
