"""What a kernel under test accepts: cases outside it are not drawn, and skipped if given.

Capabilities are data, attached to a target (or to a ``module:callable`` through
:func:`verify.targets.prefix_kernel`), so an engine can state the limits its kernel
guarantees and the fuzzer draws inside them: an ``--examples N`` run judges N cases
instead of skipping half of them. The layout predicates are the documented list
:data:`LAYOUT_PREDICATES` (docs/contract.md explains each).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefix_referee.verify.case import DTYPES, KV_DTYPES, CaseSpec, Request

# Layout predicates a target may declare: name -> (what it requires, the check).
LayoutCheck = Callable[[CaseSpec, Request], bool]


def _ranges_within_sequence(spec: CaseSpec, r: Request) -> bool:
    return all(e < r.seq_len for _, e in r.ranges)


def _chunk_starts_outside_ranges(spec: CaseSpec, r: Request) -> bool:
    return not any(s < r.context_len <= e for s, e in r.ranges)


def _ranges_within_window(spec: CaseSpec, r: Request) -> bool:
    w = spec.sliding_window
    return w is None or spec.clamp_ranges_to_window or all(e - s + 1 <= w for s, e in r.ranges)


LAYOUT_PREDICATES: dict[str, tuple[str, LayoutCheck]] = {
    "ranges_within_sequence": (
        "every range ends before its request's sequence does (no range cut by the chunk end)",
        _ranges_within_sequence),
    "chunk_starts_outside_ranges": (
        "no chunk starts inside a range (cached context never ends inside an image)",
        _chunk_starts_outside_ranges),
    "ranges_within_window": (
        "without clamp_ranges_to_window, no range is longer than the sliding window",
        _ranges_within_window),
    "no_one_token_ranges": (
        "every range has at least two tokens (engines that skip start >= end ranges)",
        lambda spec, r: all(e > s for s, e in r.ranges)),
    "no_empty_requests": (
        "every request has at least one query token",
        lambda spec, r: r.query_len > 0),
    "decode_only": (
        "every request has at most one query token",
        lambda spec, r: r.query_len <= 1),
    "prefill_only": (
        "no request has cached context",
        lambda spec, r: r.context_len == 0),
    "clamped_windows": (
        "a sliding window always clamps the ranges too (clamp_ranges_to_window)",
        lambda spec, r: spec.sliding_window is None or spec.clamp_ranges_to_window),
}


# Properties beyond tolerance a target may claim (docs/semantics.md says exactly what each
# means); the fuzzer checks a claimed one and reports a violation as a finding.
CLAIMS = ("deterministic", "batch_invariant", "placement_invariant")


def _sorted(values: frozenset[int] | frozenset[str]) -> str:
    return ", ".join(map(str, sorted(values)))


@dataclass(frozen=True)
class Capabilities:
    """What a target accepts.

    Head dims: ``head_dims`` (a set) or ``head_dim_range`` with ``head_dim_multiple``;
    ``value_dims`` is ``"any"`` or ``"equal"`` (head_dim_v must equal head_dim). Pages:
    ``page_sizes`` (a set) and/or ``page_size_multiple``; ``needs_paged`` declines
    contiguous K/V (``page_size`` null). ``kv_dtypes``: the K/V storage dtypes taken,
    None for the query dtype (the default takes no FP8 cache: a kernel says it reads
    one). ``layout`` names predicates of :data:`LAYOUT_PREDICATES`;
    ``max_ranges_per_request`` bounds ranges per request; ``window_range`` bounds the
    sliding windows it takes. Claims beyond tolerance (:data:`CLAIMS`: ``deterministic``,
    ``batch_invariant``, ``placement_invariant``) hold on the device types of
    ``claimed_on``; the fuzzer checks each claimed one bitwise.
    """

    devices: frozenset[str] = frozenset({"cpu", "cuda"})
    dtypes: frozenset[str] = frozenset(DTYPES)
    kv_dtypes: frozenset[str | None] = frozenset({None})
    head_dims: frozenset[int] | None = None
    head_dim_range: tuple[int, int] | None = None  # inclusive
    head_dim_multiple: int = 1
    value_dims: str = "any"
    page_sizes: frozenset[int] | None = None
    page_size_multiple: int = 1
    needs_paged: bool = False
    sliding_window: bool = True
    softcap: bool = True
    lse: bool = True
    overlapping_ranges: bool = True
    max_total_tokens: int | None = None  # e.g. the Triton interpreter's practical limit
    max_ranges_per_request: int | None = None
    layout: frozenset[str] = frozenset()
    window_range: tuple[int, int] | None = None  # the smallest and largest sliding window
    deterministic: bool = False  # the same call twice gives the same bits
    batch_invariant: bool = False  # a request's bits do not depend on the rest of the batch
    placement_invariant: bool = False  # nor on which pages hold its KV, or on the spare pages
    claimed_on: frozenset[str] = frozenset({"cpu", "cuda"})  # where the claims hold

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layout) - set(LAYOUT_PREDICATES))
        if unknown:
            raise ValueError(f"unknown layout predicate {unknown[0]!r}; known: "
                             f"{', '.join(LAYOUT_PREDICATES)}")
        if self.value_dims not in ("any", "equal"):
            raise ValueError(f"value_dims must be 'any' or 'equal', got {self.value_dims!r}")
        if not set(self.kv_dtypes) <= {None, *KV_DTYPES}:
            raise ValueError(f"kv_dtypes must be among None, {', '.join(KV_DTYPES)}; got "
                             f"{sorted(map(str, self.kv_dtypes))}")
        if self.window_range is not None and not 1 <= self.window_range[0] <= self.window_range[1]:
            raise ValueError(f"window_range must be (smallest, largest) with 1 <= smallest <= "
                             f"largest, got {self.window_range!r}")

    def claims(self, device: str) -> frozenset[str]:
        """The properties of :data:`CLAIMS` this target claims on ``device`` (a device type)."""
        if device.split(":")[0] not in self.claimed_on:
            return frozenset()
        return frozenset(name for name in CLAIMS if getattr(self, name))

    def accepts_window(self, window: int | None) -> bool:
        if window is None or self.window_range is None:
            return True
        return self.window_range[0] <= window <= self.window_range[1]

    def accepts_head_dim(self, dim: int) -> bool:
        if self.head_dims is not None and dim not in self.head_dims:
            return False
        low, high = self.head_dim_range or (1, dim)
        return low <= dim <= high and dim % self.head_dim_multiple == 0

    def accepts_page_size(self, page_size: int | None) -> bool:
        if page_size is None:
            return not self.needs_paged
        return ((self.page_sizes is None or page_size in self.page_sizes)
                and page_size % self.page_size_multiple == 0)

    def _head_dims_text(self) -> str:
        parts = []
        if self.head_dims is not None:
            parts.append(f"one of {_sorted(self.head_dims)}")
        if self.head_dim_range is not None:
            parts.append(f"in {list(self.head_dim_range)}")
        if self.head_dim_multiple > 1:
            parts.append(f"a multiple of {self.head_dim_multiple}")
        return " and ".join(parts)

    def unsupported_reason(self, spec: CaseSpec, device: str) -> str | None:
        """Why this target cannot run ``spec`` on ``device``, or None."""
        page_text = ("paged KV only" if spec.page_size is None
                     else f"page sizes {_sorted(self.page_sizes) if self.page_sizes else 'any'}"
                          + (f", multiples of {self.page_size_multiple}"
                             if self.page_size_multiple > 1 else ""))
        checks = [
            (device not in self.devices, f"device {device} (runs on {_sorted(self.devices)})"),
            (spec.dtype not in self.dtypes, f"dtype {spec.dtype}"),
            (spec.kv_dtype not in self.kv_dtypes, f"kv_dtype {spec.kv_dtype} (takes "
             + ", ".join(d or "the query dtype" for d in sorted(self.kv_dtypes, key=str))
             + ")"),
            (not self.accepts_head_dim(spec.head_dim),
             f"head_dim {spec.head_dim} (takes {self._head_dims_text()})"),
            (spec.head_dim_v is not None and not self.accepts_head_dim(spec.value_dim),
             f"head_dim_v {spec.value_dim} (takes {self._head_dims_text()})"),
            (self.value_dims == "equal" and spec.value_dim != spec.head_dim,
             "head_dim_v != head_dim"),
            (not self.accepts_page_size(spec.page_size),
             f"page_size {spec.page_size} ({page_text})"),
            (not self.sliding_window and spec.sliding_window is not None, "sliding window"),
            (self.sliding_window and not self.accepts_window(spec.sliding_window),
             f"sliding_window {spec.sliding_window} (takes {list(self.window_range or ())})"),
            (not self.softcap and spec.softcap is not None, "softcap"),
            (not self.overlapping_ranges and spec.allow_overlapping_ranges, "overlapping ranges"),
            (self.max_total_tokens is not None and spec.total_k > self.max_total_tokens,
             f"{spec.total_k} keys > {self.max_total_tokens}"),
        ]
        for unsupported, what in checks:
            if unsupported:
                return f"unsupported: {what}"
        return self.layout_reason(spec)

    def layout_reason(self, spec: CaseSpec) -> str | None:
        """Which declared layout predicate ``spec`` breaks, or None."""
        for index, request in enumerate(spec.requests):
            if (self.max_ranges_per_request is not None
                    and len(request.ranges) > self.max_ranges_per_request):
                return (f"unsupported: request {index} has {len(request.ranges)} ranges "
                        f"(at most {self.max_ranges_per_request})")
            for name in sorted(self.layout):
                meaning, holds = LAYOUT_PREDICATES[name]
                if not holds(spec, request):
                    return f"unsupported: request {index} breaks {name} ({meaning})"
        return None
