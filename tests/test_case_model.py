"""The case model: JSON round trip, one-line validation errors, the materialized contract."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES, CPU_SPACE, case_dicts, cases
from prefix_referee.verify import CaseError, load_case, parse_case, read_case
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.limits import Limits
from prefix_referee.verify.materialize import FINITE_POISON, materialize

VALID = {"format": 3, "requests": [{"context_len": 0, "query_len": 37, "ranges": [[3, 20]]}],
         "num_heads": 4, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16",
         "page_size": 16, "sliding_window": None, "clamp_ranges_to_window": False,
         "softcap": None, "softmax_scale": None, "seed": 0}


@given(case_dicts())
def test_json_round_trip(data: dict) -> None:
    spec = parse_case(data)
    assert read_case(spec.to_json()) == spec
    assert parse_case(json.loads(json.dumps(spec.to_dict()))) == spec


@settings(max_examples=20)
@given(case_dicts(CPU_SPACE.narrowed(kv_dtypes=(None, *KV_DTYPES))))
def test_json_round_trip_with_an_fp8_cache(data: dict) -> None:
    spec = parse_case(data)
    assert read_case(spec.to_json()) == spec
    assert ("kv_dtype" in spec.to_dict()) == (spec.kv_dtype is not None)


def test_design_example_parses_and_writes_back_identically() -> None:
    assert parse_case(VALID).to_dict() == VALID


def _with(**changes: object) -> dict:
    return {**VALID, **changes}


@pytest.mark.parametrize("version", [1, 2, 3, None])
def test_the_former_name_value_profile_is_read_in_any_format(version: int | None) -> None:
    """value_profile (format 2 and before) is read as value_distribution; written never."""
    spec = parse_case(_with(format=version, value_profile="peaky"))
    assert spec == parse_case(_with(value_distribution="peaky"))
    assert spec.value_distribution == "peaky"
    written = spec.to_dict()
    assert written["format"] == 3 and written["value_distribution"] == "peaky"
    assert "value_profile" not in written
    assert spec.with_changes(value_profile="outliers").value_distribution == "outliers"


def _request(**changes: object) -> dict:
    return _with(requests=[{"context_len": 0, "query_len": 37, "ranges": [[3, 20]], **changes}])


@pytest.mark.parametrize(("data", "field", "says"), [
    (_request(context_len=-1), "requests[0].context_len", ">= 0"),
    (_request(query_len=-3), "requests[0].query_len", ">= 0"),
    (_request(query_len=2.5), "requests[0].query_len", "integer"),
    (_request(ranges=[[20, 3]]), "requests[0].ranges[0]", "start 20 > end 3"),
    (_request(ranges=[[-1, 3]]), "requests[0].ranges[0]", "negative"),
    (_request(ranges=[[0, 5], [5, 9]]), "requests[0].ranges[1]", "overlaps"),
    (_request(ranges=[[1, 2, 3]]), "requests[0].ranges[0]", "pair"),
    (_request(ranges="3-20"), "requests[0].ranges", "list"),
    (_request(images=[]), "requests[0].images", "unknown key"),
    (_with(requests=[]), "requests", "non-empty"),
    (_with(num_heads=6, num_kv_heads=4), "num_kv_heads", "does not divide"),
    (_with(num_heads=0), "num_heads", ">= 1"),
    (_with(dtype="float8"), "dtype", "one of"),
    (_with(page_size=0), "page_size", ">= 1"),
    (_with(sliding_window=0), "sliding_window", ">= 1"),
    (_with(clamp_ranges_to_window=True), "clamp_ranges_to_window", "needs a sliding_window"),
    (_with(softcap=-1.0), "softcap", "> 0"),
    (_with(softmax_scale=float("inf")), "softmax_scale", "finite"),
    (_with(seed=-1), "seed", "non-negative"),
    (_with(value_distribution="wild"), "value_distribution", "one of"),
    (_with(value_profile="wild"), "value_profile", "one of"),
    (_with(value_profile="peaky", value_distribution="peaky"), "value_profile", "former name"),
    (_with(poison="zero"), "poison", "one of"),
    (_with(head_dims=128), "head_dims", "unknown key"),
    (_with(allow_overlapping_ranges="yes"), "allow_overlapping_ranges", "true or false"),
    (_request(query_len=10**7), "requests", "more than the limit"),
    (_with(num_heads=10**6, num_kv_heads=1), "num_heads", "<= 256"),
    (_with(head_dim=10**5), "head_dim", "<= 1024"),
    (_with(seed=2**64), "seed", "below 2**63"),
    (_request(ranges=[[3, 2**31]]), "requests[0].ranges[0]", "overflows int32"),
    (_request(context_len=2**31 - 2, query_len=5), "requests[0].query_len", "overflows int32"),
    (_with(softcap=1e308), "softcap", "<= 10000"),
    (_with(softmax_scale=1e308), "softmax_scale", "<= 10000"),
    (_with(format=4), "format", "<= 3"),
    (_request(seed=-1), "requests[0].seed", ">= 0"),
    (_with(page_table_slack=-1), "page_table_slack", ">= 0"),
    (_with(range_padding="ones"), "range_padding", "one of"),
    (_with(kv_dtype="float8_e4m3fnuz"), "kv_dtype", "one of"),
    (_with(kv_dtype="float8_e4m3fn", kv_scale="row"), "kv_scale", "one of"),
    (_with(kv_scale="head"), "kv_scale", "needs a kv_dtype"),
])
def test_invalid_case_is_one_line_naming_the_field(data: dict, field: str, says: str) -> None:
    with pytest.raises(CaseError) as info:
        parse_case(data)
    message = str(info.value)
    assert message.startswith(f"{field}: ") and says in message and "\n" not in message


def test_overlap_allowed_when_the_case_says_so() -> None:
    spec = parse_case(_request(ranges=[[0, 5], [5, 9]]) | {"allow_overlapping_ranges": True})
    assert spec.requests[0].ranges == ((0, 5), (5, 9))


@pytest.mark.parametrize("source", ["{not json", "/no/such/case.json"])
def test_unreadable_source_is_a_case_error(source: str) -> None:
    with pytest.raises(CaseError, match=r"^case: "):
        read_case(source)


def test_read_case_from_file(tmp_path) -> None:
    path = tmp_path / "case.json"
    path.write_text(json.dumps(VALID))
    assert load_case(path).spec == parse_case(VALID)


@given(cases())
def test_materialized_contract(spec) -> None:
    case = materialize(spec)
    total_q, total_k = spec.total_q, spec.total_k
    h, hkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    assert case.q.shape == (total_q, h, d) and case.q.dtype == case.dtype
    assert case.k.shape == (total_k, hkv, d) and case.v.shape == (total_k, hkv, spec.value_dim)
    assert case.cu_seqlens_q.tolist() == [0, *torch.tensor(
        [r.query_len for r in spec.requests]).cumsum(0).tolist()]
    assert case.seqused_k.tolist() == [r.seq_len for r in spec.requests]
    assert case.query_ranges.shape == (total_q, 2) and case.query_ranges.dtype == torch.int32
    assert case.seq_ranges.shape[:1] == (len(spec.requests),)
    for t in (case.cu_seqlens_q, case.cu_seqlens_k, case.seqused_k, case.context_lens,
              case.query_lens, case.seq_ranges):
        assert t.dtype == torch.int32
    if spec.page_size is None:
        assert case.k_cache is None and case.page_table is None
    else:
        _assert_paged_cache_holds_packed_keys(case)


def _assert_paged_cache_holds_packed_keys(case) -> None:
    """Every owned slot holds the packed key; every other slot holds poison."""
    ps = case.page_size
    owned = torch.zeros(case.k_cache.shape[:2], dtype=torch.bool)
    for view in case.requests():
        j = torch.arange(view.seq_len)
        pages = case.page_table[view.index, j // ps].long()
        assert torch.equal(case.k_cache[pages, j % ps], case.k[view.k_slice])
        assert torch.equal(case.v_cache[pages, j % ps], case.v[view.k_slice])
        owned[pages, j % ps] = True
    spare = case.k_cache[~owned].float()
    if case.spec.poison == "nan":
        assert bool(spare.isnan().all())
    else:
        assert bool((spare == FINITE_POISON).all())
    assert not owned.all(), "a paged layout always has poisoned slots"


def test_materialization_is_deterministic_and_seeded() -> None:
    spec = ADVERSARIAL_CASES["tile_edges_17_and_16"]
    a, b = materialize(spec), materialize(spec)
    assert torch.equal(a.q, b.q) and torch.equal(a.k_cache, b.k_cache)
    assert torch.equal(a.page_table, b.page_table)
    assert not torch.equal(a.q, materialize(spec.with_changes(seed=spec.seed + 1)).q)


def test_query_ranges_mark_the_range_holding_each_query() -> None:
    case = load_case(_with(requests=[
        {"context_len": 4, "query_len": 6, "ranges": [[2, 5], [8, 8]]}]))
    assert case.query_ranges.tolist() == [[2, 5], [2, 5], [-1, -1], [-1, -1], [8, 8], [-1, -1]]
    overlapping = load_case(_with(allow_overlapping_ranges=True, requests=[
        {"query_len": 4, "ranges": [[0, 1], [1, 3]]}]))
    assert overlapping.query_ranges.tolist() == [[0, 1], [0, 3], [1, 3], [1, 3]]


def test_memory_is_checked_before_anything_is_allocated() -> None:
    big = _request(query_len=200_000) | {"num_heads": 64, "num_kv_heads": 8, "head_dim": 256}
    with pytest.raises(CaseError, match=r"^requests: needs about [0-9.]+ GiB to judge"):
        parse_case(big, Limits(max_bytes=8 << 30))
    assert parse_case(big).total_q == 200_000  # within the default limits


@pytest.mark.parametrize(("content", "says"), [
    (b'{"requests": \xc3\x28}', "not a text file"), (bytes(range(256)), "invalid JSON")])
def test_binary_files_are_one_line_errors(content: bytes, says: str, tmp_path) -> None:
    path = tmp_path / "case.json"
    path.write_bytes(content)
    with pytest.raises(CaseError, match=f"^case: {says}"):
        read_case(path)


def test_page_table_slack_points_at_poisoned_pages() -> None:
    spec = parse_case(_request(query_len=10) | {"page_size": 4, "page_table_slack": 3,
                                                "poison": "nan"})
    case = materialize(spec)
    pages = -(-spec.requests[0].seq_len // 4)
    assert case.page_table.shape == (1, pages + 3)
    for column in range(pages, pages + 3):
        assert case.k_cache[int(case.page_table[0, column])].isnan().all()


def test_range_padding_is_minus_one_or_zero() -> None:
    two = [{"query_len": 9, "ranges": [[1, 3], [5, 6]]}, {"query_len": 4, "ranges": [[0, 1]]}]
    negative = materialize(parse_case(_with(requests=two)))
    zero = materialize(parse_case(_with(requests=two, range_padding="zero")))
    assert negative.seq_ranges[1, 1].tolist() == [-1, -1]
    assert zero.seq_ranges[1, 1].tolist() == [0, 0]
    assert torch.equal(negative.query_ranges, zero.query_ranges)  # (-1, -1) outside ranges
