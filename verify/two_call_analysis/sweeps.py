"""The two-call report's default layouts, and the numbers they give.

Four sweeps, each varying one thing the overlap error depends on, over one image per
request; every case packs ``REPEATS`` requests of the same layout (different values), so
each point aggregates ``REPEATS x num_heads`` samples per query (bf16 inputs, 4 query
heads, 2 KV heads, head dim 128, seed 0):

* ``position``: the query's offset ``p - s`` inside a 64-token image after 32 text tokens;
* ``length``: the image length, after 32 text tokens;
* ``temperature``: ``softmax_scale`` as a multiple of ``1/sqrt(head_dim)`` (sharper
  rows put more or less mass on the overlap);
* ``offset``: the text tokens before the image, held as cached context so the chunk
  starts at the image (more text, less mass on the overlap).

Every number is float64 from fixed inputs, so ``summary()`` is the same on every run;
golden/two_call/summary.json pins it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from prefix_referee.verify.case import CaseSpec, parse_case
from prefix_referee.verify.compare import ulp
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.two_call_analysis.error import TV_BOUND, OverlapError, measure

BASE = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16",
        "page_size": None, "seed": 0}
REPEATS = 4
TEXT_BEFORE = 32
IMAGE = 64
TEXT_AFTER = 32
POSITION_OFFSETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 56, 63)
IMAGE_LENGTHS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCALE_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
TEXT_OFFSETS = (0, 16, 64, 256, 1024)
# What each sweep varies, for tables and plot axes.
SWEEPS = {
    "position": "query offset p - s inside the image",
    "length": "image length (tokens)",
    "temperature": "softmax_scale x sqrt(head_dim)",
    "offset": "text tokens before the image (cached context)",
}


@dataclass(frozen=True)
class SweepPoint:
    """One point of a sweep: a case and the packed query rows its numbers cover."""

    sweep: str
    x: float
    spec: CaseSpec
    rows: tuple[int, ...]


def _image_point(sweep: str, x: float, text_before: int, image: int, text_after: int,
                 offsets: range, cached: int = 0, **fields: Any) -> SweepPoint:
    """``REPEATS`` requests: text, one image, text; the first ``cached`` tokens cached.

    ``offsets`` picks the queries the point covers, as offsets ``p - s`` in the image.
    """
    query_len = text_before + image + text_after - cached
    request = {"context_len": cached, "query_len": query_len,
               "ranges": [[text_before, text_before + image - 1]]}
    spec = parse_case({"requests": [request] * REPEATS, **BASE, **fields})
    first = text_before - cached
    rows = tuple(r * query_len + first + i for r in range(REPEATS) for i in offsets)
    return SweepPoint(sweep, x, spec, rows)


def sweep_points() -> list[SweepPoint]:
    """Every point of the four sweeps, in table order."""
    return [
        *(_image_point("position", offset, TEXT_BEFORE, IMAGE, TEXT_AFTER,
                       range(offset, offset + 1))
          for offset in POSITION_OFFSETS),
        *(_image_point("length", length, TEXT_BEFORE, length, TEXT_AFTER, range(length))
          for length in IMAGE_LENGTHS),
        *(_image_point("temperature", multiple, TEXT_BEFORE, IMAGE, TEXT_AFTER, range(IMAGE),
                       softmax_scale=multiple * BASE["head_dim"] ** -0.5)
          for multiple in SCALE_MULTIPLES),
        *(_image_point("offset", text, text, IMAGE, TEXT_AFTER, range(IMAGE), cached=text)
          for text in TEXT_OFFSETS),
    ]


@dataclass(frozen=True)
class PointResult:
    """A point's worst and mean numbers over its (query, head) rows.

    An ``abs_error`` is the largest over the head dim of one row; ``mean_abs_error`` is
    the mean of those over the rows.
    """

    sweep: str
    x: float
    max_mass: float
    mean_mass: float
    max_lse_shift: float
    max_tv: float
    mean_tv: float
    max_abs_error: float
    mean_abs_error: float
    max_rel_l2: float
    bf16_ulp: float  # one bf16 ULP at the output's scale (the largest exact |out|)

    @property
    def bf16_ulps(self) -> float:
        """The worst absolute error as a multiple of bf16 output rounding."""
        return self.max_abs_error / self.bf16_ulp

    def as_dict(self) -> dict[str, float]:
        numbers = {k: v for k, v in vars(self).items() if k != "sweep"}
        return {**numbers, "bf16_ulps": self.bf16_ulps}


def _result(point: SweepPoint, error: OverlapError) -> PointResult:
    rows = torch.tensor(point.rows)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t[:, rows]

    return PointResult(
        point.sweep, point.x, float(pick(error.mass).max()), float(pick(error.mass).mean()),
        float(pick(error.lse_shift).max()), float(pick(error.tv).max()),
        float(pick(error.tv).mean()), float(pick(error.abs_error).max()),
        float(pick(error.abs_error).mean()), float(pick(error.rel_l2).max()),
        float(ulp(torch.tensor(error.out_scale), torch.bfloat16)))


def run_sweeps() -> list[PointResult]:
    """Measure every point (each distinct case once)."""
    errors: dict[str, OverlapError] = {}
    results = []
    for point in sweep_points():
        key = point.spec.to_json()
        if key not in errors:
            errors[key] = measure(materialize(point.spec))
        results.append(_result(point, errors[key]))
    return results


# Significant digits kept in the summary: far above float64 noise, far below any change.
DIGITS = 6


def summary(results: list[PointResult]) -> dict[str, Any]:
    """The JSON summary: the worst point overall and every point, rounded to DIGITS."""

    def rounded(row: dict[str, float]) -> dict[str, float]:
        return {k: float(f"{v:.{DIGITS}g}") for k, v in row.items()}

    worst = max(results, key=lambda r: r.bf16_ulps)
    return {
        "command": "python -m prefix_referee.verify.two_call_analysis",
        "layout": {**BASE, "text_before": TEXT_BEFORE, "image": IMAGE,
                   "text_after": TEXT_AFTER},
        "worst": {"sweep": worst.sweep, **rounded(worst.as_dict()),
                  "max_tv_bound": float(f"{TV_BOUND:.{DIGITS}g}")},
        "sweeps": {name: [rounded(r.as_dict()) for r in results if r.sweep == name]
                   for name in SWEEPS},
    }
