#!/usr/bin/env bash
# One short GPU run: scan throughput (items/s) of Qwen2.5-Coder-1.5B at batch 1, 8 and 32 on
# ProntoQA, and extraction time against a plain forward pass at the same shapes.
#
#   benchmarks/gpu_check.sh [MODEL] [SHARED_DATA]
#
# MODEL: an alias or folder (default qwen2.5-coder-1.5b). A folder holding only config and
# tokenizer files is built with random weights (same shapes, same speed), which is how the
# check runs on a lent GPU machine that the 7 GB of weights cannot reach:
#
#   mkdir -p .gpu/qwen1.5b && cp ~/.cache/qkscore/models/qwen2.5-coder-1.5b-*/{config,tokenizer,tokenizer_config}.json .gpu/qwen1.5b/
#   (and copy ../shared/data/prontoqa to .gpu/data/prontoqa; .gpu/ is git-ignored)
#   benchmarks/gpu_check.sh .gpu/qwen1.5b .gpu/data
#
# How it ran on this workplace's lent H200 (whose image has torch but an older transformers
# and no platformdirs): carry .gpu/ holding that config folder, the data and two wheels
# (`pip download --no-deps --python-version 3.12 -d .gpu/whl transformers==5.24.0
# platformdirs`), then run: pip install --no-deps --target /tmp/site .gpu/whl/*.whl &&
# PYTHONPATH=/tmp/site bash benchmarks/gpu_check.sh .gpu/qwen1.5b .gpu/data
#
# Where no GPU is present the script says so and exits 0 (GPU_CHECK_DEVICE=cpu forces a tiny
# run on the CPU, to test the script itself). Budget: about 3 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-qwen2.5-coder-1.5b}
SHARED=${2:-../shared/data}
PY=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c 'import torch' || { echo "gpu_check: $PY cannot import torch (set PYTHON=...)"; exit 1; }
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check: no GPU on this machine (torch.cuda.is_available() is False); nothing measured."
  exit 0
fi
"$PY" - <<'EOF'
import torch, transformers
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, GPU: {gpu}")
EOF

INIT=()
if [ -d "$MODEL" ] && ! ls "$MODEL"/*.safetensors >/dev/null 2>&1; then INIT=(--random-init); fi
if [ "$DEVICE" = cuda ]; then
  ITEMS=256 BATCHES=1,8,32 REPEATS=3 CASES=256x1,256x32,1024x1,1024x8 XREP=10
else
  ITEMS=4 BATCHES=1,2 REPEATS=1 CASES=32x1 XREP=1
fi

echo; echo "## scan throughput (qkscore.scanning.scan, answer-statement template, bf16)"
"$PY" benchmarks/bench_scan.py --model "$MODEL" "${INIT[@]}" --device "$DEVICE" \
  --shared "$SHARED" --items "$ITEMS" --batches "$BATCHES" --repeats "$REPEATS"

echo; echo "## extraction against a plain forward (16 pairs a row, 2 candidate tokens)"
"$PY" benchmarks/bench_extract.py --models "$MODEL" "${INIT[@]}" --device "$DEVICE" \
  --data "$SHARED" --cases "$CASES" --modes plain,plain_last,prerope,rope \
  --repeats "$XREP" --budget 5 --threads 0
