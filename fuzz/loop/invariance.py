"""Checks beyond tolerance: determinism, batch invariance, page placement, stale state.

Every fourth pack whose cases all passed (while the checks stay within a share of the
workers' time) is checked again, bit for bit, in a job of variants run one after another
on the worker that judged it (:func:`verify.invariance.compare_variants`): one case of the
pack alone, alone again, with its pages mirrored and the spare pages refilled, after a
neighbour, and alone again after calls of another configuration and of its own shapes
with another layout (A, B, A). Its digest in the pack is compared with its digest alone
too, so the pack itself is one of the variants. A target is checked for what it claims
(``Capabilities.deterministic``, ``batch_invariant``, ``placement_invariant``) and,
whatever it claims, for stale state; ``--invariance`` checks every property on every
passing pack and reports how far the target is from each (docs/design.md,
docs/fuzzing.md).

A difference is confirmed by running the variants again, each judged against the
reference, after a call of another configuration and with more reruns: a variant that
fails the tolerance check on a case of its own (the case alone, a pack of other
neighbours) is a failing case like any other and goes to triage; what is left is a
finding of the broken property, with what differs, by how many ULPs, and where.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from prefix_referee.fuzz.cases.coverage import configuration
from prefix_referee.fuzz.records.journal import json_number
from prefix_referee.verify.case import (
    DTYPES,
    CaseError,
    CaseSpec,
    Request,
    parse_case,
    without_annotations,
)
from prefix_referee.verify.invariance import (
    PROPERTIES,
    SYMPTOMS,
    Comparison,
    Difference,
    Variant,
    change_text,
)
from prefix_referee.verify.pack import pack, with_explicit_seeds
from prefix_referee.verify.values import request_stream

# Passing packs per check job: by default (claimed properties and stale state), and with
# --invariance (every property measured). A check that is due waits while the checks have
# taken more than this share of the workers' time on exploration (a target whose own call
# dominates, such as an interpreted kernel, pays for its reruns): the default keeps the
# extra runs well inside a quarter of a run's judged cases per second (docs/fuzzing.md).
CHECK_EVERY, MEASURE_EVERY = 4, 1
CHECK_SHARE, MEASURE_SHARE = 0.25, 1.0
# What changes the bits where a property is broken, for the report's words.
CHANGED_BY = {"deterministic": "a rerun changes",
              "batch_invariant": "the batch around it changes",
              "placement_invariant": "the page placement changes",
              "stateless": "the calls before it change"}
# Variant names (a reproducer lists its runs by name).
FLUSH, ALONE, AGAIN, MIRRORED = ("first, another configuration", "alone", "alone, again",
                                 "alone, pages mirrored and spare pages refilled")
OTHER_CONFIG, OTHER_LAYOUT, AFTER = ("another configuration", "same shapes, other layout",
                                     "alone, after other calls")
IN_PACK, IN_PACK_AGAIN = "in the pack", "in the pack, again"
# The placement a check compares with (1 mirrors the page pool: verify/materialize.py).
MIRROR = 1
# Extra reruns of the case alone in a confirmation.
CONFIRM_RERUNS = 2


@dataclass
class Measure:
    """How far a target is from one property over the comparisons made."""

    claimed: bool = False
    comparisons: int = 0
    differing: int = 0
    out_changed: int = 0
    out_total: int = 0
    out_ulps: float = 0.0
    lse_changed: int = 0
    lse_total: int = 0
    lse_ulps: float = 0.0
    confounded: int = 0  # comparisons not counted: the target changed its bits on a rerun
    example: str = ""

    def add(self, difference: Difference) -> None:
        self.comparisons += 1
        self.out_changed += difference.out.changed
        self.out_total += difference.out.total
        self.lse_changed += difference.lse.changed
        self.lse_total += difference.lse.total
        if difference.differs:
            self.differing += 1
            if not self.example or max(difference.out.ulps, difference.lse.ulps) > max(
                    self.out_ulps, self.lse_ulps):
                self.example = f"{difference.variant} against {difference.against}: " \
                               f"{difference.describe()}"
        self.out_ulps = max(self.out_ulps, difference.out.ulps)
        self.lse_ulps = max(self.lse_ulps, difference.lse.ulps)

    def agreed(self) -> None:
        """A comparison by digest that found the same bits."""
        self.comparisons += 1

    @property
    def holds(self) -> bool | None:
        """True: no difference in any comparison; None: nothing compared."""
        return None if not self.comparisons else not self.differing

    def text(self, prop: str) -> str:
        """'holds (12 comparisons)' or 'the batch around it changes 3.1% of out elements
        by up to 2 ULP (4 of 20 comparisons)'."""
        if not self.comparisons:
            return "not checked" + (f" ({self.confounded} not comparable: not deterministic)"
                                    if self.confounded else "")
        if not self.differing:
            return f"holds ({self.comparisons} comparison{'s' * (self.comparisons > 1)})"
        parts = []
        for name, changed, total, ulps in (("out", self.out_changed, self.out_total,
                                            self.out_ulps),
                                           ("lse", self.lse_changed, self.lse_total,
                                            self.lse_ulps)):
            if changed:
                parts.append(change_text(name, changed, total, ulps))
        what = " and ".join(parts) or "the bits"
        return (f"{CHANGED_BY[prop]} {what} ({self.differing} of {self.comparisons} "
                "comparisons)")

    def to_json(self, prop: str) -> dict[str, Any]:
        return {"claimed": self.claimed, "holds": self.holds, "comparisons": self.comparisons,
                "differing": self.differing, "confounded": self.confounded,
                "out_changed_share": self.out_changed / self.out_total if self.out_total else 0.0,
                "out_max_ulps": json_number(self.out_ulps),
                "lse_changed_share": self.lse_changed / self.lse_total if self.lse_total else 0.0,
                "lse_max_ulps": json_number(self.lse_ulps), "example": self.example,
                "text": self.text(prop)}


