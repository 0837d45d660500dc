"""Bitwise comparisons beyond tolerance: digests of a case's outputs, and variants of a case
run one after another in one process and compared element by element.

A claim such as batch invariance (docs/semantics.md) says two runs give the *same bits*,
not two results within tolerance. The runner digests each case's ``out`` rows and ``lse``
columns (:mod:`verify.digest`), so runs in different jobs compare by a short string and
tensors never leave the process that made them. Where bits must be counted and located,
:func:`compare_variants` runs a list of :class:`Variant` (the case alone, run again, its
pages moved, after a neighbour, after other work) in order, keeps each one's outputs of the
compared case, and says for each how many elements changed, by how many ULPs, and where.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from prefix_referee.verify.case import CaseError, CaseSpec, parse_case, without_annotations
from prefix_referee.verify.compare import DIGITS, Segment, ulp, whole
from prefix_referee.verify.digest import bits, segment_digests
from prefix_referee.verify.materialize import MaterializedCase, materialize, value_key
from prefix_referee.verify.pack import pack
from prefix_referee.verify.runner import Status, contained_call, copy_case, run_and_judge
from prefix_referee.verify.target import Target

# The properties a comparison checks: the claims of verify.capabilities.CLAIMS, and
# "stateless" (a call's bits do not depend on the calls before it), which every target owes.
PROPERTIES = ("deterministic", "batch_invariant", "placement_invariant", "stateless")
# The symptom of a violation: what a finding of it is called.
SYMPTOMS = {"deterministic": "nondeterministic", "batch_invariant": "batch-variant",
            "placement_invariant": "placement-variant", "stateless": "stale-state"}


@dataclass(frozen=True)
class Change:
    """How one tensor differs between two runs: elements whose bits differ, of how many, and
    the largest distance in ULPs (inf: a NaN on one side only)."""

    changed: int = 0
    total: int = 0
    ulps: float = 0.0


def _change(a: Tensor, b: Tensor) -> tuple[Change, int | None]:
    """The change from ``a`` to ``b`` (same shape and dtype, rows first) and the flat index of
    the largest. Distances are in ULPs of the dtype at each element, never finer than at
    1/64 of the largest magnitude of its row (as the policy counts them: near zero a ULP is
    no measure of a difference)."""
    if a.numel() == 0:
        return Change(), None
    differs = bits(a) != bits(b)
    changed = int(differs.sum())
    if not changed:
        return Change(0, a.numel()), None
    x, y = a.double(), b.double()
    both = torch.maximum(x.abs(), y.abs())
    row = torch.nan_to_num(both, nan=0.0, posinf=0.0).reshape(a.shape[0], -1).amax(dim=1)
    finest = ulp(row / 64, a.dtype).view(-1, *([1] * (a.dim() - 1)))
    distance = (x - y).abs() / torch.maximum(ulp(both, a.dtype), finest)
    distance = torch.where(differs, torch.nan_to_num(distance, nan=math.inf), 0.0)
    worst = int(torch.argmax(distance))
    return Change(changed, a.numel(), float(distance.flatten()[worst])), worst


@dataclass(frozen=True)
class Variant:
    """One run of a comparison: ``cases`` packed into one batch, in order.

    ``subject`` is the index (in ``cases``) of the case being compared, None for a run that
    only leaves its mark on the target's state; ``against`` names the earlier variant whose
    outputs of the subject this one's must equal bit for bit, and ``property`` is the claim
    a difference breaks.
    """

    name: str
    cases: tuple[CaseSpec, ...]
    subject: int | None = 0
    against: str | None = None
    property: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name,
                                "cases": [without_annotations(c).to_dict() for c in self.cases],
                                "subject": self.subject}
        if self.against is not None:
            data["against"], data["property"] = self.against, self.property
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "variant") -> Variant:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise CaseError(f"{where}: a variant needs a 'name'")
        cases = data.get("cases")
        if not isinstance(cases, list) or not cases:
            raise CaseError(f"{where}.cases: must be a non-empty list of cases")
        specs = tuple(parse_case(c) for c in cases)
        subject = data.get("subject")
        if subject is not None and (isinstance(subject, bool) or not isinstance(subject, int)
                                    or not 0 <= subject < len(specs)):
            raise CaseError(f"{where}.subject: must be an index into cases or null")
        against, prop = data.get("against"), data.get("property", "")
        if against is not None and prop not in PROPERTIES:
            raise CaseError(f"{where}.property: must be one of {', '.join(PROPERTIES)}")
        return cls(data["name"], specs, subject, against, prop)


def variants_from_json(data: Any) -> tuple[str, list[Variant]]:
    """The property and the variants of a reproducer's ``invariance`` annotation."""
    if not isinstance(data, Mapping) or data.get("property") not in PROPERTIES:
        raise CaseError(f"invariance.property: must be one of {', '.join(PROPERTIES)}")
    raw = data.get("variants")
    if not isinstance(raw, list) or len(raw) < 2:
        raise CaseError("invariance.variants: must list at least two runs")
    variants = [Variant.from_json(v, f"invariance.variants[{i}]") for i, v in enumerate(raw)]
    names = [v.name for v in variants]
    for i, v in enumerate(variants):
        if v.against is not None and v.against not in names[:i]:
            raise CaseError(f"invariance.variants[{i}].against: {v.against!r} names no earlier "
                            "variant")
    return data["property"], variants


