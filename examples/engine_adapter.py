"""An engine's paged Triton prefix kernel, adapted to the suite (docs/adapting.md).

Engines call their kernel with their own conventions; the adapter maps the case's
tensors (docs/contract.md) onto them, and declares what the kernel promises to take, so
the fuzzer draws only such cases. The kernel here is the suite's own Triton kernel,
called the way an engine calls its kernel: always through a paged cache whose block
table carries slack columns, ranges padded with (0, 0), page sizes a multiple of 16, and
an engine's layout guarantees (no image cut by the end of a chunk, no unclamped image
longer than the window). Fuzz it with::

    python -m fuzz --target examples.engine_adapter:prefix_attention
"""

from __future__ import annotations

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.targets import prefix_kernel
from prefix_referee.verify.targets.triton import INTERPRETER_MAX_TOKENS

# Compiled on a GPU; on a CPU under Triton's interpreter, which only takes small cases.
COMPILED = torch.cuda.is_available()
CAPABILITIES = Capabilities(
    devices=frozenset({"cuda"} if COMPILED else {"cpu"}),
    dtypes=frozenset({"bfloat16", "float16"}),
    head_dim_range=(32, 256), head_dim_multiple=16, value_dims="equal",
    needs_paged=True, page_size_multiple=16,
    max_total_tokens=None if COMPILED else INTERPRETER_MAX_TOKENS,
    layout=frozenset({"ranges_within_sequence", "ranges_within_window"}),
)


def _engine_call(q: Tensor, key_cache: Tensor, value_cache: Tensor, block_table: Tensor,
                 query_start_loc: Tensor, seq_lens: Tensor, mm_prefix_range: Tensor,
                 scale: float, sliding_window: int | None, clamp: bool,
                 softcap: float | None, query_lens: list[int]) -> tuple[Tensor, Tensor]:
    """The engine's entry point, with the engine's argument names."""
    from prefix_referee.verify.kernels.prefix_attention import prefix_attention_paged

    return prefix_attention_paged(q, key_cache, value_cache, block_table, query_start_loc,
                                  seq_lens, mm_prefix_range, scale, sliding_window, clamp,
                                  softcap, query_lens_host=query_lens)


@prefix_kernel(CAPABILITIES)
def prefix_attention(case: MaterializedCase) -> tuple[Tensor, Tensor]:
    """The case, mapped onto the engine's call: ranges padded with (0, 0) as the engine pads
    them (a one-token range at key 0 adds nothing beyond causal)."""
    ranges = case.seq_ranges.clamp_min(0).to(torch.int32)
    return _engine_call(case.q, case.k_cache, case.v_cache, case.page_table, case.cu_seqlens_q,
                        case.seqused_k, ranges, case.softmax_scale, case.sliding_window,
                        case.clamp_ranges_to_window, case.softcap,
                        [r.query_len for r in case.spec.requests])
