#!/usr/bin/env bash
# GPU sessions (docs/gpu.md) on a 2-GPU H200 machine, in parts that each fit one device
# call. Run from the repository root after `source .gpu/b/install.sh`:
#   bash benchmarks/gpu_session.sh OUT throughput  # a smoke run, then 180 s of fa4 (GPU 0)
#                                                  # beside 180 s of triton (GPU 1)
#   bash benchmarks/gpu_session.sh OUT tier        # 180 s of two_call_fa4 (GPU 0) beside the
#                                                  # GPU tier and golden replay (GPU 1 alone)
#   bash benchmarks/gpu_session.sh OUT scale       # 1 GPU against 2 (fa4, triton); reference
#                                                  # throughput; the Gemma-4 table; Flex memory
# Each step has its own time limit so the others' logs come back; everything of a part is
# packed into OUT/<part>.tgz (the device tool returns few files) and the key lines printed.
set -uo pipefail
out=${1:?usage: gpu_session.sh OUT throughput|tier|scale}
part=${2:?usage: gpu_session.sh OUT throughput|tier|scale}
budget=${BUDGET:-180}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1 HYPOTHESIS_PROFILE=gpu NCCL_NVLS_ENABLE=0
{
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv
  python3 -m fuzz --version
} > "$work/versions.log" 2>&1

throughput() {  # throughput NAME DEVICES TARGET
  timeout $((budget + 240)) python3 -m benchmarks.fuzz_throughput --target "$3" \
    --budget "$budget" --devices "$2" --json "$work/throughput-$1.json" \
    > "$work/throughput-$1.log" 2>&1
}

case "$part" in
  throughput)
    timeout 240 python3 -m fuzz --device cuda --devices cuda:0 --budget 60 --seed 1 \
      --report-dir "$work/smoke" > "$work/smoke.log" 2>&1
    echo "smoke exit $?" >> "$work/smoke.log"
    cp "$work"/smoke/latest/report.json "$work/smoke-report.json" 2>/dev/null
    if grep -q "judged" "$work/smoke.log"; then
      throughput fa4 cuda:0 fa4 &
      first=$!
      throughput triton cuda:1 triton &
      wait "$first" "$!"
    fi
    ;;
  tier)
    throughput two-call cuda:0 two_call_fa4 &
    first=$!
    start=$SECONDS
    CUDA_VISIBLE_DEVICES=1 timeout 330 python3 -m pytest -p no:cacheprovider \
      tests/test_gpu_tier.py tests/test_golden.py \
      tests/test_flex.py::test_cuda_flex_passes_with_lse_and_one_graph_per_key -n 4 \
      --stats-file "$work/stats-tier.json" --durations=20 -q -rfEs > "$work/tier.log" 2>&1
    echo "tier exit $? after $((SECONDS - start)) s" >> "$work/tier.log"
    wait "$first"
    ;;
  scale)
    for t in fa4 triton; do
      timeout $((2 * ${SCALE_BUDGET:-45} + 200)) python3 -m benchmarks.fuzz_throughput \
        --target "$t" --budget "${SCALE_BUDGET:-45}" --devices cuda:0,cuda:1 --compare-devices \
        --json "$work/scale-$t.json" > "$work/scale-$t.log" 2>&1
    done
    timeout 100 python3 -m benchmarks.reference_throughput --fa4 --plain \
      --json "$work/reference.json" > "$work/reference.log" 2>&1
    timeout 150 python3 -m benchmarks.prefix_kernels --layout gemma4 \
      --json "$work/gemma4.json" > "$work/gemma4.log" 2>&1
    timeout 120 python3 -m benchmarks.flex_memory --device cuda > "$work/flex.log" 2>&1
    ;;
esac
rm -rf "$work/smoke"
tar czf "$out/$part.tgz" -C "$work" .
grep -h -E "judged|isolation|x on|exit|passed|failed|error|Error|fraction|fastest|peak|PASS|FAIL" \
  "$work"/*.log | grep -v "━" | tail -60
