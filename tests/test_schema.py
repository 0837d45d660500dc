"""verify/case.schema.json against verify/case.py: the files the suite ships and the cases it
draws validate, invalid cases are rejected by both, and the schema's fields, enums and bounds
are the case model's (so the two cannot drift apart). docs/contract.md describes both."""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings

from prefix_referee.fuzz.cases.models import MODELS
from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    CPU_SPACE,
    GPU_SPACE,
    case_dicts,
    cases,
)
from prefix_referee.golden import FINDINGS_DIR, GOLDEN_DIR
from prefix_referee.verify.case import (
    ANNOTATION_KEYS,
    DTYPES,
    FORMAT_VERSION,
    KV_DTYPES,
    KV_SCALES,
    POISONS,
    RANGE_PADDINGS,
    RENAMED_KEYS,
    VALUE_DISTRIBUTIONS,
    CaseError,
    CaseSpec,
    Request,
    parse_case,
)
from prefix_referee.verify.limits import DEFAULT_LIMITS, MAX_INT32, MAX_MAGNITUDE, MAX_SEED

jsonschema = pytest.importorskip("jsonschema")

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "verify" / "case.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

CASE_FILES = sorted(GOLDEN_DIR.glob("*.json")) + sorted(FINDINGS_DIR.glob("*.json"))

VALID: dict[str, Any] = {
    "format": 3,
    "requests": [{"context_len": 4, "query_len": 6, "ranges": [[2, 5], [8, 13]]},
                 {"context_len": 5, "query_len": 1, "ranges": []}],
    "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "bfloat16",
    "page_size": 4, "sliding_window": None, "clamp_ranges_to_window": False,
    "softcap": None, "softmax_scale": None, "seed": 7, "page_table_slack": 1,
    "range_padding": "zero", "note": "the worked example of docs/contract.md",
}


def schema_errors(data: Any) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(data)]


def _with(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def _request(**changes: Any) -> dict[str, Any]:
    return _with(requests=[{"context_len": 0, "query_len": 8, "ranges": [[1, 3]], **changes}])


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_worked_example_of_the_contract_validates() -> None:
    assert schema_errors(VALID) == []
    assert parse_case(VALID).to_dict() == VALID


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_golden_file_and_finding_validates(path: Path) -> None:
    data = json.loads(path.read_bytes())
    assert schema_errors(data) == []
    parse_case(data)


def test_golden_files_are_found() -> None:
    assert any(p.name.startswith("fault-") for p in CASE_FILES)
    assert any(p.parent == FINDINGS_DIR for p in CASE_FILES)


@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=list(ADVERSARIAL_CASES))
def test_adversarial_cases_validate(spec: CaseSpec) -> None:
    assert schema_errors(spec.to_dict()) == []


@settings(max_examples=30, deadline=None)
@given(spec=cases(CPU_SPACE))
def test_drawn_cases_validate(spec: CaseSpec) -> None:
    assert schema_errors(spec.to_dict()) == []
    assert schema_errors(json.loads(spec.to_json())) == []


@settings(max_examples=15, deadline=None)
@given(data=case_dicts(GPU_SPACE.narrowed(overlapping_ranges=True)))
def test_drawn_dicts_with_overlapping_ranges_validate(data: dict[str, Any]) -> None:
    """The strategy's raw dicts (nulls included) validate as they are, and so does the spec."""
    assert schema_errors(data) == []
    assert schema_errors(parse_case(data).to_dict()) == []


@settings(max_examples=10, deadline=None)
@given(spec=cases(CPU_SPACE.narrowed(kv_dtypes=KV_DTYPES)))
def test_drawn_fp8_cases_validate(spec: CaseSpec) -> None:
    assert schema_errors(spec.to_dict()) == []


@settings(max_examples=10, deadline=None)
@given(spec=cases(MODELS["gemma4-31b"].spaces(CPU_SPACE)[1]))
def test_drawn_model_preset_cases_validate(spec: CaseSpec) -> None:
    assert schema_errors(spec.to_dict()) == []


# Rejected by the schema and by verify/case.py alike.
INVALID = {
    "unknown key": _with(images=[[0, 3]]),
    "unknown request key": _request(images=[]),
    "negative query_len": _request(query_len=-1),
    "negative context_len": _request(context_len=-3),
    "fractional query_len": _request(query_len=2.5),
    "missing query_len": _with(requests=[{"context_len": 3}]),
    "null query_len": _request(query_len=None),
    "format past the current": _with(format=FORMAT_VERSION + 1),
    "format 0": _with(format=0),
    "format true": _with(format=True),
    "wrong dtype": _with(dtype="float64"),
    "missing dtype": {k: v for k, v in VALID.items() if k != "dtype"},
    "no requests": _with(requests=[]),
    "requests not a list": _with(requests={"query_len": 1}),
    "zero heads": _with(num_heads=0),
    "boolean heads": _with(num_heads=True),
    "too many heads": _with(num_heads=DEFAULT_LIMITS.max_heads + 1),
    "head_dim too large": _with(head_dim=DEFAULT_LIMITS.max_head_dim + 1),
    "page_size 0": _with(page_size=0),
    "window 0": _with(sliding_window=0),
    "range of three": _request(ranges=[[1, 2, 3]]),
    "negative range start": _request(ranges=[[-1, 3]]),
    "range end past int32": _request(ranges=[[0, MAX_INT32 + 1]]),
    "ranges null": _request(ranges=None),
    "ranges a string": _request(ranges="1-3"),
    "softcap 0": _with(softcap=0),
    "softcap too large": _with(softcap=MAX_MAGNITUDE * 2),
    "softcap a string": _with(softcap="30"),
    "scale negative": _with(softmax_scale=-0.5),
    "clamp a string": _with(clamp_ranges_to_window="yes"),
    "clamp null": _with(clamp_ranges_to_window=None),
    "seed null": _with(seed=None),
    "seed negative": _with(seed=-1),
    "seed past int64": _with(seed=MAX_SEED + 1),
    "request seed negative": _request(seed=-2),
    "value distribution": _with(value_distribution="uniform"),
    "value distribution by its former name": _with(value_profile="uniform"),
    "value distribution under both names": _with(value_profile="peaky",
                                                 value_distribution="peaky"),
    "poison": _with(poison="zero"),
    "range padding": _with(range_padding="positive"),
    "kv dtype": _with(kv_dtype="int8"),
    "kv scale": _with(kv_dtype="float8_e4m3fn", kv_scale="channel"),
    "kv scale null": _with(kv_dtype="float8_e4m3fn", kv_scale=None),
    "slack too large": _with(page_table_slack=DEFAULT_LIMITS.max_page_table_slack + 1),
    "too many ranges": _request(ranges=[[2 * i, 2 * i] for i in range(
        DEFAULT_LIMITS.max_ranges_per_request + 1)]),
}


