"""The GPU tier: FA4, compiled Triton and the two-call family on CUDA.

The fuzzer at GPU shapes per target (packed, compile-aware, in a worker process on the
xdist worker's own GPU) judged by the one policy (two-call targets against their own
model), the adversarial layouts, planted faults that show the FA4 checks can fail, and
FA4's surprises kept as named findings: each a reproducer under golden/findings/ whose
current behaviour a test asserts, so a change in FA4 shows up as a failing finding.

Run (docs/gpu.md): ``HYPOTHESIS_PROFILE=gpu pytest -m gpu -n 4 tests/test_gpu_tier.py``;
with several GPUs, xdist worker ``gwN`` uses ``cuda:N`` (modulo the count).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from prefix_referee.fuzz.cases.strategies import ADVERSARIAL_CASES
from prefix_referee.fuzz.cli import main as fuzz
from prefix_referee.fuzz.plugin.stats import record, record_outcome
from prefix_referee.fuzz.report.summary import RunStatus
from prefix_referee.golden import FINDINGS_DIR
from prefix_referee.references import reference_attention
from prefix_referee.verify.case import CaseSpec, parse_case, read_case
from prefix_referee.verify.compare import check, expected
from prefix_referee.verify.mask import overlap_weight
from prefix_referee.verify.materialize import MaterializedCase, materialize
from prefix_referee.verify.runner import Outcome, Status, evaluate
from prefix_referee.verify.targets import Target, get_target, target_names

pytestmark = pytest.mark.gpu

TIER_TARGETS = ("fa4", "triton", "two_call_fa4", "replace_fa4")
FINDINGS = FINDINGS_DIR
# Judged cases per target: the fuzzer draws many layouts per kernel configuration and packs
# them, so compiling (seconds per configuration for FA4) stays a small share.
FUZZ_EXAMPLES = {"fa4": 300, "triton": 300, "two_call_fa4": 150, "replace_fa4": 150}


def pinned_device() -> str:
    """One GPU per xdist worker (gw0 -> cuda:0, gw1 -> cuda:1, ...), wrapping around."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    return f"cuda:{int(worker.removeprefix('gw') or 0) % torch.cuda.device_count()}"


def available(name: str) -> Target:
    """The registered target ``name``, or a skip naming what is missing."""
    if name not in target_names():
        pytest.skip(f"{name}: not registered")
    target = get_target(name)
    reason = target.unavailable_reason()
    if reason:
        pytest.skip(f"{name}: {reason}")
    return target


@pytest.fixture(scope="module", params=TIER_TARGETS)
def tier_target(request: pytest.FixtureRequest) -> Target:
    return available(request.param)


def judge(target: Target, spec: CaseSpec) -> Outcome:
    outcome = evaluate(target, materialize(spec, pinned_device()))
    record_outcome(outcome)
    return outcome


def test_fuzzing_on_the_gpu_finds_nothing_wrong(tier_target: Target, tmp_path: Path) -> None:
    """The fuzzer itself, at GPU shapes: packed, compile-aware, in a worker on this GPU."""
    examples = FUZZ_EXAMPLES[tier_target.name]
    code = fuzz(["--target", tier_target.name, "--examples", str(examples), "--seed", "0",
                 "--device", "cuda", "--devices", pinned_device(), "--min-cases", str(examples),
                 "--report-dir", str(tmp_path)])
    report = json.loads((tmp_path / "latest" / "report.json").read_text())["targets"][0]
    for line in (tmp_path / "latest" / "cases.jsonl").read_text().splitlines():
        case = json.loads(line)
        record(case["target"], case["status"], case["ratio"])
    assert code == 0 and report["status"] == RunStatus.CLEAN, json.dumps(report["findings"],
                                                                         indent=1)


@pytest.mark.parametrize("spec", ADVERSARIAL_CASES.values(), ids=ADVERSARIAL_CASES.keys())
def test_adversarial_layouts(tier_target: Target, spec: CaseSpec) -> None:
    outcome = judge(tier_target, spec)
    if outcome.status == Status.SKIP:
        pytest.skip(outcome.reason)
    assert outcome.status == Status.PASS, f"{spec.to_json()}\n{outcome.summary()}"


