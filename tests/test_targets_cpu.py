"""The CPU targets (SDPA, Flex, the reference itself) pass the policy on generated layouts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from prefix_referee.fuzz.cases.strategies import (
    ADVERSARIAL_CASES,
    CPU_SPACE,
    cases,
    with_adversarial_examples,
)
from prefix_referee.references import reference_attention
from prefix_referee.verify import CaseSpec, materialize
from prefix_referee.verify.case import KV_DTYPES
from prefix_referee.verify.mask import causal_only, mask_differs_from_causal
from prefix_referee.verify.runner import Status, TruthCache, evaluate
from prefix_referee.verify.targets import available_targets, get_target

CPU_TARGETS = ["reference", "sdpa", "flex"]


@pytest.mark.parametrize("name", CPU_TARGETS)
@given(spec=cases(CPU_SPACE))
@with_adversarial_examples
def test_cpu_target_passes_policy(name: str, spec: CaseSpec) -> None:
    outcome = evaluate(get_target(name), materialize(spec))
    if outcome.status == Status.SKIP:
        assert outcome.reason.startswith("unsupported:")  # e.g. SDPA has no softcap
        return
    assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()


# Short bf16 layouts (flex's graph the other tests compile): the FP8 path is in the K/V
# values, not in the lengths and dtypes the main test covers.
FP8_SPACE = CPU_SPACE.narrowed(kv_dtypes=KV_DTYPES, max_seq_len=24, tile_edges=(),
                               head_dims=(64,), dtypes=("bfloat16",))


@pytest.mark.parametrize("name", CPU_TARGETS)
@settings(max_examples=6)
@given(spec=cases(FP8_SPACE))
def test_cpu_target_passes_policy_on_an_fp8_cache(name: str, spec: CaseSpec) -> None:
    """Each dequantizes (or, the reference, reads the exact dequantized values)."""
    test_cpu_target_passes_policy.hypothesis.inner_test(name, spec)


@given(spec=cases(CPU_SPACE))
@with_adversarial_examples
def test_ranges_change_the_exact_output_where_the_mask_differs(spec: CaseSpec) -> None:
    """Non-vacuity: a layout whose mask differs from causal must change the reference."""
    if not mask_differs_from_causal(spec):
        return
    out, _ = reference_attention(materialize(spec).batch())
    causal_out, _ = reference_attention(materialize(causal_only(spec)).batch())
    assert not torch.equal(out, causal_out)


def test_cpu_targets_are_available_here() -> None:
    assert set(CPU_TARGETS) <= set(available_targets("cpu"))


def test_unsupported_feature_skips_with_reason() -> None:
    spec = ADVERSARIAL_CASES["softcap_peaky_gqa4"]
    outcome = evaluate(get_target("sdpa"), materialize(spec), TruthCache())
    assert outcome.status == Status.SKIP and "softcap" in outcome.reason