@pytest.mark.parametrize("data", INVALID.values(), ids=list(INVALID))
def test_invalid_cases_are_rejected_by_the_schema_and_the_case_model(data: dict) -> None:
    assert schema_errors(data), "the schema accepted it"
    with pytest.raises(CaseError):
        parse_case(data)


# What only verify/case.py checks (docs/contract.md lists these rules).
CROSS_FIELD = {
    "overlapping ranges": _request(ranges=[[1, 5], [4, 6]]),
    "start after end": _request(ranges=[[5, 2]]),
    "num_kv_heads does not divide num_heads": _with(num_heads=6, num_kv_heads=4),
    "clamp without a window": _with(clamp_ranges_to_window=True),
    "kv_scale without a kv_dtype": _with(kv_scale="head"),
    "sequence past int32": _request(context_len=MAX_INT32, query_len=1),
    "total keys over the limit": _request(query_len=DEFAULT_LIMITS.max_total_tokens + 1),
    # JSON Schema counts 4.0 as an integer; verify/case.py wants a JSON integer.
    "integral float": _with(num_heads=4.0),
}


@pytest.mark.parametrize("data", CROSS_FIELD.values(), ids=list(CROSS_FIELD))
def test_cross_field_rules_are_the_case_models(data: dict) -> None:
    assert schema_errors(data) == []
    with pytest.raises(CaseError):
        parse_case(data)


def test_schema_fields_are_the_case_models() -> None:
    """Top-level properties = CaseSpec's fields + format + annotations + former names;
    request properties = Request's fields; annotations are described as such."""
    case_fields = {f.name for f in fields(CaseSpec)} - {"extra"} | {"format"}
    assert set(SCHEMA["properties"]) == case_fields | ANNOTATION_KEYS | set(RENAMED_KEYS)
    assert set(RENAMED_KEYS.values()) <= case_fields
    assert not case_fields & ANNOTATION_KEYS
    annotations = {name for name, prop in SCHEMA["properties"].items()
                   if prop["description"].startswith("Annotation")}
    assert annotations == ANNOTATION_KEYS
    request = SCHEMA["$defs"]["request"]
    assert set(request["properties"]) == {f.name for f in fields(Request)}
    assert SCHEMA["additionalProperties"] is False
    assert request["additionalProperties"] is False


def test_schema_enums_and_bounds_are_the_case_models() -> None:
    props, defs = SCHEMA["properties"], SCHEMA["$defs"]
    assert props["format"]["enum"] == [*range(1, FORMAT_VERSION + 1), None]
    assert tuple(props["dtype"]["enum"]) == DTYPES
    assert tuple(props["value_distribution"]["enum"]) == VALUE_DISTRIBUTIONS
    for old, new in RENAMED_KEYS.items():
        assert props[old]["enum"] == props[new]["enum"], old
    assert tuple(props["poison"]["enum"]) == POISONS
    assert tuple(props["range_padding"]["enum"]) == RANGE_PADDINGS
    assert tuple(props["kv_dtype"]["enum"]) == (*KV_DTYPES, None)
    assert tuple(props["kv_scale"]["enum"]) == KV_SCALES
    limits = DEFAULT_LIMITS
    for name, maximum in [("num_heads", limits.max_heads), ("num_kv_heads", limits.max_heads),
                          ("head_dim", limits.max_head_dim),
                          ("head_dim_v", limits.max_head_dim),
                          ("page_size", limits.max_page_size),
                          ("sliding_window", MAX_INT32), ("seed", MAX_SEED),
                          ("page_table_slack", limits.max_page_table_slack),
                          ("placement", MAX_SEED),
                          ("softcap", MAX_MAGNITUDE), ("softmax_scale", MAX_MAGNITUDE)]:
        assert math.isclose(props[name]["maximum"], maximum), name
    assert props["requests"]["maxItems"] == limits.max_requests
    assert defs["request"]["properties"]["ranges"]["maxItems"] == limits.max_ranges_per_request
    assert defs["request"]["properties"]["seed"]["maximum"] == MAX_SEED
    assert defs["position"]["maximum"] == MAX_INT32


def test_written_cases_carry_the_current_format() -> None:
    spec = parse_case({k: v for k, v in VALID.items() if k != "format"})
    assert spec.to_dict()["format"] == FORMAT_VERSION
    assert schema_errors(spec.to_dict()) == []
