#!/usr/bin/env bash
# GPU sessions (docs/gpu.md), in two parts that each fit one device call. Run on the GPU
# machine from the repository root after `source .gpu/b/install.sh`:
#   bash benchmarks/gpu_session.sh OUTDIR tier     # smoke fuzz; throughput of fa4 and triton
#                                                  # (one GPU each), two_call_fa4 beside the
#                                                  # GPU tier on the other GPU
#   bash benchmarks/gpu_session.sh OUTDIR scale    # 1 GPU against 2; reference throughput;
#                                                  # the Gemma-4 kernel table; compiled Flex
# Every step has its own time limit so the logs of the others come back; the tier part
# stops after the smoke run if that run could not judge anything.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUTDIR tier|scale}
part=${2:?usage: gpu_session.sh OUTDIR tier|scale}
budget=${BUDGET:-180}
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu NCCL_NVLS_ENABLE=0
mkdir -p "$out"
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -m fuzz --version
} 2>&1 | tee "$out/versions.log"

throughput() {  # throughput NAME DEVICES TARGET...
  local name=$1 devices=$2
  shift 2
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  timeout $((budget * $# + 150)) python3 -m benchmarks.fuzz_throughput "${targets[@]}" \
    --budget "$budget" --devices "$devices" --json "$out/throughput-$name.json" \
    > "$out/throughput-$name.log" 2>&1
}

if [ "$part" = tier ]; then
  timeout 150 python3 -m fuzz --device cuda --devices cuda:0 --budget 60 --seed 1 \
    --report-dir "$out/smoke" > "$out/smoke.log" 2>&1
  echo "smoke exit $?" >> "$out/smoke.log"
  grep -q "judged" "$out/smoke.log" || { echo "smoke judged nothing: stopping"; exit 1; }
  throughput fa4 cuda:0 fa4 &
  first=$!
  throughput triton cuda:1 triton &
  second=$!
  wait "$first" "$second"
  throughput two-call cuda:0 two_call_fa4 &
  first=$!
  CUDA_VISIBLE_DEVICES=1 timeout 300 python3 -m pytest -p no:cacheprovider \
    tests/test_gpu_tier.py tests/test_golden.py -n 4 --stats-file "$out/stats-tier.json" \
    --durations=15 -q -rfEs > "$out/tier.log" 2>&1
  echo "tier exit $? in ${SECONDS}s of the session" >> "$out/tier.log"
  wait "$first"
else
  SCALE_BUDGET=${SCALE_BUDGET:-60}
  for t in fa4 triton; do
    timeout $((SCALE_BUDGET * 2 + 120)) python3 -m benchmarks.fuzz_throughput --target "$t" \
      --budget "$SCALE_BUDGET" --devices cuda:0,cuda:1 --compare-devices \
      --json "$out/scale-$t.json" > "$out/scale-$t.log" 2>&1
  done
  timeout 120 python3 -m benchmarks.reference_throughput --fa4 --plain \
    --json "$out/reference.json" > "$out/reference.log" 2>&1
  timeout 200 python3 -m benchmarks.prefix_kernels --layout gemma4 \
    > "$out/gemma4.log" 2>&1
  timeout 150 python3 -m benchmarks.flex_memory > "$out/flex.log" 2>&1
fi
ls -la "$out"
