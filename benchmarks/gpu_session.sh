#!/usr/bin/env bash
# The GPU benchmarks and the GPU tier in one go (docs/gpu.md). Run from the repository
# root, in an environment with the suite's gpu and test extras installed:
#   bash benchmarks/gpu_session.sh OUT PART [PART ...]
# PART is one of
#   main        two GPUs (cuda:0, cuda:1). GPU 0: BUDGET s of fa4, then of two_call_fa4, the
#               reference's throughput, compiled Flex; GPU 1: BUDGET s of triton, then the
#               GPU tier and the golden replay (one GPU, timed)
#   scale       two GPUs: 1 worker against 2 GPUs (triton, fa4); the Gemma-4 kernel table
#   checks      one GPU: Triton at head dim 512, kernels that hang or fill the GPU, FP8 bits,
#               the Gemma-4 FP8 table
#   fp8         one GPU: 500 FP8-cache cases for each of FP8_TARGETS (default flex, sdpa,
#               triton, reference), one run each, each within FP8_LIMIT s (default 280)
#   throughput  one GPU: the fuzz throughput of each of THROUGHPUT_TARGETS (default fa4,
#               triton, two_call_fa4), BUDGET s each
#   invariance  one GPU: which properties beyond tolerance fa4, triton, flex and
#               two_call_fa4 hold (python -m fuzz --invariance, INVARIANCE_BUDGET s)
# THROUGHPUT_FLAGS go to benchmarks.fuzz_throughput (e.g. --compare-checks, with
# THROUGHPUT_RUNS=2 runs a target). BUDGET (default 180), SCALE_BUDGET (default 60) and INVARIANCE_BUDGET (default 240) set
# the seconds of each fuzzing run. Each step has its own time limit, so one that hangs
# does not hold up the others. For convenience, every log and JSON file of a part is packed
# into OUT/<part>.tgz, and the key lines are printed.
set -uo pipefail
usage="usage: gpu_session.sh OUT main|scale|checks|fp8|throughput|invariance ..."
out=${1:?$usage}
shift
[ $# -gt 0 ] || { echo "$usage" >&2; exit 2; }
budget=${BUDGET:-180}
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu NCCL_NVLS_ENABLE=0
versions() {
  {
    nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
    python3 -m fuzz --version
  } > "$work/versions.log" 2>&1
}

throughput() {  # throughput TARGET DEVICES
  timeout $(((budget + 75) * ${THROUGHPUT_RUNS:-1})) python3 -m benchmarks.fuzz_throughput \
    --target "$1" --budget "$budget" --devices "$2" ${THROUGHPUT_FLAGS:-} \
    --json "$work/throughput-$1.json" \
    > "$work/throughput-$1.log" 2>&1
}

for part in "$@"; do
work=$(mktemp -d)
versions
case "$part" in
  main)
    (
      throughput fa4 cuda:0
      throughput two_call_fa4 cuda:0
      CUDA_VISIBLE_DEVICES=0 timeout 60 python3 -m benchmarks.reference_throughput --fa4 \
        --json "$work/reference.json" > "$work/reference.log" 2>&1
      CUDA_VISIBLE_DEVICES=0 timeout 90 python3 -m benchmarks.flex_memory --device cuda \
        > "$work/flex.log" 2>&1
    ) &
    first=$!
    throughput triton cuda:1
    start=$SECONDS
    CUDA_VISIBLE_DEVICES=1 timeout 300 python3 -m pytest -p no:cacheprovider \
      tests/test_gpu_tier.py tests/test_golden.py \
      tests/test_flex.py::test_cuda_flex_passes_with_lse_and_one_graph_per_key -n 4 \
      --stats-file "$work/stats-tier.json" --durations=20 -q -rfEs > "$work/tier.log" 2>&1
    echo "tier exit $? after $((SECONDS - start)) s" >> "$work/tier.log"
    wait "$first"
    ;;
  scale)
    # A short run first fills Triton's disk cache, so neither side of the comparison
    # pays for compiles the other one skips.
    scale=${SCALE_BUDGET:-60}
    timeout 90 python3 -m benchmarks.fuzz_throughput --target triton --budget 15 \
      --devices cuda:0,cuda:1 > "$work/warm.log" 2>&1
    for target in triton fa4; do
      timeout $((2 * scale + 120)) python3 -m benchmarks.fuzz_throughput --target "$target" \
        --budget "$scale" --devices cuda:0,cuda:1 --compare-devices \
        --json "$work/scale-$target.json" > "$work/scale-$target.log" 2>&1
    done
    timeout 110 python3 -m benchmarks.prefix_kernels --layout gemma4 \
      --json "$work/gemma4.json" > "$work/gemma4.log" 2>&1
    ;;
  checks)
    gpu_tests() {  # gpu_tests LOG LIMIT PYTEST-ARGS...
      local log=$1 limit=$2; shift 2
      timeout "$limit" python3 -m pytest -p no:cacheprovider -m gpu -q -rfEs "$@" \
        > "$work/$log.log" 2>&1
      echo "$log exit $?" >> "$work/$log.log"
    }
    gpu_tests d512 100 tests/test_triton_target.py -k "head_dims_to_512 or compiled_on_gpu"
    gpu_tests containment 90 tests/test_isolation.py -k hangs_or_fills
    gpu_tests fp8-bits 45 tests/test_fp8_kv.py
    timeout 90 python3 -m benchmarks.prefix_kernels --layout gemma4 \
      --kv-dtype float8_e4m3fn --json "$work/gemma4-fp8.json" > "$work/gemma4-fp8.log" 2>&1
    ;;
  fp8)
    for target in ${FP8_TARGETS:-flex sdpa triton reference}; do
      timeout "${FP8_LIMIT:-280}" python3 -m fuzz --target "$target" --kv-dtype float8_e4m3fn \
        --device cuda --examples 500 --seed 1 --no-plots --report-dir "$work/fp8-$target" \
        > "$work/fp8-$target.log" 2>&1
      echo "fp8 $target exit $?" >> "$work/fp8-$target.log"
    done
    ;;
  throughput)
    for target in ${THROUGHPUT_TARGETS:-fa4 triton two_call_fa4}; do
      throughput "$target" cuda:0
    done
    ;;
  invariance)
    limit=${INVARIANCE_BUDGET:-240}
    timeout $((limit + 150)) python3 -m fuzz --invariance --device cuda --target fa4 \
      --target triton --target flex --target two_call_fa4 --budget "$limit" --seed 0 \
      --report-dir "$work/invariance" > "$work/invariance.log" 2>&1
    echo "invariance exit $?" >> "$work/invariance.log"
    cp "$work"/invariance/latest/report.json "$work/invariance-report.json" 2>/dev/null
    ;;
  *)
    echo "$usage" >&2; exit 2
    ;;
esac
tar czf "$out/$part.tgz" -C "$work" --exclude='*/run-*' .
echo "== $part"
grep -h -E "judged |x on|exit|passed|failed|fraction|fastest|peak|PASS|FAIL|Error|claimed|holds|^│ [a-z]|replaced" \
  "$work"/*.log | grep -v "━" | cut -c1-220 | tail -40
done
