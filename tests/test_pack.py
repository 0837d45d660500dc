"""Packing cases into one batch changes nothing about each case, and hides no bug that
only shows across requests (docs/design.md)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from prefix_referee.fuzz.cases.strategies import CPU_SPACE, config_dicts, layout_dicts, option_dicts
from prefix_referee.verify import materialize, parse_case
from prefix_referee.verify.pack import pack, pack_key
from prefix_referee.verify.runner import Status, TruthCache, evaluate, run_and_judge
from prefix_referee.verify.targets import get_target


@st.composite
def packable(draw: st.DrawFn) -> list:
    """Two to four cases that share their configuration and options."""
    space = CPU_SPACE.narrowed(max_requests=2, max_seq_len=32, tile_edges=())
    config = draw(config_dicts(space))
    options = draw(option_dicts(space, config))
    layouts = draw(st.lists(layout_dicts(space, options), min_size=2, max_size=4))
    return [parse_case({**layout, **config, **options}) for layout in layouts]


@given(packable())
def test_a_pack_holds_exactly_its_cases_tensors(specs: list) -> None:
    packed, segments = pack(specs)
    whole = materialize(packed)
    for spec, segment in zip(specs, segments, strict=True):
        alone = materialize(spec)
        assert torch.equal(whole.q[segment.r0:segment.r1], alone.q)
        assert torch.equal(whole.k[segment.k0:segment.k1], alone.k)
        assert torch.equal(whole.v[segment.k0:segment.k1], alone.v)
        assert torch.equal(whole.layout.rows_lo[segment.r0:segment.r1] - segment.k0,
                           alone.layout.rows_lo)


@given(packable())
def test_each_case_of_a_pack_gets_the_verdict_it_gets_alone(specs: list) -> None:
    target = get_target("sdpa")
    if any(target.unsupported_reason(s, "cpu") for s in specs):
        return
    packed, segments = pack(specs)
    judged = run_and_judge(target, materialize(packed), segments)
    for spec, outcome in zip(specs, judged.outcomes, strict=True):
        alone = evaluate(target, materialize(spec), TruthCache())
        assert outcome.status == alone.status == Status.PASS
        assert outcome.verdict.out_error == pytest.approx(alone.verdict.out_error, rel=1e-6)
    assert judged.batch is not None and judged.batch.status == Status.PASS


def test_a_cross_request_bug_shows_in_the_pack() -> None:
    """Each case passes alone; packed, the batch-wide max seqlen is not its own."""
    base = {"num_heads": 2, "head_dim": 16, "dtype": "bfloat16", "seed": 1}
    chunk = parse_case({"requests": [{"context_len": 20, "query_len": 4, "ranges": [[18, 22]]}],
                        **base})
    prefill = parse_case({"requests": [{"query_len": 6, "ranges": [[1, 3]]}], **base})
    fault = get_target("fault:batch_max_seqlen")
    assert all(evaluate(fault, materialize(s)).status == Status.PASS for s in (chunk, prefill))
    packed, segments = pack([chunk, prefill])
    judged = run_and_judge(fault, materialize(packed), segments)
    assert any(o.failed for o in judged.outcomes) and judged.batch.failed


def test_cases_that_differ_in_batch_wide_options_do_not_pack() -> None:
    one = parse_case({"requests": [{"query_len": 4}], "num_heads": 2, "head_dim": 16,
                      "dtype": "bfloat16"})
    windowed = one.with_changes(sliding_window=2)
    assert pack_key(one) != pack_key(windowed)
    assert pack_key(one) == pack_key(one.with_changes(seed=5, requests=[{"query_len": 9}]))
    with pytest.raises(ValueError, match="agree"):
        pack([one, windowed])
