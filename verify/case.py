"""The JSON case: one batch of prefix-attention work, validated field by field.

A case is the unit every part of the suite exchanges (golden files, fuzz
reproducers, CLI input). Validation happens here, once, so that a bad case fails
with one line naming the field instead of a traceback from deep inside torch, and
sizes are bounded (:mod:`verify.limits`) before anything is allocated. The format is
docs/contract.md; ``verify/case.schema.json`` is its JSON Schema.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from prefix_referee.verify.limits import (
    DEFAULT_LIMITS,
    MAX_INT32,
    MAX_MAGNITUDE,
    MAX_SEED,
    WORKING_BYTES,
    Limits,
)

# 2: per-request seeds, counter-based values (the same bits on every device), page-table
# slack and range padding. 3: value_profile renamed value_distribution; an FP8 KV cache
# (kv_dtype, kv_scale). Files without "format" are read as the current format.
FORMAT_VERSION = 3
DTYPES = ("bfloat16", "float16", "float32")
# The KV cache's storage dtype when it is not the query dtype (docs/contract.md), and how
# finely its descales vary: one per tensor, or one per KV head.
KV_DTYPES = ("float8_e4m3fn", "float8_e5m2")
KV_SCALES = ("tensor", "head")
VALUE_DISTRIBUTIONS = ("normal", "peaky", "near_ties", "outliers")
POISONS = ("finite", "nan")
# How seq_ranges pads a request's ranges: (-1, -1), or (0, 0) as vLLM does (a one-token
# range at key 0, which adds nothing beyond causal).
RANGE_PADDINGS = ("negative", "zero")


class CaseError(ValueError):
    """An invalid case; the message is one line that starts with the field path."""


def _fail(path: str, message: str) -> CaseError:
    return CaseError(f"{path}: {message}")


@dataclass(frozen=True)
class Request:
    """One sequence: ``context_len`` cached keys, ``query_len`` new tokens, image ranges.

    Ranges are inclusive ``(start, end)`` pairs in absolute positions of the full
    sequence (cached prefix included); an end may reach past ``seq_len``.
    """

    context_len: int
    query_len: int
    ranges: tuple[tuple[int, int], ...] = ()
    seed: int | None = None  # its values' stream; None: derived from the case seed

    @property
    def seq_len(self) -> int:
        return self.context_len + self.query_len


@dataclass(frozen=True)
class CaseSpec:
    """A validated case (docs/contract.md). Build it with :func:`parse_case`."""

    requests: tuple[Request, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    page_size: int | None = None
    sliding_window: int | None = None
    clamp_ranges_to_window: bool = False
    softcap: float | None = None
    softmax_scale: float | None = None
    seed: int = 0
    head_dim_v: int | None = None
    allow_overlapping_ranges: bool = False
    value_distribution: str = "normal"
    poison: str = "finite"
    page_table_slack: int = 0
    range_padding: str = "negative"
    kv_dtype: str | None = None  # None: K/V in the query dtype
    kv_scale: str = "tensor"
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # Where the paged cache puts the same logical keys: 0 is the page order the seed gives;
    # another value mirrors or redraws it and refills the spare pages (verify/materialize.py).
    placement: int = 0

    @property
    def resolved_scale(self) -> float:
        return self.softmax_scale if self.softmax_scale is not None else self.head_dim**-0.5

    @property
    def value_dim(self) -> int:
        return self.head_dim_v if self.head_dim_v is not None else self.head_dim

    @property
    def total_q(self) -> int:
        return sum(r.query_len for r in self.requests)

    @property
    def total_k(self) -> int:
        return sum(r.seq_len for r in self.requests)

    @property
    def fp8_kv(self) -> bool:
        """Whether K/V are stored in an FP8 dtype with descales (``kv_dtype`` set)."""
        return self.kv_dtype is not None

    def estimated_bytes(self) -> int:
        """Memory to materialize and judge this case: inputs in their dtype (packed, paged
        and the target's copy), their float64 copies and outputs, plus working tiles. An
        FP8 cache takes one byte an element, and its dequantized copies in the query dtype
        (the baseline's, a dequantizing target's) come on top."""
        element = 4 if self.dtype == "float32" else 2
        query = self.total_q * self.num_heads * (self.head_dim + 3 * self.value_dim)
        keys = self.total_k * self.num_kv_heads * (self.head_dim + self.value_dim)
        per_key = 4 * element + 8 if not self.fp8_kv else 4 + 8 + 2 * element
        return query * (element + 8) + keys * per_key + WORKING_BYTES

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; optional keys at their defaults are left out."""
        out: dict[str, Any] = {"format": FORMAT_VERSION, "requests": [
            {"context_len": r.context_len, "query_len": r.query_len,
             "ranges": [list(rg) for rg in r.ranges]} | ({} if r.seed is None else {"seed": r.seed})
            for r in self.requests
        ]}
        for f in fields(self):
            if f.name in ("requests", "extra"):
                continue
            value = getattr(self, f.name)
            if f.name in _ALWAYS_WRITTEN or value != f.default:
                out[f.name] = value
        out.update(self.extra)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, separators=(", ", ": "))

    def with_changes(self, **changes: Any) -> CaseSpec:
        """A copy with some fields replaced (a field's former name works too), validated
        again."""
        changes = {RENAMED_KEYS.get(name, name): value for name, value in changes.items()}
        return parse_case({**self.to_dict(), **changes})


