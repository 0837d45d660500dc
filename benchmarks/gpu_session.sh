#!/usr/bin/env bash
# One GPU session (docs/gpu.md): device and versions, the float64 reference's throughput (alone
# on the GPU), then the FA4 probe (compile times, paged-poison behaviour) beside the GPU tier for
# FA4, FA4's golden replay and the FA4/reference CPU tests, then the tier for the two-call
# family on the FA4 engine.
# Run on the GPU machine from the repository root after `source .gpu/b/install.sh`:
#   bash benchmarks/gpu_session.sh OUTDIR [XDIST_WORKERS]
# Each step has its own time limit so that the logs of the others come back.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR [XDIST_WORKERS]}
workers=${2:-8}
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu
mkdir -p "$out"
tier() {  # tier NAME SECONDS -k-EXPRESSION
  timeout "$2" python3 -m pytest -p no:cacheprovider tests/test_gpu_tier.py tests/test_golden.py \
    tests/test_fa4_cpu.py -k "$3" -n "$workers" --stats-file "$out/stats-$1.json" --durations=20 -q -rfEs 2>&1 \
    | tee "$out/tier-$1.log"
}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, importlib.metadata as m; print('torch', torch.__version__, 'triton', triton.__version__, 'flash-attn-4', m.version('flash-attn-4'), 'cutlass-dsl', m.version('nvidia-cutlass-dsl'))"
  echo "== reference throughput"
  timeout "${THROUGHPUT_TIMEOUT:-120}" python3 -m benchmarks.reference_throughput --fa4 --plain --profile \
    --json "$out/throughput.json"
  echo "== fa4 probe (beside the fa4 tier)"
} 2>&1 | tee "$out/session.log"
timeout "${PROBE_TIMEOUT:-150}" python3 -m benchmarks.fa4_probe --json "$out/probe.jsonl" \
  >> "$out/session.log" 2>&1 &
probe=$!
tier fa4 "${FA4_TIER_TIMEOUT:-240}" "(gpu_tier and not two_call and not replace) or (golden and fa4) or fa4_cpu"
wait "$probe"
tier two-call "${TWO_CALL_TIER_TIMEOUT:-150}" "gpu_tier and (two_call or replace)"
