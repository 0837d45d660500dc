#!/usr/bin/env bash
# The GPU benchmarks and the GPU tier in one go (docs/gpu.md), on a machine with two GPUs
# (cuda:0 and cuda:1; with one GPU, run the single commands docs/gpu.md lists). Run from
# the repository root, in an environment with the suite's gpu and test extras installed:
#   bash benchmarks/gpu_session.sh OUT main   # GPU 0: 180 s of fa4, then of two_call_fa4,
#                                             #   the reference's throughput, compiled Flex;
#                                             # GPU 1: 180 s of triton, then the GPU tier and
#                                             #   the golden replay (one GPU, timed)
#   bash benchmarks/gpu_session.sh OUT scale  # 1 worker against 2 GPUs (triton, fa4);
#                                             #   the Gemma-4 kernel table
#   bash benchmarks/gpu_session.sh OUT checks # one GPU: Triton at head dim 512, kernels that
#                                             #   hang or fill the GPU, FP8 KV caches (500
#                                             #   cases per target, the Gemma-4 FP8 table),
#                                             #   the fuzz throughput of fa4, triton and
#                                             #   two_call_fa4 (BUDGET seconds each)
# BUDGET (default 180) and SCALE_BUDGET (default 60) set the seconds of each fuzzing run;
# THROUGHPUT_TARGETS the targets whose throughput the checks part measures.
# Each step has its own time limit, so one that hangs does not hold up the others. For
# convenience, every log and JSON file of a part is packed into OUT/<part>.tgz, and the
# key lines are printed.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT main|scale|checks}
part=${2:?usage: gpu_session.sh OUT main|scale|checks}
budget=${BUDGET:-180}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu NCCL_NVLS_ENABLE=0
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -m fuzz --version
} > "$work/versions.log" 2>&1

throughput() {  # throughput TARGET DEVICES
  timeout $((budget + 150)) python3 -m benchmarks.fuzz_throughput --target "$1" \
    --budget "$budget" --devices "$2" --json "$work/throughput-$1.json" \
    > "$work/throughput-$1.log" 2>&1
}

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
    timeout 100 python3 -m fuzz --target triton --target flex --target sdpa \
      --target reference --kv-dtype float8_e4m3fn --device cuda --examples 500 --seed 1 \
      --report-dir "$work/fp8" > "$work/fp8-fuzz.log" 2>&1
    echo "fp8 fuzz exit $?" >> "$work/fp8-fuzz.log"
    timeout 90 python3 -m benchmarks.prefix_kernels --layout gemma4 \
      --kv-dtype float8_e4m3fn --json "$work/gemma4-fp8.json" > "$work/gemma4-fp8.log" 2>&1
    for target in ${THROUGHPUT_TARGETS:-fa4 triton two_call_fa4}; do
      throughput "$target" cuda:0
    done
    ;;
esac
tar czf "$out/$part.tgz" -C "$work" --exclude='*/run-*' .
grep -h -E "judged |x on|exit|passed|failed|fraction|fastest|peak|PASS|FAIL|Error" \
  "$work"/*.log | grep -v "━" | cut -c1-220 | tail -40