_ALWAYS_WRITTEN = frozenset({
    "num_heads", "num_kv_heads", "head_dim", "dtype", "page_size", "sliding_window",
    "clamp_ranges_to_window", "softcap", "softmax_scale", "seed",
})
_KNOWN_KEYS = frozenset(f.name for f in fields(CaseSpec)) - {"extra"} | {"format"}
# Keys read under an earlier name (in any format), and their current name; written never.
RENAMED_KEYS = {"value_profile": "value_distribution"}
_REQUEST_KEYS = ("context_len", "query_len", "ranges", "seed")
# Free-form annotations a reproducer may carry; they never change the computation.
ANNOTATION_KEYS = frozenset({"note", "diagnosis", "expect", "bug_class", "target", "finding",
                             "signature", "versions", "replay"})
# A reproducer of an invariance finding names the runs it compares (fuzz/loop/invariance.py).
ANNOTATION_KEYS |= {"invariance"}


def _int(data: Mapping[str, Any], key: str, path: str, *, minimum: int,
         maximum: int = MAX_INT32, default: int | None = None, required: bool = True
         ) -> int | None:
    if key not in data or data[key] is None:
        if required and default is None:
            raise _fail(f"{path}{key}", "is required")
        return default
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{path}{key}", f"must be an integer, got {value!r}")
    if value < minimum:
        raise _fail(f"{path}{key}", f"must be >= {minimum}, got {value}")
    if value > maximum:
        raise _fail(f"{path}{key}", f"must be <= {maximum}, got {value}")
    return value


