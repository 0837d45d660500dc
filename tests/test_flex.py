"""The compiled ``flex`` target: its block mask is the exact mask, it compiles once per
configuration, and planted faults in its mask fail the policy.

tests/test_targets_cpu.py runs it on the gate's generated cases; here the layouts are
longer (full blocks appear only past 128 tokens). ``-m gpu`` runs the CUDA checks: the
dynamic-length graph, the LSE, no recompiles across shapes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from prefix_referee.fuzz.cases.strategies import (
    CPU_SPACE,
    GPU_SPACE,
    cases,
    with_adversarial_examples,
)
from prefix_referee.verify import CaseSpec, materialize
from prefix_referee.verify.case import parse_case
from prefix_referee.verify.mask import request_mask
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.runner import Status, evaluate
from prefix_referee.verify.targets import flex
from prefix_referee.verify.targets.flex import BLOCK, FlexTarget

# Requests long enough for full blocks; at most 1024 folded rows: one CPU graph per dtype.
LONG_SPACE = CPU_SPACE.narrowed(max_requests=1, max_seq_len=512)
MASK_SPACES = st.one_of(cases(CPU_SPACE), cases(CPU_SPACE.narrowed(overlapping_ranges=True)),
                        cases(LONG_SPACE.narrowed(max_requests=2)))


def _case(requests: list[dict], **fields: object) -> CaseSpec:
    base = {"num_heads": 4, "num_kv_heads": 2, "head_dim": 64, "dtype": "bfloat16", "seed": 3}
    return parse_case({"requests": requests, **base, **fields})


# A range reaching into the next block (block (0, 1) is partial for rows 100..127 only)
# and full blocks below the diagonal: each planted fault changes visible keys.
FAULT_CASE = _case([{"query_len": 300, "ranges": [[100, 250]]}], num_kv_heads=1,
                   num_heads=2)


def exact_folded_mask(case: MaterializedCase, q_len: int, k_len: int) -> torch.Tensor:
    """The exact mask over flex's rows and keys: each request's mask once per KV head."""
    dense = torch.zeros(q_len, k_len, dtype=torch.bool)
    total_q, total_k = case.q.shape[0], case.k.shape[0]
    for view in case.requests():
        exact = request_mask(case.spec, case.spec.requests[view.index])
        for g in range(case.num_kv_heads):
            rows = slice(g * total_q + view.q_start, g * total_q + view.q_start + view.query_len)
            dense[rows, g * total_k + view.k_start:g * total_k + view.k_start + view.seq_len] = (
                exact)
    return dense


def listed_blocks(num_blocks: torch.Tensor, indices: torch.Tensor, k_blocks: int
                  ) -> torch.Tensor:
    """flex's ``(num_blocks, indices)`` back to a boolean ``(q_blocks, k_blocks)``."""
    num_blocks, indices = num_blocks[0, 0], indices[0, 0].long()
    listed = torch.arange(indices.shape[1])[None] < num_blocks[:, None]
    dense = torch.zeros(indices.shape[0], k_blocks + 1, dtype=torch.bool)
    dense.scatter_(1, torch.where(listed, indices, k_blocks), True)
    return dense[:, :k_blocks]


@given(spec=MASK_SPACES)
# Block edges off the key blocks (a window's start, the second KV head's documents), full
# blocks, and a block all but one row of which see a whole key block.
@example(spec=_case([{"query_len": 400, "ranges": [[50, 90]]}], sliding_window=200))
@example(spec=_case([{"query_len": 200}], num_heads=2))
@example(spec=FAULT_CASE)
@example(spec=_case([{"query_len": 256}], num_heads=1, num_kv_heads=1, sliding_window=255))
@with_adversarial_examples
@pytest.mark.parametrize("dynamic", [False, True], ids=["cpu-buckets", "cuda-lengths"])
def test_block_mask_is_the_exact_mask(dynamic: bool, spec: CaseSpec) -> None:
    """Element by element: listed blocks hold every visible key, full ones only visible keys.

    The mask_mod alone must equal the exact mask; each KV block must be full exactly when
    every element is visible, partial exactly when some but not all are, unlisted when none.
    Both paddings: CPU's square buckets and CUDA's distinct row and key lengths.
    """
    case = materialize(spec)
    mask = flex.block_mask(case, flex._shape(case, dynamic))
    q_len, k_len = mask.seq_lengths
    q_blocks, k_blocks = q_len // BLOCK, k_len // BLOCK
    exact = exact_folded_mask(case, q_len, k_len)
    zero = torch.zeros((), dtype=torch.int64)
    by_mask_mod = mask.mask_mod(zero, zero, torch.arange(q_len)[:, None],
                                torch.arange(k_len)[None, :])
    assert torch.equal(by_mask_mod, exact)
    partial = listed_blocks(mask.kv_num_blocks, mask.kv_indices, k_blocks)
    full = listed_blocks(mask.full_kv_num_blocks, mask.full_kv_indices, k_blocks)

    def elements(blocks: torch.Tensor) -> torch.Tensor:
        return blocks.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)

    assert torch.equal(elements(full) | (elements(partial) & by_mask_mod), exact)
    visible = exact.view(q_blocks, BLOCK, k_blocks, BLOCK).sum((1, 3))
    assert torch.equal(full, visible == BLOCK * BLOCK)
    assert torch.equal(partial, (visible > 0) & (visible < BLOCK * BLOCK))