@dataclass
class Difference:
    """A variant's subject against the variant it must equal: what changed and where."""

    variant: str
    against: str
    property: str
    out: Change = field(default_factory=Change)
    lse: Change = field(default_factory=Change)
    where: str = ""  # the element furthest apart, located in the subject case

    @property
    def differs(self) -> bool:
        return bool(self.out.changed or self.lse.changed)

    def describe(self) -> str:
        """'3.1% of out elements by up to 2 ULP; lse unchanged (worst: ...)'."""
        parts = []
        for name, change in (("out", self.out), ("lse", self.lse)):
            if change.changed:
                parts.append(change_text(name, change.changed, change.total, change.ulps))
            elif change.total:
                parts.append(f"{name} unchanged")
        text = "; ".join(parts) or "nothing to compare"
        return text + (f" (worst: {self.where})" if self.where else "")


def change_text(name: str, changed: int, total: int, ulps: float) -> str:
    """'3.1% of out elements by up to 2 ULP' (inf ULP: a NaN on one side only)."""
    share = changed / total if total else 0.0
    percent = f"{100 * share:.2g}%" if share < 0.1 else f"{100 * share:.0f}%"
    distance = "inf ULP (NaN)" if math.isinf(ulps) else f"{ulps:.0f} ULP"
    return f"{percent} of {name} elements by up to {distance}"


@dataclass
class RunRecord:
    """What one variant's run gave: its subject's digest, the tolerance verdict when judged,
    or the error it raised."""

    name: str
    digest: str = ""
    passed: bool | None = None  # None: not judged
    verdict: str = ""
    error: str = ""
    kind: str = ""
    seconds: float = 0.0


@dataclass
class Comparison:
    """The runs of a list of variants, in order, and each comparison they asked for."""

    runs: list[RunRecord] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    fault: str | None = None  # process-wide state a run changed that could not be put back

    def run(self, name: str) -> RunRecord | None:
        return next((r for r in self.runs if r.name == name), None)

    @property
    def errors(self) -> list[RunRecord]:
        return [r for r in self.runs if r.error]


def _locate(spec: CaseSpec, row: int, head: int, column: int | None, first: float,
            second: float, dtype: torch.dtype) -> str:
    """Element (row, head, column) of the subject case, in the terms a failure uses."""
    start = 0
    for index, r in enumerate(spec.requests):
        if row < start + r.query_len:
            i = row - start
            what = "lse" if column is None else f"out[..., {column}]"
            digits = DIGITS[torch.float32 if column is None else dtype]
            return (f"request {index}, query {i} (position {r.context_len + i}), head {head}: "
                    f"{what} {first:.{digits}g} against {second:.{digits}g}")
        start += r.query_len
    return ""


def _difference(variant: Variant, base: tuple[Tensor, Tensor | None], now: tuple[Tensor,
                Tensor | None], spec: CaseSpec, dtype: torch.dtype) -> Difference:
    (out_a, lse_a), (out_b, lse_b) = base, now
    found = Difference(variant.name, variant.against or "", variant.property)
    found.out, worst = _change(out_a, out_b)
    if lse_a is not None and lse_b is not None and lse_a.shape == lse_b.shape:
        found.lse, worst_lse = _change(lse_a.T, lse_b.T)
    else:
        worst_lse = None
    if worst is not None:
        row, rest = divmod(worst, out_a.shape[1] * out_a.shape[2])
        head, column = divmod(rest, out_a.shape[2])
        found.where = _locate(spec, row, head, column, float(out_b[row, head, column]),
                              float(out_a[row, head, column]), dtype)
    elif worst_lse is not None:
        row, head = divmod(worst_lse, lse_a.shape[0])
        found.where = _locate(spec, row, head, None, float(lse_b[head, row]),
                              float(lse_a[head, row]), dtype)
    return found


