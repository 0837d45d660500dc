"""The exact paged varlen Triton kernel as a target.

Compiled on a CUDA GPU; on a machine without one it runs under the Triton
interpreter (``TRITON_INTERPRET=1``, which the CLI, the pytest plugin and the test
suite set on such a machine before anything imports Triton:
:mod:`verify.kernels.interpreter`), which executes every program in Python and so only
takes small cases.
Cases without a paged cache are handed to the kernel as a page size of 1 over the
packed keys, which is the same memory seen through a trivial page table.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from verify.capabilities import Capabilities
from verify.kernels.interpreter import interpreter_enabled
from verify.materialize import MaterializedCase
from verify.target import Target

# The interpreter runs about a thousand times slower than the GPU: cap the keys per case.
INTERPRETER_MAX_TOKENS = 128
HEAD_DIMS = frozenset(range(16, 257, 16))


def _packed_as_pages(case: MaterializedCase) -> tuple[Tensor, Tensor, Tensor]:
    """k/v as a cache of one-token pages, and the page table that reads them in order."""
    page_table = torch.zeros(len(case.spec.requests), max(case.max_seqlen_k, 1),
                             dtype=torch.int32, device=case.device)
    for view in case.requests():
        page_table[view.index, : view.seq_len] = torch.arange(
            view.k_start, view.k_start + view.seq_len, dtype=torch.int32, device=case.device)
    return case.k[:, None], case.v[:, None], page_table


class TritonTarget(Target):
    def __init__(self) -> None:
        compiled = torch.cuda.is_available()
        super().__init__(
            "triton",
            "exact paged varlen Triton kernel" + ("" if compiled else " (interpreter)"),
            Capabilities(devices=frozenset({"cuda"} if compiled else {"cpu"}),
                         head_dims=HEAD_DIMS, value_dims="equal",
                         max_total_tokens=None if compiled else INTERPRETER_MAX_TOKENS))

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton not installed (pip install triton)"
        if not torch.cuda.is_available() and not interpreter_enabled():
            return ("no CUDA device and TRITON_INTERPRET is not 1: set it before triton is "
                    "imported (verify.kernels.interpreter.use_interpreter_without_cuda())")
        return None

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        from verify.kernels.prefix_attention import prefix_attention_paged

        if case.k_cache is None:
            k_cache, v_cache, page_table = _packed_as_pages(case)
        else:
            k_cache, v_cache, page_table = case.k_cache, case.v_cache, case.page_table
        return prefix_attention_paged(
            case.q, k_cache, v_cache, page_table, case.cu_seqlens_q, case.seqused_k,
            case.seq_ranges, case.softmax_scale, case.sliding_window,
            case.clamp_ranges_to_window, case.softcap, max_seqlen_q=case.max_seqlen_q,
            query_lens_host=[r.query_len for r in case.spec.requests])
