"""The exact paged varlen Triton kernel as a target.

Compiled on a CUDA GPU; on a machine without one it runs under the Triton
interpreter (``TRITON_INTERPRET=1``, which the CLI, the pytest plugin and the test
suite set on such a machine before anything imports Triton:
:mod:`verify.kernels.interpreter`, which also fixes the interpreter's bf16 dots), which
executes every program in Python and so only takes small cases.
Head dims are multiples of 16 up to 512, and the value head dim may differ from the
query/key one. Cases without a paged cache are handed to the kernel as a page size of 1
over the packed keys, which is the same memory seen through a trivial page table. An FP8
cache (packed or paged) is read as stored, with the case's descales applied in the kernel.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from prefix_referee.verify.capabilities import Capabilities
from prefix_referee.verify.case import KV_DTYPES, CaseSpec
from prefix_referee.verify.kernels.interpreter import interpreter_enabled, patch_interpreter_dot
from prefix_referee.verify.materialize import MaterializedCase
from prefix_referee.verify.target import Target

# The interpreter runs about a thousand times slower than the GPU: cap the keys per case.
INTERPRETER_MAX_TOKENS = 128
# The kernel's HEAD_DIM_MULTIPLE, MAX_HEAD_DIM and SHORT_QUERY_LEN (the short launch's
# longest request), restated so that building the registry imports no Triton kernel (it
# must not be decorated before TRITON_INTERPRET is settled); a test keeps them equal.
HEAD_DIM_MULTIPLE, MAX_HEAD_DIM, SHORT_QUERY_LEN = 16, 512, 16


def _packed_as_pages(case: MaterializedCase) -> tuple[Tensor, Tensor, Tensor]:
    """k/v as a cache of one-token pages, and the page table that reads them in order."""
    page_table = torch.zeros(len(case.spec.requests), max(case.max_seqlen_k, 1),
                             dtype=torch.int32, device=case.device)
    for view in case.requests():
        page_table[view.index, : view.seq_len] = torch.arange(
            view.k_start, view.k_start + view.seq_len, dtype=torch.int32, device=case.device)
    return case.k[:, None], case.v[:, None], page_table


def _description(compiled: bool) -> str:
    """What runs: compiled, or the interpreter with the fixes it runs under."""
    if compiled:
        return "exact paged varlen Triton kernel"
    fixed = interpreter_enabled() and patch_interpreter_dot()
    return ("exact paged varlen Triton kernel (interpreter"
            + (", with its bf16/fp8 dots and bf16 casts fixed)" if fixed else ")"))


class TritonTarget(Target):
    def __init__(self) -> None:
        compiled = torch.cuda.is_available()
        super().__init__(
            "triton", _description(compiled),
            Capabilities(devices=frozenset({"cuda"} if compiled else {"cpu"}),
                         head_dim_range=(HEAD_DIM_MULTIPLE, MAX_HEAD_DIM),
                         head_dim_multiple=HEAD_DIM_MULTIPLE, value_dims="any",
                         kv_dtypes=frozenset({None, *KV_DTYPES}),
                         max_total_tokens=None if compiled else INTERPRETER_MAX_TOKENS,
                         # Measured under the interpreter; the compiled kernel: not yet.
                         deterministic=True, batch_invariant=True, placement_invariant=True,
                         claimed_on=frozenset({"cpu"})))

    def unavailable_reason(self) -> str | None:
        if importlib.util.find_spec("triton") is None:
            return "triton not installed (pip install triton)"
        if not torch.cuda.is_available() and not interpreter_enabled():
            return ("no CUDA device and TRITON_INTERPRET is not 1: set it before triton is "
                    "imported (verify.kernels.interpreter.use_interpreter_without_cuda())")
        return None

    def compile_key(self, spec: CaseSpec) -> tuple:
        """The kernel's constexprs and specializations, and which of its two launches run.

        Head dims (``HEAD_DIM``; the padded ``BLOCK_D`` and the tiles follow from them and
        the dtype), the K/V storage dtype (an FP8 cache), the window / clamp / softcap
        flags, GQA ratio 1 (Triton turns an integer argument equal to 1 into a constant),
        and whether the case has short (at most 16 query tokens) and long requests: each
        group is its own tile shape. Lengths, ranges, pages, the window and softcap values
        and the descales are runtime data.
        """
        lengths = [r.query_len for r in spec.requests]
        return (spec.dtype, spec.kv_dtype, spec.head_dim, spec.value_dim,
                spec.num_heads == spec.num_kv_heads, spec.sliding_window is not None,
                spec.clamp_ranges_to_window, spec.softcap is not None,
                any(0 < n <= SHORT_QUERY_LEN for n in lengths),
                any(n > SHORT_QUERY_LEN for n in lengths))

    def run(self, case: MaterializedCase) -> tuple[Tensor, Tensor | None]:
        from prefix_referee.verify.kernels.prefix_attention import prefix_attention_paged

        if case.k_cache is None:
            k_cache, v_cache, page_table = _packed_as_pages(case)
        else:
            k_cache, v_cache, page_table = case.k_cache, case.v_cache, case.page_table
        return prefix_attention_paged(
            case.q, k_cache, v_cache, page_table, case.cu_seqlens_q, case.seqused_k,
            case.seq_ranges, case.softmax_scale, case.sliding_window,
            case.clamp_ranges_to_window, case.softcap, max_seqlen_q=case.max_seqlen_q,
            query_lens_host=[r.query_len for r in case.spec.requests],
            k_descale=case.k_descale, v_descale=case.v_descale)
