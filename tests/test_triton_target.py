"""The Triton target through the policy: interpreter on CPU, compiled under ``-m gpu``."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given

from fuzz.spaces import space_for
from fuzz.strategies import ADVERSARIAL_CASES, GPU_SPACE, INTERPRETER_SPACE, cases
from verify import CaseSpec, materialize
from verify.mask import mask_differs_from_causal
from verify.runner import FAIL, PASS, SKIP, evaluate
from verify.targets import get_target
from verify.targets.triton import TritonTarget

pytest.importorskip("triton", reason="triton not installed")

TARGET = get_target("triton")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SPACE = space_for(TARGET.capabilities, GPU_SPACE if DEVICE == "cuda" else INTERPRETER_SPACE)


@given(cases(SPACE))
def test_triton_passes_policy(spec: CaseSpec) -> None:
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status == PASS, outcome.summary() + "\ncase: " + spec.to_json()


@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=ADVERSARIAL_CASES.keys())
def test_triton_passes_adversarial_layouts(spec: CaseSpec) -> None:
    outcome = evaluate(TARGET, materialize(spec, DEVICE))
    assert outcome.status in (PASS, SKIP), outcome.summary()
    if outcome.status == SKIP:
        assert outcome.reason.startswith("unsupported:")


class RangesDropped(TritonTarget):
    """The real kernel fed no image ranges: a causal-only key loop (BUGS.md class 2)."""

    def run(self, case):
        no_ranges = torch.full_like(case.seq_ranges, -1)
        return super().run(dataclasses.replace(case, seq_ranges=no_ranges))


def test_kernel_fed_no_ranges_is_caught() -> None:
    spec = next(s for s in ADVERSARIAL_CASES.values() if mask_differs_from_causal(s)
                and TARGET.unsupported_reason(s, DEVICE) is None)
    outcome = evaluate(RangesDropped(), materialize(spec, DEVICE))
    assert outcome.status == FAIL and "inside range" in outcome.summary()


@pytest.mark.gpu
def test_triton_is_compiled_on_gpu() -> None:
    assert TARGET.capabilities.devices == frozenset({"cuda"})
    assert TARGET.capabilities.max_total_tokens is None
