"""The curated golden cases, and what writes golden/ from them (``python -m fuzz golden
--regenerate``).

Two kinds: one small case per planted fault, built so that the fault fails while
the exact engines pass, and the adversarial edge layouts of fuzz.cases.strategies.
Expectations come from intent, checked by running before anything is written:
every registered target passes every case it accepts (each claims to be exact, or,
for the two-call merge, to match its declared approximation; those that can run here are
run, the others are left for the machine that has them), and the fault a case was
built for fails. Every other planted fault that fails on a case is recorded as
well, so the golden set also pins which layouts catch which bug.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES, FP8_ADVERSARIAL_CASES
from prefix_referee.fuzz.records.casefiles import case_json, describe_case
from prefix_referee.verify.case import CaseSpec, parse_case
from prefix_referee.verify.materialize import materialize
from prefix_referee.verify.runner import Status, TruthCache, evaluate
from prefix_referee.verify.targets import Target, get_target, target_names
from prefix_referee.verify.targets.faults import FAULTS

_BASE = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "bfloat16",
         "page_size": None, "seed": 0}


class GoldenError(RuntimeError):
    """A curated case does not show what it was built to show."""


@dataclass(frozen=True)
class GoldenCase:
    name: str  # the file stem
    note: str
    spec: CaseSpec
    built_for: str | None = None  # the planted fault that must fail on it


def _fault_case(fault: str, note: str, requests: list[dict[str, Any]], **fields: Any
                ) -> GoldenCase:
    spec = parse_case({"requests": requests, **_BASE, **fields})
    return GoldenCase(f"fault-{fault}", note, spec, fault)


FAULT_CASES: tuple[GoldenCase, ...] = (
    _fault_case("chunk_local_position",
                "a chunk with 12 cached keys that starts inside image [8, 15]: query positions "
                "must be absolute (12 + i), not chunk-local (i)",
                [{"context_len": 12, "query_len": 8, "ranges": [[8, 15]]}]),
    _fault_case("causal_tile_key_loop",
                "queries of the first 16-row tile inside image [4, 35] must see keys up to 35, "
                "past the tile's causal limit",
                [{"query_len": 40, "ranges": [[4, 35]]}]),
    _fault_case("causal_tile_key_loop_128",
                "image [120, 135] across the 128-token tile edge: queries 120..127 must see "
                "keys 128..135",
                [{"query_len": 136, "ranges": [[120, 135]]}], num_heads=2, num_kv_heads=1),
    _fault_case("exclusive_range_end",
                "image [3, 10]: its queries must see key 10 (ends are inclusive)",
                [{"query_len": 16, "ranges": [[3, 10]]}]),
    _fault_case("merged_image_groups",
                "two images [2, 5] and [9, 14]: a query of the first must not see the second",
                [{"query_len": 16, "ranges": [[2, 5], [9, 14]]}]),
    _fault_case("window_clamps_ranges",
                "window 4 without clamp_ranges_to_window: queries late in image [2, 20] still "
                "see its first keys",
                [{"query_len": 24, "ranges": [[2, 20]]}], sliding_window=4),
    _fault_case("long_range_dropped",
                "window 4 with clamp_ranges_to_window and image [2, 12] longer than the window: "
                "the image must be clamped to the window, not dropped",
                [{"query_len": 16, "ranges": [[2, 12]]}], sliding_window=4,
                clamp_ranges_to_window=True),
    _fault_case("batch_max_seqlen",
                "a chunk (8 cached + 4 new) batched with a prefill of 6: the chunk's offset is "
                "its own 8, not the batch's max seqlen_k - max seqlen_q = 6",
                [{"context_len": 8, "query_len": 4, "ranges": [[6, 10]]},
                 {"query_len": 6, "ranges": [[1, 3]]}]),
    _fault_case("key_offsets_from_cu_seqlens_q",
                "request 0 has 5 cached keys, so request 1's keys start at 8 in cu_seqlens_k "
                "but at 3 in cu_seqlens_q",
                [{"context_len": 5, "query_len": 3, "ranges": [[1, 6]]},
                 {"query_len": 6, "ranges": [[2, 4]]}]),
    _fault_case("attends_past_seqused",
                "10 keys in a 16-slot page: the 6 poisoned slots past seqused_k must stay unseen",
                [{"query_len": 10, "ranges": [[2, 6]]}], page_size=16),
    _fault_case("page_index_as_token_offset",
                "20 keys over two shuffled 16-slot pages: a page number is not a token offset",
                [{"query_len": 20, "ranges": [[3, 17]]}], page_size=16),
    _fault_case("page_table_off_by_one",
                "20 keys over two shuffled 16-slot pages: key 15 is the last of page 0, not the "
                "first of page 1",
                [{"query_len": 20, "ranges": [[3, 17]]}], page_size=16),
    _fault_case("gqa_head_modulo",
                "4 query heads on 2 KV heads: head 1 reads KV head 0 (h // 2), not 1 (h % 2)",
                [{"query_len": 12, "ranges": [[2, 7]]}]),
    _fault_case("lse_base2",
                "any case: the LSE must be a natural log",
                [{"query_len": 12, "ranges": [[2, 7]]}]),
    _fault_case("aux_rows_chunk_local",
                "request 1's rows of query_ranges follow request 0's; read at the chunk-local "
                "row they hand request 1 request 0's image [0, 7]",
                [{"query_len": 8, "ranges": [[0, 7]]}, {"query_len": 8, "ranges": []}]),
    _fault_case("last_range_end_exclusive",
                "two images, [2, 5] and [8, 12]: queries of the last one must see its key 12",
                [{"query_len": 16, "ranges": [[2, 5], [8, 12]]}]),
    _fault_case("context_positions_restart",
                "8 cached keys and image [5, 10]: the chunk's queries sit at positions 8..15",
                [{"context_len": 8, "query_len": 8, "ranges": [[5, 10]]}]),
    _fault_case("window_inclusive_under_clamp",
                "window 4 clamping image [2, 12]: a query sees 4 keys, not 5",
                [{"query_len": 20, "ranges": [[2, 12]]}], sliding_window=4,
                clamp_ranges_to_window=True),
    _fault_case("gqa_ratio_4",
                "8 query heads on 2 KV heads (ratio 4): head 1 reads KV head 0, not 1",
                [{"query_len": 12, "ranges": [[2, 7]]}], num_heads=8, num_kv_heads=2),
    _fault_case("low_precision_accumulator",
                "64 keys of float16 outlier values: adding them one by one in float16 loses "
                "more than the baseline's rounding",
                [{"query_len": 64}], num_heads=2, num_kv_heads=1, dtype="float16", seed=3,
                value_distribution="outliers"),
    _fault_case("position_off_by_one_from_100",
                "110 tokens: queries from position 100 on must still see their own key",
                [{"query_len": 110, "ranges": [[20, 30]]}]),
    _fault_case("page_size_assumed_16",
                "40 keys in 7-token pages: the page table is read per 7 tokens, not per 16",
                [{"query_len": 40, "ranges": [[3, 17]]}], page_size=7),
    _fault_case("softcap_without_division",
                "softcap 5: scores become 5 tanh(s / 5), not 5 tanh(s)",
                [{"query_len": 20, "ranges": [[2, 7]]}], softcap=5.0),
    _fault_case("descale_not_applied",
                "an e4m3fn cache with a per-tensor K descale near 2^-6.75 and V's near "
                "2^-3.25: its codes are about 100 and 10 times its values",
                [{"query_len": 12, "ranges": [[2, 7]]}], kv_dtype="float8_e4m3fn"),
    _fault_case("descale_applied_twice",
                "an e4m3fn cache with per-tensor descales far below 1: applied twice, K and V "
                "shrink by that factor once more",
                [{"query_len": 12, "ranges": [[2, 7]]}], kv_dtype="float8_e4m3fn"),
    _fault_case("k_descale_for_v",
                "an e4m3fn cache whose V descale is about 11 times its K descale: V "
                "dequantized with K's comes out that much too small",
                [{"query_len": 12, "ranges": [[2, 7]]}], kv_dtype="float8_e4m3fn"),
    _fault_case("per_tensor_descale",
                "2 KV heads with per-head descales: KV head 1 is dequantized with its own "
                "descale, not head 0's",
                [{"query_len": 12, "ranges": [[2, 7]]}], kv_dtype="float8_e4m3fn",
                kv_scale="head"),
    _fault_case("saturated_at_240",
                "an e4m3fn cache whose outlier codes are 448 (and others reach 416): stored "
                "values past 240 are taken as stored, not clipped to e4m3fnuz's range",
                [{"query_len": 12, "ranges": [[2, 7]]}], kv_dtype="float8_e4m3fn"),
    _fault_case("noncausal_without_images",
                "a batch of text requests only: its queries must still be causal (no request "
                "having an image is no reason to drop the mask)",
                [{"query_len": 12}, {"context_len": 4, "query_len": 6}]),
)


def edge_cases() -> tuple[GoldenCase, ...]:
    """The adversarial layouts every property test also runs, and those with an FP8 cache,
    as golden cases."""
    return tuple(GoldenCase(f"edge-{name}", f"fuzz.cases.strategies.{cases}[{name!r}]: "
                            f"{describe_case(spec)}", spec)
                 for cases, table in (("ADVERSARIAL_CASES", ADVERSARIAL_CASES),
                                      ("FP8_ADVERSARIAL_CASES", FP8_ADVERSARIAL_CASES))
                 for name, spec in table.items())


def _declines(target: Target, spec: CaseSpec) -> bool:
    """Whether ``target`` declines ``spec`` on every device it runs on."""
    return all(target.unsupported_reason(spec, device) for device in target.capabilities.devices)


def expected_verdicts(golden: GoldenCase, device: str) -> dict[str, Status]:
    """The ``expect`` annotation of a golden case, verified where it can run here."""
    case = materialize(golden.spec, device)
    truths = TruthCache()
    expect: dict[str, Status] = {}
    for name in target_names():
        target = get_target(name)
        if _declines(target, golden.spec):
            continue
        expect[name] = Status.PASS
        if target.unavailable_reason() is None and device in target.capabilities.devices:
            outcome = evaluate(target, case, truths)
            if outcome.status != Status.PASS:
                raise GoldenError(f"{golden.name}: registered target {outcome.summary()}")
    for fault in FAULTS:
        if evaluate(get_target(f"fault:{fault}"), case, truths).status == Status.FAIL:
            expect[f"fault:{fault}"] = Status.FAIL
    if golden.built_for is not None and f"fault:{golden.built_for}" not in expect:
        raise GoldenError(f"{golden.name}: fault:{golden.built_for} does not fail on it")
    return expect


def golden_data(golden: GoldenCase, device: str) -> dict[str, Any]:
    """The JSON contents of a golden file."""
    data = golden.spec.to_dict()
    data["note"] = golden.note
    if golden.built_for is not None:
        data["bug_class"] = FAULTS[golden.built_for].bug_class
    data["expect"] = {name: status.value
                      for name, status in expected_verdicts(golden, device).items()}
    return data


def regenerate(directory: Path, device: str) -> list[Path]:
    """Rewrite every golden file in ``directory`` and drop stale ones; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for golden in (*FAULT_CASES, *edge_cases()):
        path = directory / f"{golden.name}.json"
        path.write_text(case_json(golden_data(golden, device)))
        written.append(path)
    for stale in {*directory.glob("fault-*.json"), *directory.glob("edge-*.json")} - {
            *written}:
        stale.unlink()
    return written
