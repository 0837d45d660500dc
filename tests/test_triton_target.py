"""The Triton target through the policy: interpreter on CPU, compiled under ``-m gpu``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings

from prefix_referee.fuzz.cases.spaces import space_for
from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    GPU_SPACE,
    INTERPRETER_SPACE,
    cases,
)
from prefix_referee.verify import CaseSpec, materialize, parse_case
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.mask import mask_differs_from_causal
from prefix_referee.verify.runner import Status, evaluate
from prefix_referee.verify.targets import get_target
from prefix_referee.verify.targets import triton as triton_target
from prefix_referee.verify.targets.triton import TritonTarget

pytest.importorskip("triton", reason="triton not installed")

from prefix_referee.verify.kernels import prefix_attention

TARGET = get_target("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPACE = space_for(TARGET.capabilities, GPU_SPACE if DEVICE == "cuda" else INTERPRETER_SPACE)


@given(cases(SPACE))
def test_triton_passes_policy(spec: CaseSpec) -> None:
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()


@settings(max_examples=6)
@given(cases(SPACE.narrowed(kv_dtypes=KV_DTYPES, max_seq_len=24, tile_edges=())))
def test_triton_passes_policy_on_an_fp8_cache(spec: CaseSpec) -> None:
    test_triton_passes_policy.hypothesis.inner_test(spec)


@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=ADVERSARIAL_CASES.keys())
def test_triton_passes_adversarial_layouts(spec: CaseSpec) -> None:
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status in (Status.PASS, Status.SKIP), outcome.summary()
    if outcome.status == Status.SKIP:
        assert outcome.reason.startswith("unsupported:")


class RangesDropped(TritonTarget):
    """The real kernel fed no image ranges: a causal-only key loop (docs/bugs.md class 2)."""

    def run(self, case):
        no_ranges = torch.full_like(case.seq_ranges, -1)
        return super().run(dataclasses.replace(case, seq_ranges=no_ranges))


def test_kernel_fed_no_ranges_is_caught() -> None:
    spec = next(s for s in ADVERSARIAL_CASES.values() if mask_differs_from_causal(s)
                and TARGET.unsupported_reason(s, DEVICE) is None)
    outcome = evaluate(RangesDropped(), materialize(spec, DEVICE))
    assert outcome.status == Status.FAIL and "inside range" in outcome.summary()


@pytest.mark.gpu
@settings(max_examples=20)
@given(cases(SPACE.narrowed(head_dims=(256, 512), max_seq_len=512)))
def test_triton_passes_policy_at_head_dims_to_512(spec: CaseSpec) -> None:
    """Gemma 4's head dims (512 global, 256 local), and value dims between them."""
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()


def test_declared_limits_are_the_kernels() -> None:
    assert (triton_target.HEAD_DIM_MULTIPLE, triton_target.MAX_HEAD_DIM,
            triton_target.SHORT_QUERY_LEN) == (prefix_attention.HEAD_DIM_MULTIPLE,
                                               prefix_attention.MAX_HEAD_DIM,
                                               prefix_attention.SHORT_QUERY_LEN)
    accepted = [d for d in range(1, 600) if TARGET.capabilities.accepts_head_dim(d)]
    assert accepted == list(range(16, 513, 16))
    assert TARGET.capabilities.value_dims == "any"


def test_head_dim_512_with_another_value_dim_through_the_target() -> None:
    spec = parse_case({"requests": [{"context_len": 3, "query_len": 12, "ranges": [[1, 8]]}],
                       "num_heads": 2, "num_kv_heads": 1, "head_dim": 512, "head_dim_v": 128,
                       "dtype": "bfloat16", "sliding_window": 5, "softcap": 30.0})
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status == Status.PASS, outcome.summary()


KEY_BASE = {"requests": [{"context_len": 4, "query_len": 20, "ranges": [[2, 9]]}],
            "num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "bfloat16"}


@pytest.mark.parametrize("change", [
    {"requests": [{"query_len": 40, "ranges": [[0, 30], [33, 35]]}, {"query_len": 17}]},
    {"page_size": 16}, {"page_size": 3}, {"softmax_scale": 0.5}, {"seed": 9},
    {"num_heads": 8, "num_kv_heads": 2}, {"head_dim_v": 64},
], ids=repr)
def test_compile_key_ignores_runtime_data(change: dict) -> None:
    assert TARGET.compile_key(parse_case({**KEY_BASE, **change})) == TARGET.compile_key(
        parse_case(KEY_BASE))


def test_compile_key_ignores_the_descales() -> None:
    fp8 = parse_case({**KEY_BASE, "kv_dtype": "float8_e4m3fn"})
    assert TARGET.compile_key(fp8) == TARGET.compile_key(fp8.with_changes(kv_scale="head"))


@pytest.mark.parametrize("change", [
    {"dtype": "float16"}, {"head_dim": 80}, {"head_dim_v": 128}, {"num_kv_heads": 4},
    {"kv_dtype": "float8_e4m3fn"},
    {"sliding_window": 8}, {"softcap": 5.0},
    {"requests": [{"context_len": 4, "query_len": 16}]},  # short launch only
    {"requests": [{"query_len": 20}, {"context_len": 9, "query_len": 1}]},  # both launches
], ids=repr)
def test_compile_key_tells_kernel_variants_apart(change: dict) -> None:
    assert TARGET.compile_key(parse_case({**KEY_BASE, **change})) != TARGET.compile_key(
        parse_case(KEY_BASE))


def test_compile_key_of_window_values_and_clamp() -> None:
    windowed = parse_case({**KEY_BASE, "sliding_window": 8})
    assert TARGET.compile_key(windowed) == TARGET.compile_key(windowed.with_changes(
        sliding_window=300))
    assert TARGET.compile_key(windowed) != TARGET.compile_key(windowed.with_changes(
        clamp_ranges_to_window=True))


@pytest.mark.gpu
def test_triton_is_compiled_on_gpu() -> None:
    assert TARGET.capabilities.devices == frozenset({"cuda"})
    assert TARGET.capabilities.max_total_tokens is None