def _inputs(cases: Sequence[CaseSpec], drawn: dict[tuple, tuple[Tensor, Tensor, Tensor]],
            device: str | torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """The ``q``, ``k``, ``v`` of ``cases`` packed: each case's drawn once per comparison (the
    variants of one case differ in pages, ranges or neighbours, not in values)."""
    parts = []
    for spec in cases:
        key = value_key(spec)
        if key not in drawn:
            case = materialize(without_annotations(spec), device)
            drawn[key] = (case.q, case.k, case.v)
        parts.append(drawn[key])
    if len(parts) == 1:
        return parts[0]
    q, k, v = zip(*parts, strict=True)
    return torch.cat(q), torch.cat(k), torch.cat(v)


def _keeper(into: dict[str, Any]) -> Callable[[object, object], None]:
    def keep(out: object, lse: object) -> None:
        into.update(out=out, lse=lse)

    return keep


def compare_variants(target: Target, variants: Sequence[Variant], device: str | torch.device,
                     judge: bool = False, on_target_call: Callable[[], None] = lambda: None,
                     after_target_call: Callable[[], str | None] = lambda: None
                     ) -> Comparison:
    """Run ``variants`` on ``target`` in order, in this process, and compare each subject with
    the one it must equal. ``judge``: each subject run is also judged against the reference
    (its verdict is recorded; nothing is decided by it here). A run is contained as
    :func:`verify.runner.run_and_judge` contains one (``after_target_call`` alike)."""

    result = Comparison()
    kept: dict[str, tuple[Tensor, Tensor | None]] = {}
    cases: dict[str, tuple[MaterializedCase, list[Segment]]] = {}
    drawn: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}
    for variant in variants:
        record = RunRecord(variant.name)
        result.runs.append(record)
        key = "|".join(c.to_json() for c in variant.cases)
        if key not in cases:  # a variant run again reuses the tensors it had
            if len(variant.cases) > 1:
                spec, segments = pack(list(variant.cases))
            else:
                spec, segments = without_annotations(variant.cases[0]), []
            case = materialize(spec, device, _inputs(variant.cases, drawn, device))
            cases[key] = (case, segments or [whole(case)])
        case, segments = cases[key]
        got: dict[str, Any] = {}
        start = time.perf_counter()
        if judge and variant.subject is not None:
            judged = run_and_judge(target, case, segments, on_target_call=on_target_call,
                                   after_target_call=after_target_call, on_result=_keeper(got))
            result.fault = result.fault or judged.fault
            outcome = judged.outcomes[variant.subject]
            record.passed = not outcome.failed
            record.verdict = outcome.summary()
            if outcome.status == Status.ERROR:
                record.error, record.kind = outcome.reason or outcome.summary(), outcome.kind
        else:
            call = contained_call(target, copy_case(case), on_target_call, after_target_call)
            result.fault = result.fault or call.fault
            if call.error is not None:  # the target's: recorded, the other variants still run
                record.kind, record.error = call.error
            else:
                got.update(out=call.out, lse=call.lse)
        record.seconds = time.perf_counter() - start
        out, lse = got.get("out"), got.get("lse")
        if record.error or variant.subject is None:
            continue
        if not isinstance(out, Tensor) or out.shape[0] != case.q.shape[0]:
            record.error, record.kind = "the target returned no out of the case's shape", "contract"
            continue
        segment = segments[variant.subject]
        lse_part = lse[:, segment.r0:segment.r1] if isinstance(lse, Tensor) else None
        mine = (out[segment.r0:segment.r1], lse_part)
        record.digest = segment_digests(mine[0], mine[1], [Segment(0, mine[0].shape[0], 0, 0)])[0]
        kept[variant.name] = mine
        if variant.against is not None and variant.against in kept:
            subject = variant.cases[variant.subject]
            result.differences.append(_difference(variant, kept[variant.against], mine,
                                                  subject, case.dtype))
    return result