# --- findings: FA4 behaviour worth knowing, asserted as it is -------------------------------


def observed(case: MaterializedCase, target: Target) -> str:
    """What ``target`` does on ``case``, run even where it declares the case out of contract."""
    out, lse = target.run(case)
    if not bool(torch.isfinite(out).all()):
        return "nonfinite"
    verdict = check(case, out, lse if target.capabilities.lse else None, expected(case))
    return "pass" if verdict.passed else "fail"


@pytest.mark.parametrize("path", sorted(FINDINGS.glob("*.json")), ids=lambda p: p.stem)
def test_finding_behaves_as_recorded(path: Path) -> None:
    """A finding's ``expect`` maps targets to what they do: pass, fail or nonfinite."""
    spec = read_case(path)
    for name, want in spec.extra["expect"].items():
        got = observed(materialize(spec, pinned_device()), available(name))
        assert got == want, (f"finding {path.stem} changed on {name}: expected {want}, got "
                             f"{got}; update {path} and docs/gpu.md\n{spec.extra['note']}")


def test_tma_tail_finding_is_declared_by_the_target() -> None:
    """The property tests skip exactly the finding's cases: the target names the finding."""
    fa4 = available("fa4")
    spec = read_case(FINDINGS / "fa4_tma_page_tail_nan.json")
    assert "fa4_tma_page_tail_nan" in (fa4.unsupported_reason(spec, "cuda") or "")
    assert fa4.unsupported_reason(spec.with_changes(poison="finite"), "cuda") is None


# --- FA4 specifics ---------------------------------------------------------------------------


CHUNKED = parse_case({
    "requests": [{"context_len": 200, "query_len": 300, "ranges": [[150, 420]]},
                 {"context_len": 37, "query_len": 90, "ranges": [[0, 60], [100, 126]]}],
    "num_heads": 8, "num_kv_heads": 2, "head_dim": 128, "dtype": "bfloat16", "seed": 11})


@functools.cache
def planted_masks() -> dict[str, Any]:
    """FA4 mask_mods with one real-world bug each (docs/bugs.md classes 1 and 2)."""
    import cutlass
    import cutlass.cute as cute

    @cute.jit
    def chunk_local(batch, head, m_idx, n_idx, seqlen_info, aux_tensors):
        ranges = aux_tensors[0]
        q = m_idx[0]
        j = n_idx[0]
        row = seqlen_info.offset_q + cutlass.min(q, seqlen_info.seqlen_q - 1)
        visible = cute.make_rmem_tensor(1, cutlass.Boolean)
        visible[0] = (j <= q) | ((j >= ranges[row, 0]) & (j <= ranges[row, 1]))
        return visible.load()

    @cute.jit
    def causal_only(batch, head, m_idx, n_idx, seqlen_info, aux_tensors):
        visible = cute.make_rmem_tensor(1, cutlass.Boolean)
        visible[0] = n_idx[0] <= m_idx[0] + seqlen_info.seqlen_k - seqlen_info.seqlen_q
        return visible.load()

    return {"chunk_local": chunk_local, "causal_only": causal_only}


@pytest.mark.parametrize("fault", ["chunk_local", "causal_only"])
def test_policy_catches_a_planted_fa4_mask(fault: str) -> None:
    """The checks that guard FA4 can fail: the same kernel with a wrong mask_mod fails them."""
    fa4 = available("fa4")
    from prefix_referee.verify.targets.fa4 import FA4Target

    class Planted(FA4Target):
        def mask_mod(self) -> Any:
            return planted_masks()[fault]

    planted = Planted()
    planted.name = f"fa4+planted:{fault}"
    assert judge(fa4, CHUNKED).status == Status.PASS
    assert judge(planted, CHUNKED).status == Status.FAIL


def test_window_clamp_and_ranges_reuse_one_kernel() -> None:
    """Window, clamp and ranges are runtime data: changing them compiles nothing new."""
    fa4 = available("fa4")
    from flash_attn.cute.interface import _flash_attn_fwd

    assert judge(fa4, CHUNKED).status == Status.PASS
    compiled = len(_flash_attn_fwd.compile_cache.cache)
    for changes in ({"sliding_window": 9}, {"sliding_window": 64, "clamp_ranges_to_window": True},
                    {"requests": [{"context_len": 200, "query_len": 300, "ranges": [[0, 499]]},
                                  {"context_len": 37, "query_len": 90}]}):
        assert judge(fa4, CHUNKED.with_changes(**changes)).status == Status.PASS
    assert len(_flash_attn_fwd.compile_cache.cache) == compiled


