#!/usr/bin/env bash
# The GPU checks in one device call, step by step, each with its own time limit:
#   tests        the test suite on CUDA (real models on the GPU too), conformance aside
#                (TESTS_TIMEOUT, default 330 s)
#                (TESTS="tests/quant tests/cli" for a part)
#   conformance  the ONNX node tests on CUDA (KILN_CONFORMANCE_CUDA=1), counts at the end
#   int8         bench/peers.py INT8/FP8/FP16 engines on ResNet-50 and BERT
#                (INT8_MODELS, INT8_PRECISIONS, INT8_BATCHES, INT8_TIMEOUT to choose;
#                INT8_EXTRA: more flags, e.g. --profile)
#   kernels      bench/int8_kernels.py with KERNELS_ARGS (KERNELS_TIMEOUT, default 300 s)
#   rebuild      ResNet-50 FP16 built twice with one timing cache: cold, then warm build time
#   peers        kiln FP16 beside eager and torch.compile on ResNet-50, BERT, ViT at batch 1
#                and throughput (PEERS_MODELS, PEERS_PEERS, PEERS_TIMEOUT to choose)
# Usage: tools/gpu_check.sh tests conformance      (logs under $OUT, a short table last)
# Missing Python packages travel as wheels in .whl (see the device notes); installed first.
set -u
OUT=${OUT:-/tmp/kiln-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 KILN_TEST_DEVICE=cuda
export KILN_SHARED_MODELS=${KILN_SHARED_MODELS:-.cache/shared-models}
python3 -c "import torch, onnx, onnxruntime, triton; print('torch', torch.__version__, \
'onnx', onnx.__version__, 'ort', onnxruntime.__version__, 'triton', triton.__version__, \
torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
summary=()
tally() { # name, log: the pytest summary line
  summary+=("$(printf '%-12s %s' "$1" "$(grep -E '^(=+ )?[0-9]+ (passed|failed)' "$2" | tail -1)")")
}
for step in "$@"; do
  case $step in
    tests)
      timeout "${TESTS_TIMEOUT:-330}" python3 -m pytest -n 8 -q -p no:cacheprovider --timeout 240 -o addopts= \
        --ignore=tests/conformance --maxfail=40 ${TESTS:-tests} 2>&1 | tee "$OUT/tests.log" | tail -40
      tally tests "$OUT/tests.log" ;;
    conformance)
      KILN_CONFORMANCE_CUDA=1 timeout 400 python3 -m pytest -n 16 -q -p no:cacheprovider \
        --timeout 120 -o addopts= -k _cuda --max-worker-restart 400 -rf \
        tests/conformance/test_onnx_backend.py 2>&1 | tee "$OUT/conformance.log" \
        | grep -E "^(FAILED|ERROR|\[gw)|passed|failed" | cut -c1-220 | tail -60
      tally conformance "$OUT/conformance.log" ;;
    int8)
      timeout "${INT8_TIMEOUT:-420}" python3 bench/peers.py --models "${INT8_MODELS:-resnet50,bert}" \
        --batches "${INT8_BATCHES:-1,throughput}" --peers kiln --precisions "${INT8_PRECISIONS:-fp16,int8,fp8}" \
        --out "$OUT" ${INT8_EXTRA:-} 2>&1 | tee "$OUT/int8.log" | tail -30
      summary+=("int8         see int8.log") ;;
    kernels)
      timeout "${KERNELS_TIMEOUT:-300}" python3 bench/int8_kernels.py ${KERNELS_ARGS:-} \
        > "$OUT/kernels.log" 2>&1
      grep -v '^\s*$' "$OUT/kernels.log" | grep -v '^layer ' | cut -c1-100 | tail -90
      summary+=("kernels      see kernels.log") ;;
    rebuild)
      rm -f /tmp/kiln-timing.json
      for run in cold warm; do
        timeout 200 python3 bench/peers.py --models resnet50 --batches 1 --peers kiln \
          --precisions fp16 --timing-cache /tmp/kiln-timing.json --out "$OUT/$run" \
          > "$OUT/rebuild-$run.log" 2>&1
        summary+=("$(printf '%-12s %s' "build $run" "$(grep -m1 'build kiln_fp16' \
          "$OUT/rebuild-$run.log")")")
      done ;;
    peers)
      timeout "${PEERS_TIMEOUT:-420}" python3 bench/peers.py --models "${PEERS_MODELS:-resnet50,bert,vit}" \
        --batches 1,throughput --peers "${PEERS_PEERS:-kiln,eager,compile}" --precisions fp16 \
        --out "$OUT/peers" 2>&1 | tee "$OUT/peers.log" | grep -A40 "=== summary" | tail -40
      summary+=("peers        see peers.log") ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