@dataclass
class Check:
    """A job of variants: the explored pack it samples, its subject, what ran."""

    cases: list[CaseSpec]
    index: int
    digest: str  # the subject's digest when the pack was judged
    variants: list[Variant]
    slot: int | None
    confirm: bool = False

    @property
    def subject(self) -> CaseSpec:
        return self.cases[self.index]


@dataclass
class Violation:
    """A property broken on a confirmed difference: the finding's material."""

    property: str
    difference: Difference
    variants: list[Variant]
    subject: CaseSpec
    tolerance: str  # what the tolerance check said of the runs compared

    @property
    def symptom(self) -> str:
        return SYMPTOMS[self.property]

    def words(self) -> str:
        d = self.difference
        return (f"{self.symptom}: {CHANGED_BY[self.property]} the bits of "
                f"'{d.variant}' against '{d.against}': {d.describe()}; {self.tolerance}")

    def spec(self) -> CaseSpec:
        """The subject case, carrying the runs that show the difference (its reproducer)."""
        annotation = {"property": self.property,
                      "variants": [v.to_json() for v in self.variants]}
        return replace(self.subject, extra={**self.subject.extra, "invariance": annotation})


@dataclass
class Examined:
    """What a check job's comparison asks of the campaign: violations to record as
    findings, a confirmation to run, and variants to judge as ordinary cases (they failed
    the tolerance check where they ran on a case of their own)."""

    violations: list[Violation] = field(default_factory=list)
    confirm: Check | None = None
    failing: list[list[CaseSpec]] = field(default_factory=list)
    sightings: list[str] = field(default_factory=list)  # properties with a finding already


