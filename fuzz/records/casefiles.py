"""Cases for people: reproducer and golden files, and one-line descriptions.

Files are case JSON (docs/contract.md) plus annotations (target, finding, diagnosis,
bug_class, versions, replay, expect, note), written one key and one request per line so
that a diff or a glance shows the layout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prefix_referee.fuzz.records.findings import Finding
from prefix_referee.fuzz.records.journal import write_atomically
from prefix_referee.verify.case import CaseSpec, without_annotations
from prefix_referee.verify.targets.faults import ALL_FAULTS

# The installed command (python -m fuzz in a checkout); the CLI's usage lines say it too.
COMMAND = "prefix-fuzz"


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
    if spec.value_distribution != "normal":
        parts.append(spec.value_distribution)
    if spec.poison != "finite":
        parts.append(f"{spec.poison} poison")
    if spec.allow_overlapping_ranges:
        parts.append("overlapping ranges")
    if spec.page_table_slack:
        parts.append(f"{spec.page_table_slack} slack page columns")
    if spec.range_padding != "negative":
        parts.append(f"{spec.range_padding} range padding")
    if spec.kv_dtype is not None:
        parts.append(f"{spec.kv_dtype} KV per-{spec.kv_scale} scales")
    parts.append(f"seed {spec.seed}")
    return ", ".join(parts)


def bug_class(target: str) -> int | None:
    """The bug class (docs/bugs.md) of a planted fault target, None for any other target."""
    fault = (ALL_FAULTS.get(target.removeprefix("fault:")) if target.startswith("fault:")
             else None)
    return fault.bug_class if fault is not None else None


def import_root(target: str) -> Path | None:
    """For a ``module:callable`` target, the directory its module was imported from."""
    if target.startswith("fault:") or ":" not in target:
        return None
    name = target.partition(":")[0]
    module = sys.modules.get(name)
    if (module is None or not getattr(module, "__file__", None)
            or name.partition(".")[0] == __name__.partition(".")[0]):
        return None  # the referee's own modules import wherever it does
    path = Path(module.__file__).resolve()
    depth = name.count(".") + (path.name == "__init__.py")  # the name it was imported by
    return path.parents[depth]


def relative(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter to paste)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def replay_command(target: str, path: Path) -> str:
    """The command that reruns a reproducer, with the PYTHONPATH its target needs."""
    root = import_root(target)
    prefix = f"PYTHONPATH={relative(root)} " if root is not None else ""
    return f"{prefix}{COMMAND} replay {relative(path)}"


def write_reproducer(finding: Finding, target: str, versions: dict[str, str | None]) -> Path:
    """Write ``finding``'s case with its target, identity, diagnosis and versions to its
    path (a reproducer is also an expected-findings file of one finding)."""
    data = without_annotations(finding.spec).to_dict()
    if "invariance" in finding.spec.extra:  # the runs a finding beyond tolerance compares
        data["invariance"] = finding.spec.extra["invariance"]
    data["target"] = target
    data["finding"] = finding.identity.to_json()
    data["diagnosis"] = f"{finding.words}\n{finding.outcome.summary()}"
    klass = bug_class(target)
    if klass is not None:
        data["bug_class"] = klass
    data["versions"] = versions
    data["replay"] = replay_command(target, finding.path)
    write_atomically(finding.path, case_json(data))
    return finding.path