def _float(data: Mapping[str, Any], key: str) -> float | None:
    """A positive finite number no larger than MAX_MAGNITUDE, or None."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(key, f"must be a finite number or null, got {value!r}")
    if not 0 < value <= MAX_MAGNITUDE:
        raise _fail(key, f"must be > 0 and <= {MAX_MAGNITUDE:g}, got {value:g}")
    return float(value)


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")
    return value


def _choice(data: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise _fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
    return value


def _given_name(data: Mapping[str, Any], key: str) -> str:
    """``key``, or its former name if the case uses that (errors name the key given)."""
    return next((old for old, new in RENAMED_KEYS.items() if new == key and old in data), key)


def _parse_ranges(raw: Any, path: str, allow_overlap: bool) -> tuple[tuple[int, int], ...]:
    if not isinstance(raw, (list, tuple)):
        raise _fail(path, f"must be a list of [start, end] pairs, got {raw!r}")
    ranges = []
    for k, pair in enumerate(raw):
        where = f"{path}[{k}]"
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2
                or any(isinstance(x, bool) or not isinstance(x, int) for x in pair)):
            raise _fail(where, f"must be an [start, end] pair of integers, got {pair!r}")
        s, e = pair
        if s < 0:
            raise _fail(where, f"start {s} is negative")
        if e > MAX_INT32:
            raise _fail(where, f"end {e} overflows int32 positions (max {MAX_INT32})")
        if s > e:
            raise _fail(where, f"start {s} > end {e} (ends are inclusive)")
        ranges.append((s, e))
    if not allow_overlap:
        order = sorted(range(len(ranges)), key=lambda k: ranges[k])
        for a, b in itertools.pairwise(order):
            if ranges[b][0] <= ranges[a][1]:
                raise _fail(f"{path}[{b}]", f"{list(ranges[b])} overlaps {list(ranges[a])}; "
                            "set allow_overlapping_ranges to take their union")
    return tuple(ranges)


def _request(raw: Any, r: int, allow_overlap: bool, limits: Limits) -> Request:
    path = f"requests[{r}]."
    if not isinstance(raw, Mapping):
        raise _fail(f"requests[{r}]", "must be an object")
    extra_keys = sorted(set(raw) - set(_REQUEST_KEYS))
    if extra_keys:
        raise _fail(f"{path}{extra_keys[0]}", f"unknown key (known: {', '.join(_REQUEST_KEYS)})")
    ranges = _parse_ranges(raw.get("ranges", []), f"{path}ranges", allow_overlap)
    if len(ranges) > limits.max_ranges_per_request:
        raise _fail(f"{path}ranges", f"{len(ranges)} ranges, more than the limit "
                    f"{limits.max_ranges_per_request}")
    request = Request(
        context_len=_int(raw, "context_len", path, minimum=0, default=0, required=False),
        query_len=_int(raw, "query_len", path, minimum=0),
        ranges=ranges,
        seed=_int(raw, "seed", path, minimum=0, maximum=MAX_SEED, required=False),
    )
    if request.seq_len > MAX_INT32:
        raise _fail(f"{path}query_len", f"context_len + query_len = {request.seq_len} overflows "
                    f"int32 positions (max {MAX_INT32})")
    return request


def _check_sizes(spec: CaseSpec, limits: Limits) -> None:
    """The limits that concern the whole case, largest first."""
    if len(spec.requests) > limits.max_requests:
        raise _fail("requests", f"{len(spec.requests)} requests, more than the limit "
                    f"{limits.max_requests}")
    if spec.total_k > limits.max_total_tokens:
        raise _fail("requests", f"{spec.total_k} tokens in all, more than the limit "
                    f"{limits.max_total_tokens}")
    if limits.max_bytes is not None and spec.estimated_bytes() > limits.max_bytes:
        raise _fail("requests", f"needs about {spec.estimated_bytes() / 2**30:.1f} GiB to judge, "
                    f"more than the {limits.max_bytes / 2**30:.1f} GiB this device allows")


def parse_case(data: Mapping[str, Any] | CaseSpec, limits: Limits = DEFAULT_LIMITS) -> CaseSpec:
    """Validate a JSON-like mapping into a :class:`CaseSpec` (raises :class:`CaseError`)."""
    if isinstance(data, CaseSpec):
        return data
    if not isinstance(data, Mapping):
        raise CaseError(f"case: must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _KNOWN_KEYS - ANNOTATION_KEYS - set(RENAMED_KEYS))
    if unknown:
        raise _fail(unknown[0], f"unknown key (known: {', '.join(sorted(_KNOWN_KEYS))})")
    for old, new in RENAMED_KEYS.items():
        if old in data and new in data:
            raise _fail(old, f"is the former name of {new}; give only {new}")
    _int(data, "format", "", minimum=1, maximum=FORMAT_VERSION, required=False)
    allow_overlap = _bool(data, "allow_overlapping_ranges")

    raw_requests = data.get("requests")
    if not isinstance(raw_requests, (list, tuple)) or not raw_requests:
        raise _fail("requests", "must be a non-empty list")
    if len(raw_requests) > limits.max_requests:
        raise _fail("requests", f"{len(raw_requests)} requests, more than the limit "
                    f"{limits.max_requests}")
    requests = tuple(_request(raw, r, allow_overlap, limits) for r, raw in enumerate(raw_requests))

    num_heads = _int(data, "num_heads", "", minimum=1, maximum=limits.max_heads)
    num_kv_heads = _int(data, "num_kv_heads", "", minimum=1, maximum=limits.max_heads,
                        default=num_heads, required=False)
    if num_heads % num_kv_heads:
        raise _fail("num_kv_heads", f"{num_kv_heads} does not divide num_heads {num_heads}")
    head_dim = _int(data, "head_dim", "", minimum=1, maximum=limits.max_head_dim)
    head_dim_v = _int(data, "head_dim_v", "", minimum=1, maximum=limits.max_head_dim,
                      required=False)
    dtype = data.get("dtype")
    if dtype not in DTYPES:
        raise _fail("dtype", f"must be one of {', '.join(DTYPES)}; got {dtype!r}")
    window = _int(data, "sliding_window", "", minimum=1, required=False)
    clamp = _bool(data, "clamp_ranges_to_window")
    if clamp and window is None:
        raise _fail("clamp_ranges_to_window", "needs a sliding_window")
    kv_dtype = data.get("kv_dtype")
    if kv_dtype is not None and kv_dtype not in KV_DTYPES:
        raise _fail("kv_dtype", f"must be one of {', '.join(KV_DTYPES)} or null (the query "
                    f"dtype); got {kv_dtype!r}")
    kv_scale = _choice(data, "kv_scale", KV_SCALES, "tensor")
    if kv_dtype is None and kv_scale != "tensor":
        raise _fail("kv_scale", "needs a kv_dtype (descales exist only for an FP8 cache)")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise _fail("seed", f"must be a non-negative integer below 2**63, got {seed!r}")

    spec = CaseSpec(
        requests=requests,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        page_size=_int(data, "page_size", "", minimum=1, maximum=limits.max_page_size,
                       required=False),
        sliding_window=window,
        clamp_ranges_to_window=clamp,
        softcap=_float(data, "softcap"),
        softmax_scale=_float(data, "softmax_scale"),
        seed=seed,
        head_dim_v=head_dim_v,
        allow_overlapping_ranges=allow_overlap,
        value_distribution=_choice(data, _given_name(data, "value_distribution"),
                                   VALUE_DISTRIBUTIONS, "normal"),
        poison=_choice(data, "poison", POISONS, "finite"),
        page_table_slack=_int(data, "page_table_slack", "", minimum=0,
                              maximum=limits.max_page_table_slack, default=0, required=False),
        range_padding=_choice(data, "range_padding", RANGE_PADDINGS, "negative"),
        kv_dtype=kv_dtype,
        kv_scale=kv_scale,
        extra={k: data[k] for k in ANNOTATION_KEYS if k in data},
    )
    placement = _int(data, "placement", "", minimum=0, maximum=MAX_SEED, default=0,
                     required=False)
    if placement:
        spec = replace(spec, placement=placement)
    _check_sizes(spec, limits)
    return spec


def read_case(source: str | Path | Mapping[str, Any] | CaseSpec,
              limits: Limits = DEFAULT_LIMITS) -> CaseSpec:
    """A case from a JSON file path, a JSON string, a mapping or a spec.

    Files may be UTF-8, UTF-16 or UTF-32 (JSON's encodings); anything else is a one-line
    :class:`CaseError`, as is a path that is not a readable file.
    """
    if isinstance(source, (CaseSpec, Mapping)):
        return parse_case(source, limits)
    text: str | bytes = str(source)
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise CaseError(f"case: no such file {str(source)!r}")
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise CaseError(f"case: cannot read {str(source)!r}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CaseError("case: not a text file (JSON must be UTF-8, UTF-16 or UTF-32)") from None
    except json.JSONDecodeError as exc:
        # exc.msg may end in "at" ("Unterminated string starting at"): the place follows.
        raise CaseError(f"case: invalid JSON ({exc.msg.removesuffix(' at')} at line "
                        f"{exc.lineno} column {exc.colno}; truncated?)") from None
    except RecursionError:
        raise CaseError("case: invalid JSON (nested too deeply)") from None
    return parse_case(data, limits)


def without_annotations(spec: CaseSpec) -> CaseSpec:
    """The spec without reproducer annotations (for comparing computations)."""
    return replace(spec, extra={})