def test_tile_table_matches_fa4() -> None:
    """The finding's predicate uses a copy of FA4's SM90 tile table: keep it in step."""
    available("fa4")
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the table is FA4's SM90 one")
    from flash_attn.cute.interface import _tile_size_fwd_sm90

    from prefix_referee.verify.targets.fa4 import sm90_tile_n

    for d in (64, 96, 128, 192, 256):
        assert sm90_tile_n(d, d) == _tile_size_fwd_sm90(d, d, False, False).n_block_size


class EngineTarget(Target):
    """A two-call engine (``fa4_causal`` / ``fa4_dense``) over a whole case."""

    def __init__(self, engine: Any) -> None:
        from prefix_referee.verify.targets.fa4 import FA4Target

        super().__init__(engine.__name__, capabilities=FA4Target().capabilities)
        self.engine = engine

    def run(self, case: MaterializedCase) -> tuple[torch.Tensor, torch.Tensor | None]:
        paged = case.page_size is not None
        extra: dict[str, Any] = {"softcap": case.softcap, "sliding_window": case.sliding_window}
        if paged:
            extra.update(seqused_k=case.seqused_k, page_table=case.page_table)
        return self.engine(case.q, case.k_cache if paged else case.k,
                           case.v_cache if paged else case.v, case.cu_seqlens_q,
                           None if paged else case.cu_seqlens_k, case.max_seqlen_q,
                           case.max_seqlen_k, case.softmax_scale, **extra)


@pytest.mark.parametrize("page_size", [None, 64])
def test_fa4_engines_match_their_masks(page_size: int | None) -> None:
    """fa4_causal on range-free cases, fa4_dense on cases whose one range spans each request.

    A window clamped onto such a range is exactly the dense call's left window.
    """
    available("fa4")
    from prefix_referee.verify.targets.fa4 import fa4_causal, fa4_dense

    lengths = [(0, 300), (120, 77), (5, 1)]
    causal = parse_case({"requests": [{"context_len": c, "query_len": n} for c, n in lengths],
                         "num_heads": 8, "num_kv_heads": 4, "head_dim": 64, "dtype": "float16",
                         "page_size": page_size, "seed": 5})
    dense = causal.with_changes(requests=[
        {"context_len": c, "query_len": n, "ranges": [[0, c + n - 1]]} for c, n in lengths])
    windowed = {"sliding_window": 40, "softcap": 30.0}
    for engine, spec in ((fa4_causal, causal), (fa4_causal, causal.with_changes(**windowed)),
                         (fa4_dense, dense), (fa4_dense, dense.with_changes(
                             **windowed, clamp_ranges_to_window=True))):
        outcome = judge(EngineTarget(engine), spec)
        assert outcome.status == Status.PASS, f"{engine.__name__}: {outcome.summary()}"



# --- the float64 reference's CUDA path ------------------------------------------------------


@pytest.mark.parametrize(("changes", "bias"), [
    ({}, None), ({"softcap": 5.0, "num_kv_heads": 8}, None),
    ({"sliding_window": 77, "clamp_ranges_to_window": True, "page_size": 16}, None),
    ({"softmax_scale": 3.0, "dtype": "float32"}, None), ({}, overlap_weight)],
    ids=["plain", "softcap_mha", "window_clamp", "huge_scores", "bias"])
def test_fast_reference_matches_plain_on_cuda(changes: dict, bias: Any) -> None:
    """CUDA's default (fused Triton exp pass, no max when scores are bounded) vs the plain path."""
    spec = CHUNKED.with_changes(**changes)
    case = materialize(spec, pinned_device())
    batch = case.batch(None if bias is None else bias(case))
    fast = reference_attention(batch)
    plain = reference_attention(batch, method="plain")
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-12, atol=1e-12)
    assert torch.equal(torch.isneginf(fast[1]), torch.isneginf(plain[1]))
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-12, atol=1e-12)
