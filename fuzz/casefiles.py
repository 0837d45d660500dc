"""Cases for people: reproducer and golden files, and one-line descriptions.

Files are DESIGN.md case JSON plus annotations (target, diagnosis, bug_class,
expect, note), written one key and one request per line so that a diff or a
glance shows the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from verify.case import CaseSpec, without_annotations
from verify.runner import Outcome
from verify.targets.faults import FAULTS


def _value_json(value: Any) -> str:
    """Lists of objects and objects one item per line; everything else on one line."""
    if isinstance(value, Mapping) and value:
        items = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n  }"
    if isinstance(value, list) and value and all(isinstance(x, Mapping) for x in value):
        return "[\n" + ",\n".join(f"    {json.dumps(x)}" for x in value) + "\n  ]"
    return json.dumps(value)


def case_json(data: Mapping[str, Any]) -> str:
    """A case mapping as readable JSON text."""
    entries = [f"  {json.dumps(key)}: {_value_json(value)}" for key, value in data.items()]
    return "{\n" + ",\n".join(entries) + "\n}\n"


def _describe_request(context_len: int, query_len: int, ranges: tuple) -> str:
    spans = " ".join(f"[{s}, {e}]" for s, e in ranges)
    return f"{context_len}+{query_len}" + (f" {spans}" if spans else "")


def describe_case(spec: CaseSpec) -> str:
    """One line: the layout (context+query and ranges per request), then the options."""
    layout = "; ".join(_describe_request(r.context_len, r.query_len, r.ranges)
                       for r in spec.requests)
    parts = [f"{len(spec.requests)} req ({layout})", spec.dtype,
             f"{spec.num_heads}/{spec.num_kv_heads} heads",
             f"D {spec.head_dim}" + (f"/{spec.head_dim_v}" if spec.head_dim_v else "")]
    if spec.page_size is not None:
        parts.append(f"page {spec.page_size}")
    if spec.sliding_window is not None:
        clamp = " clamped" if spec.clamp_ranges_to_window else ""
        parts.append(f"window {spec.sliding_window}{clamp}")
    if spec.softcap is not None:
        parts.append(f"softcap {spec.softcap:g}")
    if spec.softmax_scale is not None:
        parts.append(f"scale {spec.softmax_scale:g}")
    if spec.value_profile != "normal":
        parts.append(spec.value_profile)
    if spec.poison != "finite":
        parts.append(f"{spec.poison} poison")
    if spec.allow_overlapping_ranges:
        parts.append("overlapping ranges")
    parts.append(f"seed {spec.seed}")
    return ", ".join(parts)


def bug_class(target: str) -> int | None:
    """The BUGS.md class of a planted fault target, None for any other target."""
    fault = FAULTS.get(target.removeprefix("fault:")) if target.startswith("fault:") else None
    return fault.bug_class if fault is not None else None


def reproducer_name(target: str, spec: CaseSpec) -> str:
    """A file name from the target and the case contents (same failure, same file)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", target)
    digest = hashlib.sha1(without_annotations(spec).to_json().encode()).hexdigest()[:8]
    return f"repro-{slug}-{digest}.json"


def save_reproducer(spec: CaseSpec, outcome: Outcome, directory: Path) -> Path:
    """Write the failing case with its target and diagnosis; returns the file."""
    data = without_annotations(spec).to_dict()
    data["target"] = outcome.target
    data["diagnosis"] = outcome.summary()
    klass = bug_class(outcome.target)
    if klass is not None:
        data["bug_class"] = klass
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / reproducer_name(outcome.target, spec)
    path.write_text(case_json(data))
    return path
