"""Compile-aware case streams: a small pool of configurations, many layouts each.

FA4 and Triton compile a kernel per configuration (dtype, heads, head dims, pages,
softcap, ...), and a case drawn at random is nearly always a new one: a stream that
draws configuration and layout together spends its time compiling. Here each of a few
configurations serves a quota of cases (it grows with the measured compile time, so
compiling stays a bounded share of the target's time) before a fresh one replaces it,
and the cases of one configuration come in packs that share the batch-wide options, so
a worker can judge a pack in one kernel call (docs/design.md).

Hypothesis draws everything (the strategies of :mod:`fuzz.cases.strategies`), seeded from the
stream's seed, so a run is repeatable; draws a target declines anyway are counted.
Hypothesis' own provider also mixes in literals it collects from whatever local modules
are loaded at the time (within a time limit), so the same seed would draw other cases
after an import, in a thread, or under pytest; the stream's provider leaves them out,
and a seed names one stream.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Phase, Verbosity, given, seed, settings
from hypothesis import strategies as st
from hypothesis.internal.conjecture.providers import AVAILABLE_PROVIDERS, HypothesisProvider

from prefix_referee.fuzz.cases.strategies import Space, config_dicts, fresh_pack_dicts, pack_dicts
from prefix_referee.verify.case import CaseError, CaseSpec, parse_case

# Configurations in the pool at once, and the cases each serves by default and at most.
POOL = 3
QUOTA, MIN_QUOTA, MAX_QUOTA = 64, 16, 4096
# A new configuration may cost about this share of the time its cases take.
COMPILE_SHARE = 0.2
# Packs drawn at once for a configuration, and configurations per draw (each Hypothesis
# run costs milliseconds to set up: draw many values per run).
PACKS_PER_DRAW = 16
CONFIGS_PER_DRAW = 32
BACKEND = "prefix-referee-stream"


class _SeededOnly(HypothesisProvider):
    """Hypothesis' provider, drawing from its seed alone (no constants from loaded code).

    ``_maybe_draw_constant`` is private to Hypothesis (since 6.131.1; the range tested is in
    pyproject.toml): tests/test_hypothesis_hook.py fails if a release renames, removes or
    re-signs it, or stops calling it for integer draws.
    """

    def _maybe_draw_constant(self, *args: Any, **kwargs: Any) -> None:
        return None


AVAILABLE_PROVIDERS[BACKEND] = _SeededOnly


def draw_examples(strategy: st.SearchStrategy[Any], count: int, stream_seed: int) -> list[Any]:
    """``count`` values of ``strategy`` (fewer if its space is smaller), repeatably.

    Hypothesis opens every run with its simplest value; a stream makes many runs, so that
    value is left out (it would be judged once per configuration, in a pack of its own).
    """
    found: list[Any] = []

    @settings(max_examples=count + 1, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
              print_blob=False, backend=BACKEND)
    @seed(stream_seed)
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found[1:] if len(found) > 1 else found


@dataclass
class _Slot:
    space: Space
    config: dict[str, Any]
    quota: int = QUOTA
    used: int = 0
    packs: list[list[CaseSpec]] = field(default_factory=list)


class CaseStream:
    """Packs of cases for one target: ``next_pack()`` gives cases sharing a configuration
    and options, at most ``pack_cases`` of them and ``pack_tokens`` keys in all.

    ``pooled``: the target compiles per configuration, so a small pool of configurations
    serves many cases each; otherwise every pack has a fresh configuration and a drawn
    size (1 to ``pack_cases``), so a bug that needs one GQA ratio or page size meets it
    within a few dozen cases.
    """

    def __init__(self, spaces: list[Space], declines: Callable[[CaseSpec], str | None],
                 stream_seed: int, *, pack_cases: int, pack_tokens: int,
                 pooled: bool = True) -> None:
        self.spaces = spaces
        self.declines = declines
        self.pack_cases, self.pack_tokens = pack_cases, pack_tokens
        self.pooled = pooled
        self._fresh: list[list[CaseSpec]] = []
        self.random = random.Random(stream_seed)
        self.declined: Counter[str] = Counter()
        self.drawn = 0
        self._seen: set[str] = set()
        self._slots: list[_Slot] = []
        self._turn = 0
        self._configs: list[list[dict[str, Any]]] = [[] for _ in spaces]
        self._configs_drawn = 0
        self.quota = QUOTA

    def _seed(self) -> int:
        return self.random.randrange(2**32)

    def _new_slot(self) -> _Slot:
        """The next configuration, taking the spaces (a model's layer kinds) in turn."""
        index = self._configs_drawn % len(self.spaces)
        self._configs_drawn += 1
        if not self._configs[index]:
            configs = draw_examples(config_dicts(self.spaces[index]), CONFIGS_PER_DRAW,
                                    self._seed())
            self.random.shuffle(configs)
            self._configs[index] = configs
        return _Slot(self.spaces[index], self._configs[index].pop(), self.quota)

    def _refill(self, slot: _Slot) -> None:
        """Draw the packs the slot's quota still needs (at most ``PACKS_PER_DRAW``)."""
        wanted = -(-(slot.quota - slot.used) // self.pack_cases)
        for options, layouts in draw_examples(pack_dicts(slot.space, slot.config,
                                                         self.pack_cases),
                                              max(1, min(PACKS_PER_DRAW, wanted)),
                                              self._seed()):
            slot.packs += self._split([self._case(slot.config, options, layout)
                                       for layout in layouts])

    def _split(self, specs: list[CaseSpec | None]) -> list[list[CaseSpec]]:
        """The drawn cases (None: declined) in packs of at most ``pack_tokens`` keys."""
        packs: list[list[CaseSpec]] = []
        pack: list[CaseSpec] = []
        for spec in specs:
            if spec is None:
                continue
            if pack and sum(s.total_k for s in pack) + spec.total_k > self.pack_tokens:
                packs.append(pack)
                pack = []
            pack.append(spec)
        return [*packs, pack] if pack else packs

    def _case(self, config: dict[str, Any], options: dict[str, Any], layout: dict[str, Any]
              ) -> CaseSpec | None:
        self.drawn += 1
        try:
            spec = parse_case({**layout, **config, **options})
        except CaseError as exc:  # a strategy bug, counted rather than hidden
            self.declined[f"invalid: {exc}"] += 1
            return None
        key = spec.to_json()
        if key in self._seen:
            return None
        self._seen.add(key)
        reason = self.declines(spec)
        if reason:
            self.declined[reason] += 1
            return None
        return spec

    def next_pack(self) -> list[CaseSpec]:
        """The next pack (never empty; raises RuntimeError if nothing can be drawn)."""
        if not self.pooled:
            return self._fresh_pack()
        for _ in range(64):
            while len(self._slots) < POOL:
                self._slots.append(self._new_slot())
            self._turn = (self._turn + 1) % len(self._slots)
            slot = self._slots[self._turn]
            if slot.used >= slot.quota:
                self._slots[self._turn] = slot = self._new_slot()
            if not slot.packs:
                self._refill(slot)
            if slot.packs:
                pack = slot.packs.pop(0)
                slot.used += len(pack)
                return pack
            slot.used = slot.quota  # nothing new in this configuration: replace it
        raise self._exhausted()

    def _fresh_pack(self) -> list[CaseSpec]:
        """A pack with a configuration of its own, taking the spaces in turn."""
        for _ in range(64):
            if not self._fresh:
                index = self._configs_drawn % len(self.spaces)
                self._configs_drawn += 1
                for config, options, layouts in draw_examples(
                        fresh_pack_dicts(self.spaces[index], self.pack_cases), PACKS_PER_DRAW,
                        self._seed()):
                    self._fresh += self._split([self._case(config, options, layout)
                                                for layout in layouts])
            if self._fresh:
                return self._fresh.pop(0)
        raise self._exhausted()

    def _exhausted(self) -> RuntimeError:
        return RuntimeError("the space yields no new case the target accepts "
                            f"(declined: {dict(self.declined.most_common(3))})")

    def compiled(self, seconds: float, seconds_per_case: float) -> None:
        """A configuration compiled in ``seconds``: size the quotas so that compiling stays
        about ``COMPILE_SHARE`` of the time its cases take. Quotas only grow: a slot never
        loses the packs it has drawn."""
        if seconds_per_case <= 0:
            return
        quota = seconds / seconds_per_case * (1 - COMPILE_SHARE) / COMPILE_SHARE
        self.quota = max(self.quota, min(MAX_QUOTA, int(quota)))
        for slot in self._slots:
            slot.quota = max(slot.quota, self.quota)
