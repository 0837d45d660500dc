"""Capabilities an engine can declare: the fuzzer draws inside them, so an outside kernel is
judged on the cases it promises to take (and declines are counted, not judged)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefix_referee.fuzz.cases.spaces import space_for
from prefix_referee.fuzz.cases.strategies import CPU_SPACE, cases
from prefix_referee.fuzz.cli import EXIT_CLEAN, main
from prefix_referee.verify import materialize, parse_case
from prefix_referee.verify.capabilities import LAYOUT_PREDICATES, Capabilities
from prefix_referee.verify.targets import get_target, prefix_kernel
from prefix_referee.verify.targets.external import ExternalTarget


@pytest.mark.parametrize("predicate", list(LAYOUT_PREDICATES))
@settings(max_examples=30)
@given(data=st.data())
def test_drawn_cases_honour_each_layout_predicate(predicate: str, data: st.DataObject) -> None:
    capabilities = Capabilities(layout=frozenset({predicate}))
    spec = data.draw(cases(space_for(capabilities, CPU_SPACE)))
    assert capabilities.unsupported_reason(spec, "cpu") is None


@settings(max_examples=30)
@given(data=st.data())
def test_drawn_cases_honour_head_dim_page_size_and_range_limits(data: st.DataObject) -> None:
    capabilities = Capabilities(head_dim_range=(32, 128), head_dim_multiple=32,
                                needs_paged=True, page_size_multiple=16,
                                max_ranges_per_request=1)
    spec = data.draw(cases(space_for(capabilities, CPU_SPACE)))
    assert capabilities.unsupported_reason(spec, "cpu") is None


@pytest.mark.parametrize(("capabilities", "case", "words"), [
    (Capabilities(page_size_multiple=16), {"page_size": 8}, "page_size 8"),
    (Capabilities(needs_paged=True), {"page_size": None}, "paged KV only"),
    (Capabilities(head_dim_range=(32, 256)), {"head_dim": 16}, "head_dim 16"),
    (Capabilities(layout=frozenset({"ranges_within_sequence"})),
     {"requests": [{"query_len": 4, "ranges": [[2, 9]]}]}, "ranges_within_sequence"),
    (Capabilities(layout=frozenset({"decode_only"})),
     {"requests": [{"query_len": 4}]}, "decode_only"),
    (Capabilities(max_ranges_per_request=1),
     {"requests": [{"query_len": 9, "ranges": [[0, 1], [4, 5]]}]}, "2 ranges"),
])
def test_a_declined_case_says_which_limit(capabilities: Capabilities, case: dict,
                                          words: str) -> None:
    spec = parse_case({"requests": [{"query_len": 4}], "num_heads": 2, "head_dim": 64,
                       "dtype": "bfloat16", "page_size": 16, **case})
    reason = capabilities.unsupported_reason(spec, "cpu")
    assert reason is not None and reason.startswith("unsupported:") and words in reason


def test_unknown_predicates_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown layout predicate"):
        Capabilities(layout=frozenset({"no_such_rule"}))


def test_prefix_kernel_attaches_what_the_kernel_accepts() -> None:
    @prefix_kernel(Capabilities(dtypes=frozenset({"float16"})), approximation="two_call",
                   compile_key=lambda spec: (spec.head_dim,))
    def kernel(case):
        raise NotImplementedError

    assert kernel.capabilities.dtypes == frozenset({"float16"})
    assert kernel.approximation == "two_call"
    with pytest.raises(ValueError, match="approximation must be"):
        prefix_kernel(approximation="three_call")
    assert kernel.compile_key(parse_case({"requests": [{"query_len": 1}], "num_heads": 1,
                                          "head_dim": 32, "dtype": "float16"})) == (32,)


def test_model_is_a_deprecated_alias_of_approximation() -> None:
    def kernel(case):
        raise NotImplementedError

    with pytest.warns(DeprecationWarning, match="approximation"):
        declared = prefix_kernel(model="two_call")(kernel)
    assert declared.approximation == "two_call"
    target = ExternalTarget("tests:kernel", declared)
    assert not target.exact
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="disagree"):
        prefix_kernel(approximation="two_call", model="three_call")
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="must be one of"):
        prefix_kernel(model="three_call")


def test_an_undecorated_kernel_with_a_model_attribute_still_claims_it() -> None:
    """Kernels that set ``fn.model`` by hand (the attribute's name before) keep working."""
    def kernel(case):
        raise NotImplementedError

    kernel.model = "two_call"
    target = ExternalTarget("tests:kernel", kernel)
    assert not target.exact
    assert target.approximation_bias(materialize(parse_case(
        {"requests": [{"query_len": 4, "ranges": [[1, 2]]}], "num_heads": 1, "head_dim": 8,
         "dtype": "float32"}))) is not None


def test_an_engine_style_kernel_is_judged_on_nine_draws_in_ten(tmp_path: Path) -> None:
    name = "examples.engine_adapter:prefix_attention"
    assert get_target(name).unavailable_reason() is None
    assert main(["--target", name, "--examples", "24", "--seed", "1", "--device", "cpu",
                 "--no-plots", "--report-dir", str(tmp_path)]) == EXIT_CLEAN
    target = json.loads((tmp_path / "latest" / "report.json").read_text())["targets"][0]
    assert target["judged"] == 24
    assert sum(target["declined"].values()) <= 0.1 * target["drawn"], target["declined"]