class Checker:
    """Plans a target's checks from the packs exploration judged, and reads their results.

    ``claims`` are the properties the target claims here; ``measure`` (``--invariance``)
    checks every property; ``enabled`` False runs no check at all. ``compiled`` says
    whether a case needs no new kernel compile on a worker (a check never compiles)."""

    def __init__(self, claims: frozenset[str], *, measure: bool, enabled: bool, seed: int,
                 accepts: Callable[[CaseSpec], bool],
                 compiled: Callable[[CaseSpec, int | None], bool]) -> None:
        self.claims = claims
        self.measure = measure
        self.active = (set(PROPERTIES) if measure else {"stateless", *claims}) if enabled \
            else set()
        self.every = MEASURE_EVERY if measure else CHECK_EVERY
        self.share = MEASURE_SHARE if measure else CHECK_SHARE
        self.postponed = 0  # checks that were due while the checks had taken their share
        self.measures = {p: Measure(claimed=p in claims) for p in PROPERTIES}
        self.accepts = accepts
        self.compiled = compiled
        self.random = random.Random(f"invariance/{seed}")
        self.passing = 0
        self.placement_variant = False  # seen: batch comparisons of paged cases prove nothing
        self.unsteady = False  # a rerun changed bits: no other comparison proves anything
        self.found: set[str] = set()  # properties with a finding (their sightings need no
        # confirmation)

    def enforced(self, prop: str) -> bool:
        """Whether a violation of ``prop`` is a finding (claimed, or stale state)."""
        return prop == "stateless" or prop in self.claims

    # --- planning ---------------------------------------------------------------------------

    def plan(self, cases: Sequence[CaseSpec], digests: Sequence[str], slot: int | None,
             recent: Sequence[CaseSpec], spent: tuple[float, float] = (0.0, 0.0)
             ) -> Check | None:
        """A check of a pack whose every case passed, or None (not this one). ``spent``:
        the workers' seconds on checks and on exploration so far."""
        if not self.active or not cases or not all(digests):
            return None
        self.passing += 1
        if self.passing % self.every:
            return None
        if spent[0] > self.share * spent[1]:
            self.postponed += 1
            self.passing -= 1  # due again at the next passing pack
            return None
        index = self.random.randrange(len(cases))
        variants = self.variants(list(cases), index, slot, recent)
        if len(variants) < 2:
            return None
        return Check(list(cases), index, digests[index], variants, slot)

    def variants(self, cases: list[CaseSpec], index: int, slot: int | None,
                 recent: Sequence[CaseSpec]) -> list[Variant]:
        subject = cases[index]
        if not self._runs([subject], slot):
            return []  # alone, it would need a kernel the worker has not compiled
        other = self._other_configuration(subject, slot, recent)
        found = [Variant(ALONE, (subject,), 0),
                  Variant(AGAIN, (subject,), 0, ALONE, "deterministic")]
        paged = subject.page_size is not None
        if paged and self.active & {"placement_invariant", "batch_invariant"}:
            mirrored = subject.with_changes(placement=MIRROR)
            if self.accepts(mirrored):
                found.append(Variant(MIRRORED, (mirrored,), 0, ALONE, "placement_invariant"))
        if "batch_invariant" in self.active and not (paged and self.placement_variant):
            neighbour = self._neighbour(cases, index)
            if neighbour is not None and self._runs([neighbour, subject], slot):
                found.append(Variant(f"after a neighbour ({_describe(neighbour)})",
                                     (neighbour, subject), 1, ALONE, "batch_invariant"))
        if "stateless" in self.active:
            layout = self._other_layout(subject, slot)
            history = [Variant(OTHER_CONFIG, (other,), None)] if other is not None else []
            if layout is not None:
                history.append(Variant(OTHER_LAYOUT, (layout,), None))
            if history:
                found += [*history, Variant(AFTER, (subject,), 0, ALONE, "stateless")]
        return found

    def _runs(self, cases: list[CaseSpec], slot: int | None) -> bool:
        """Whether the target takes these cases as one batch without compiling."""
        try:
            spec = pack(cases)[0] if len(cases) > 1 else cases[0]
        except ValueError:
            return False
        return self.accepts(spec) and self.compiled(spec, slot)

    def _other_configuration(self, subject: CaseSpec, slot: int | None,
                             recent: Sequence[CaseSpec]) -> CaseSpec | None:
        """A case of another configuration the worker already runs, or the subject in
        another dtype (or head dim)."""
        mine = configuration(subject)
        for spec in sorted((s for s in recent if configuration(s) != mine),
                           key=lambda s: s.total_k):  # the smallest: it only has to run
            first = _changed(spec, requests=[_request(r, r.ranges) for r in _seeded(spec)
                                             if r.query_len][:1])
            for candidate in (first, spec):
                if candidate is not None and self._runs([candidate], slot):
                    return candidate
        changes: list[dict[str, Any]] = [{"dtype": d} for d in DTYPES if d != subject.dtype]
        changes += [{"head_dim": subject.head_dim * 2}, {"head_dim": subject.head_dim // 2}]
        for change in changes:
            candidate = _changed(subject, **change)
            if candidate is not None and self._runs([candidate], slot):
                return candidate
        return None

    def _other_layout(self, subject: CaseSpec, slot: int | None) -> CaseSpec | None:
        """The subject's shapes (every tensor, every request's lengths) with another mask:
        its images taken away, or an image over each chunk, or a one-token window."""
        candidates = []
        if any(r.ranges for r in subject.requests):
            candidates.append(_changed(subject, requests=[_request(r, ()) for r in
                                                           _seeded(subject)]))
        imaged = [_request(r, ((r.context_len, r.seq_len - 1),) if r.query_len > 1 else ())
                  for r in _seeded(subject)]
        if any(r["ranges"] for r in imaged):
            candidates.append(_changed(subject, requests=imaged, sliding_window=None,
                                       clamp_ranges_to_window=False))
        if subject.sliding_window is None:
            candidates.append(_changed(subject, sliding_window=1))
        else:
            candidates.append(_changed(subject, sliding_window=None,
                                       clamp_ranges_to_window=False))
        for candidate in candidates:
            if candidate is not None and self._runs([candidate], slot):
                return candidate
        return None

    def _neighbour(self, cases: list[CaseSpec], index: int) -> CaseSpec | None:
        """The smallest other case of the pack, or the subject's layout with other values."""
        if len(cases) > 1:
            return min((c for i, c in enumerate(cases) if i != index), key=lambda c: c.total_k)
        subject = cases[index]
        return _changed(subject, seed=request_stream(subject.seed, 1 << 20), requests=[
            {k: v for k, v in _request(r, r.ranges).items() if k != "seed"}
            for r in subject.requests])

    # --- results ----------------------------------------------------------------------------

    def examine(self, check: Check, comparison: Comparison) -> Examined:
        """Measure what the comparison shows; ask for a confirmation of what a finding would
        need; read a confirmation into violations (or into failing cases)."""
        examined = Examined()
        differences = comparison.differences
        reruns = [d for d in differences if d.property == "deterministic"]
        self.unsteady |= any(d.differs for d in reruns)
        steady = bool(reruns) and not self.unsteady
        placement = next((d for d in differences if d.property == "placement_invariant"),
                         None)
        moved = placement is not None and placement.differs
        self.placement_variant |= moved
        paged = check.subject.page_size is not None
        suspects: list[Difference] = []
        for difference in differences:
            prop = difference.property
            if prop != "deterministic" and not steady:
                self.measures[prop].confounded += not check.confirm
                continue
            if prop == "batch_invariant" and paged and (placement is None or moved):
                self.measures[prop].confounded += not check.confirm  # the pages moved too
                continue
            if prop in self.active and not check.confirm:
                self.measures[prop].add(difference)
            if difference.differs:
                suspects.append(difference)
        if check.confirm:
            examined.violations, examined.failing = self._read_confirmation(
                check, comparison, suspects)
            return examined
        in_pack = self._in_pack(check, comparison, steady, paged, placement)
        if in_pack is not None:
            suspects.append(in_pack)
        new = [d for d in suspects if self.enforced(d.property)]
        if any(d.property not in self.found for d in new):
            examined.confirm = self._confirmation(check, in_pack is not None)
        else:  # a known finding: a sighting, with nothing new to confirm
            examined.sightings = sorted({d.property for d in new})
        return examined

    def _in_pack(self, check: Check, comparison: Comparison, steady: bool, paged: bool,
                 placement: Difference | None) -> Difference | None:
        """The subject in the explored pack against alone, by digest (a pack of one: the same
        case in another history)."""
        alone = comparison.run(ALONE)
        if alone is None or not alone.digest or not steady:
            return None
        prop = "batch_invariant" if len(check.cases) > 1 else "stateless"
        if prop not in self.active:
            return None
        if prop == "batch_invariant" and paged and (placement is None or placement.differs):
            self.measures[prop].confounded += 1  # the pack put its pages elsewhere
            return None
        if alone.digest == check.digest:
            self.measures[prop].agreed()
            return None
        return Difference(ALONE, IN_PACK, prop)

    def _confirmation(self, check: Check, in_pack: bool) -> Check:
        """The check's variants again, judged, the case alone run more often (a rerun that
        happens to agree proves little); led by the pack itself when the pack's digest
        differed from the case alone."""
        other = next((v for v in check.variants if v.name == OTHER_CONFIG), None)
        variants = [replace(other, name=FLUSH)] if other is not None else []
        for variant in check.variants:
            variants.append(variant)
            if variant.name == AGAIN:
                variants += [replace(variant, name=f"{AGAIN} ({n})")
                             for n in range(2, CONFIRM_RERUNS + 2)]
        if in_pack:
            position = f"{IN_PACK} (case {check.index} of {len(check.cases)})"
            prop = "batch_invariant" if len(check.cases) > 1 else "stateless"
            lead = [Variant(position, tuple(check.cases), check.index),
                    *(Variant(f"{IN_PACK_AGAIN} ({n})" if n else IN_PACK_AGAIN,
                              tuple(check.cases), check.index, position, "deterministic")
                      for n in range(CONFIRM_RERUNS))]
            variants = [*lead, *(replace(v, against=position, property=prop)
                                 if v.name == ALONE else v for v in variants)]
        return Check(check.cases, check.index, check.digest, variants, check.slot, confirm=True)

    def _read_confirmation(self, check: Check, comparison: Comparison,
                           suspects: list[Difference]
                           ) -> tuple[list[Violation], list[list[CaseSpec]]]:
        """Violations of enforced properties; or, where a run on a case of its own (alone,
        mirrored, beside a neighbour, in the pack) fails the tolerance check, that run's
        cases, to be judged and triaged as any failing case."""
        by_name = {v.name: v for v in check.variants}
        failing = {}
        for run in comparison.runs:
            variant = by_name[run.name]
            own = variant.property in ("", "batch_invariant", "placement_invariant")
            if own and variant.subject is not None and run.passed is False:
                failing["|".join(c.to_json() for c in variant.cases)] = list(variant.cases)
        if failing:
            return [], list(failing.values())
        for difference in comparison.differences:  # differences seen only by digest, counted
            if difference.against.startswith(IN_PACK) and difference.variant == ALONE and (
                    difference in suspects or not difference.differs):
                self.measures[difference.property].add(difference)
        violations: dict[str, Violation] = {}
        for difference in suspects:
            prop = difference.property
            if prop in violations or not self.enforced(prop):
                continue
            runs = [comparison.run(difference.against), comparison.run(difference.variant)]
            violations[prop] = Violation(prop, difference, _needed(check.variants, difference),
                                         check.subject, _tolerance_words(runs))
        return list(violations.values()), []


def _needed(variants: list[Variant], difference: Difference) -> list[Variant]:
    """The variants a reproducer of ``difference`` runs: everything up to the variant that
    differs (the history is part of a stale-state finding), as ran."""
    names = [v.name for v in variants]
    return variants[:names.index(difference.variant) + 1]


def _tolerance_words(runs: list[Any]) -> str:
    judged = [r for r in runs if r is not None and r.passed is not None]
    if not judged:
        return "not judged"
    if all(r.passed for r in judged):
        return "each within tolerance"
    failed = [f"'{r.name}'" for r in judged if not r.passed]
    return f"{' and '.join(failed)} also fails the tolerance check"


def _describe(spec: CaseSpec) -> str:
    lengths = ", ".join(f"{r.context_len}+{r.query_len}" for r in spec.requests)
    return f"{len(spec.requests)} request{'s' if len(spec.requests) > 1 else ''}: {lengths}"


def _request(r: Request, ranges: Sequence[tuple[int, int]]) -> dict[str, Any]:
    data: dict[str, Any] = {"context_len": r.context_len, "query_len": r.query_len,
                            "ranges": [list(x) for x in ranges]}
    if r.seed is not None:
        data["seed"] = r.seed
    return data


def _changed(spec: CaseSpec, **changes: Any) -> CaseSpec | None:
    """``spec`` with fields changed, each request keeping its value stream (requests given
    in ``changes`` say their own: build them from :func:`_seeded`), or None where that is
    not a valid case."""
    data = without_annotations(replace(spec, requests=with_explicit_seeds(spec))).to_dict()
    try:
        return parse_case({**data, **changes})
    except CaseError:
        return None


def _seeded(spec: CaseSpec) -> tuple[Request, ...]:
    return with_explicit_seeds(spec)