@settings(max_examples=10)
@given(spec=cases(LONG_SPACE))
def test_flex_passes_policy_on_long_layouts(spec: CaseSpec) -> None:
    """Layouts with full blocks, where flex skips the mask_mod."""
    outcome = evaluate(FlexTarget(), materialize(spec))
    assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()


# One dtype, every other knob varied: on CPU all of these share one graph.
VARIED_SPECS = [
    _case([{"query_len": 37, "ranges": [[3, 20]]}]),
    _case([{"query_len": 1, "context_len": 90, "ranges": [[10, 60]]}], num_kv_heads=1,
          num_heads=1),
    _case([{"query_len": 200, "ranges": [[0, 150]]}, {"query_len": 0, "context_len": 5}],
          head_dim=128, softcap=30.0, page_size=16),
    _case([{"query_len": 300, "ranges": [[100, 250]]}], num_heads=8, num_kv_heads=2,
          sliding_window=33, clamp_ranges_to_window=True),
    _case([{"context_len": 40, "query_len": 129, "ranges": [[30, 100]]},
           {"query_len": 3}, {"query_len": 64, "ranges": [[1, 1], [5, 70]]}],
          head_dim=256, head_dim_v=64, softmax_scale=0.25, sliding_window=8),
    _case([{"query_len": 255, "ranges": [[0, 254]]}], num_kv_heads=1, num_heads=4,
          softcap=5.0, value_distribution="peaky"),
]


def test_one_cpu_graph_for_many_shapes() -> None:
    """Lengths, heads, dims, window, clamp, scale and softcap change; nothing recompiles."""
    target = FlexTarget()
    graphs = flex._graphs_compiled()
    for spec in VARIED_SPECS:
        outcome = evaluate(target, materialize(spec))
        assert outcome.status == Status.PASS, outcome.summary()
    assert flex._graphs_compiled() - graphs <= 1
    assert target.compiled <= 1 and (target.compile_seconds > 0) == (target.compiled == 1)


def test_padded_block_counts_avoid_static_sizes() -> None:
    """Duck sizing would tie a length to an equal static size (a recompile later)."""
    taken = {1, BLOCK, 2, 256}
    q_blocks = flex._distinct_blocks(1, taken)
    k_blocks = flex._distinct_blocks(2, taken)
    assert (q_blocks, k_blocks) == (3, 4)
    assert flex._distinct_blocks(2, {1, BLOCK, 2, 3, 4, 3 * BLOCK, 4 * BLOCK}) == 5


def _drop_range_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mask_mod forgets the image ranges (their tables say "no range")."""
    tables = flex._row_tables

    def without_ranges(case: MaterializedCase, shape: flex._Shape) -> dict[str, torch.Tensor]:
        t = tables(case, shape)
        return {**t, "range_start": torch.full_like(t["range_start"], -1),
                "range_end": torch.full_like(t["range_end"], -1)}

    monkeypatch.setattr(flex, "_row_tables", without_ranges)


def _causal_block_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    """The block mask comes from causal intervals: blocks right of the diagonal vanish."""
    intervals = flex.visible_intervals
    monkeypatch.setattr(flex, "visible_intervals",
                        lambda q_pos, ranges, *args: intervals(q_pos, (), *args))


def _drop_full_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full blocks are left out instead of being run without the mask_mod."""
    blocks = flex.kv_blocks

    def partial_only(*args: object) -> tuple[torch.Tensor, ...]:
        kv_num, kv_indices, full_num, full_indices = blocks(*args)
        return kv_num, kv_indices, torch.zeros_like(full_num), full_indices

    monkeypatch.setattr(flex, "kv_blocks", partial_only)


@pytest.mark.parametrize("plant", [_drop_range_term, _causal_block_mask, _drop_full_blocks])
def test_planted_mask_fault_fails_the_policy(
        monkeypatch: pytest.MonkeyPatch, plant: Callable[[pytest.MonkeyPatch], None]) -> None:
    case = materialize(FAULT_CASE)
    assert evaluate(FlexTarget(), case).status == Status.PASS
    plant(monkeypatch)
    outcome = evaluate(FlexTarget(), case)
    assert outcome.status == Status.FAIL, outcome.summary()


# Two compile keys (softcap or not); lengths, KV heads, window, clamp and scale vary.
GPU_FLEX_SPACE = GPU_SPACE.narrowed(dtypes=("bfloat16",), head_dims=(128,), gqa_ratios=(2,),
                                    value_dims=False)
CUDA_TARGET = FlexTarget()
CUDA_KEYS: set[tuple] = set()


@pytest.mark.gpu
@settings(max_examples=40)
@given(spec=cases(GPU_FLEX_SPACE))
def test_cuda_flex_passes_with_lse_and_one_graph_per_key(spec: CaseSpec) -> None:
    """On CUDA: dynamic lengths (one graph per compile key), LSE judged too."""
    outcome = evaluate(CUDA_TARGET, materialize(spec, "cuda"))
    assert outcome.status == Status.PASS, outcome.summary() + "\ncase: " + spec.to_json()
    assert outcome.verdict is not None and outcome.verdict.lse_error is not None
    CUDA_KEYS.add(CUDA_TARGET.compile_key(spec))
    assert CUDA_TARGET.compiled <= len(CUDA_KEYS)
