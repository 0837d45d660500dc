"""What of the FA4 target can be checked without a GPU.

The FA4 mask body runs here on Python stand-ins for ``cutlass``/``cute`` (the same
function object FA4 compiles, built from the same source), pair by pair against
:mod:`verify.mask`; capabilities, skip reasons and the findings files are plain Python.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from hypothesis import given

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES, CPU_SPACE, cases
from prefix_referee.golden import FINDINGS_DIR
from prefix_referee.verify.case import CaseSpec, parse_case, read_case
from prefix_referee.verify.gpu import fa4_unavailable_reason
from prefix_referee.verify.mask import request_mask
from prefix_referee.verify.materialize import MaterializedCase, materialize
from prefix_referee.verify.runner import Status, evaluate
from prefix_referee.verify.targets import fa4 as fa4_module
from prefix_referee.verify.targets import get_target, target_names
from prefix_referee.verify.targets.fa4 import (
    NO_WINDOW,
    FA4Target,
    mask_params,
    sm90_tile_n,
    tma_tail_nan_reason,
)

FINDINGS = FINDINGS_DIR
WIDE = CPU_SPACE.narrowed(overlapping_ranges=True)


def _spec(**changes: Any) -> CaseSpec:
    base = {"requests": [{"context_len": 100, "query_len": 100, "ranges": [[80, 150]]}],
            "num_heads": 4, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16"}
    return parse_case({**base, **changes})


# --- registration and capabilities ---------------------------------------------------------


def test_fa4_is_registered() -> None:
    assert "fa4" in target_names()
    assert isinstance(get_target("fa4"), FA4Target)


def test_fa4_says_what_is_missing_here() -> None:
    reason = fa4_unavailable_reason()
    if reason is None:
        pytest.skip("FA4 can run here")
    assert get_target("fa4").unavailable_reason() == reason
    assert "CUDA" in reason or "SM" in reason or "flash-attn-4" in reason
    outcome = evaluate(get_target("fa4"), materialize(_spec()))
    assert outcome.status == Status.SKIP and outcome.reason == reason


@pytest.mark.parametrize(("changes", "device", "why"), [
    ({}, "cpu", "device cpu"),
    ({"dtype": "float32"}, "cuda", "dtype float32"),
    ({"head_dim": 12}, "cuda", "head_dim 12"),
    ({"head_dim": 512}, "cuda", "head_dim 512"),
    ({"head_dim": 4}, "cuda", "head_dim 4"),
    ({"head_dim_v": 64}, "cuda", "head_dim_v != head_dim"),
])
def test_unsupported_cases_skip_with_the_reason(changes: dict, device: str, why: str) -> None:
    reason = FA4Target().unsupported_reason(_spec(**changes), device)
    assert reason is not None and reason.startswith("unsupported") and why in reason


@pytest.mark.parametrize("changes", [
    {}, {"dtype": "float16", "head_dim": 64}, {"head_dim": 256, "page_size": 80},
    {"page_size": 16, "poison": "nan"}, {"sliding_window": 5, "clamp_ranges_to_window": True},
    {"softcap": 30.0}, {"allow_overlapping_ranges": True, "num_kv_heads": 1}])
def test_supported_cases_run(changes: dict) -> None:
    assert FA4Target().unsupported_reason(_spec(**changes), "cuda") is None


def test_tma_tail_nan_finding_is_named_where_it_applies() -> None:
    nan128 = _spec(page_size=128, poison="nan")
    assert "fa4_tma_page_tail_nan" in tma_tail_nan_reason(nan128)
    assert "fa4_tma_page_tail_nan" in FA4Target().unsupported_reason(nan128, "cuda")
    assert tma_tail_nan_reason(nan128.with_changes(poison="finite")) is None
    assert tma_tail_nan_reason(nan128.with_changes(page_size=64)) is None  # cp.async pages
    assert tma_tail_nan_reason(_spec(page_size=80, head_dim=256, poison="nan")) is not None
    full_pages = nan128.with_changes(requests=[{"context_len": 100, "query_len": 156}])
    assert tma_tail_nan_reason(full_pages) is None


def test_sm90_tile_table() -> None:
    assert [sm90_tile_n(d, d) for d in (64, 96, 128, 192, 256)] == [128, 144, 128, 112, 80]
    assert sm90_tile_n(192, 128) == 128


def test_mask_params_carry_window_and_clamp() -> None:
    assert mask_params(materialize(_spec())).tolist() == [NO_WINDOW, 0]
    windowed = materialize(_spec(sliding_window=7, clamp_ranges_to_window=True))
    assert mask_params(windowed).tolist() == [7, 1]
    assert mask_params(windowed).dtype == torch.int32


# --- the mask body on Python stand-ins -----------------------------------------------------


class _Cell:
    """Stands in for ``cute.make_rmem_tensor(1, Boolean)``."""

    def __init__(self, size: int, dtype: object) -> None:
        self.values = [None] * size

    def __setitem__(self, index: int, value: object) -> None:
        self.values[index] = value

    def load(self) -> list:
        return self.values


STAND_IN_CUTLASS = SimpleNamespace(min=min, Boolean=bool)
STAND_IN_CUTE = SimpleNamespace(jit=lambda fn: fn, make_rmem_tensor=_Cell)
# FA4 evaluates the mask on whole query tiles; rows past seqlen_q must not read out of range.
PAD_ROWS = 16


def mask_mod_rows(case: MaterializedCase, *, chunk_local: bool = False) -> list[torch.Tensor]:
    """Per request, the mask the FA4 body computes, (query_len + PAD_ROWS, seq_len).

    Called the way FA4 calls it: indices relative to the request, ``seqlen_info`` from
    cu_seqlens_q / seqused_k, the aux tensors the target passes. ``chunk_local`` plants
    the docs/bugs.md class 1 mistake (seqlen_k taken as seqlen_q) to show the comparison bites.
    """
    body = fa4_module._build_mask_mod(STAND_IN_CUTLASS, STAND_IN_CUTE)
    aux = [case.query_ranges, mask_params(case)]
    masks = []
    for view in case.requests():
        if not view.query_len:
            masks.append(torch.zeros(0, view.seq_len, dtype=torch.bool))
            continue
        info = SimpleNamespace(offset_q=view.q_start, seqlen_q=view.query_len,
                               seqlen_k=view.query_len if chunk_local else view.seq_len)
        rows = [[bool(body(0, 0, [q], [j], info, aux)[0]) for j in range(view.seq_len)]
                for q in range(view.query_len + PAD_ROWS)]
        masks.append(torch.tensor(rows, dtype=torch.bool).reshape(-1, view.seq_len))
    return masks


@given(cases(WIDE.narrowed(max_seq_len=40)))
def test_mask_body_matches_the_definition(spec: CaseSpec) -> None:
    case = materialize(spec)
    for r, got in zip(spec.requests, mask_mod_rows(case), strict=True):
        assert torch.equal(got[:r.query_len], request_mask(spec, r))


def test_mask_body_comparison_catches_chunk_local_positions() -> None:
    spec = ADVERSARIAL_CASES["chunk_starts_inside_range"]
    case = materialize(spec)
    got = mask_mod_rows(case, chunk_local=True)
    assert any(not torch.equal(g[:r.query_len], request_mask(spec, r))
               for r, g in zip(spec.requests, got, strict=True))


def test_mask_mod_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """FA4 keys its kernel cache on the mask function's hash: hand it the same object."""
    fake = SimpleNamespace(**vars(STAND_IN_CUTLASS), cute=STAND_IN_CUTE)
    monkeypatch.setitem(__import__("sys").modules, "cutlass", fake)
    monkeypatch.setitem(__import__("sys").modules, "cutlass.cute", STAND_IN_CUTE)
    fa4_module.prefix_mask_mod.cache_clear()
    try:
        first = fa4_module.prefix_mask_mod()
        assert fa4_module.prefix_mask_mod() is first
        assert FA4Target().mask_mod() is first
    finally:
        fa4_module.prefix_mask_mod.cache_clear()


# --- findings ------------------------------------------------------------------------------


def test_findings_are_valid_reproducers() -> None:
    paths = sorted(FINDINGS.glob("*.json"))
    assert paths
    for path in paths:
        spec = read_case(path)
        assert spec == parse_case(json.loads(path.read_text()))
        assert set(spec.extra["expect"].values()) <= {"pass", "fail", "nonfinite"}, path
        assert spec.extra["note"] and spec.extra["diagnosis"], path
        for name in spec.extra["expect"]:
            assert name in target_names(), path
