#!/usr/bin/env bash
# lm-evaluation-harness's own `hf` model beside the `qkscore` model (the profile's head reader
# answering each multiple-choice document), on the same packaged task and test split, with
# lm-eval's accuracy and standard error and the wall time of each run. The qkscore run
# calibrates on the task's validation split first, inside the timed run.
#   bash benchmarks/lm_eval_compare.sh [MODEL ...]   (default: smollm2-135m qwen2.5-coder-0.5b)
#   TASKS="qkscore_prontoqa_distractors" ...         (default: MMLU logic subset and ProntoQA)
#   LIMIT=100 ...     lm-eval --limit: the first N test documents (default: the whole split)
#   CALIB=100 ...     calib_size: a balanced subset of the validation split (default: all;
#                     ignored where the split is smaller, as on MMLU)
#   DTYPE=bfloat16 DEVICE=cpu BATCH=8 OUT=runs/lm_eval_compare
# Needs the lm-eval extra; runs offline. Prints a markdown table (also OUT/table.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export QKSCORE_SHARED_DATA=${QKSCORE_SHARED_DATA:-../shared/data}
TASKS=${TASKS:-"qkscore_mmlu_logic qkscore_prontoqa_distractors"}
DTYPE=${DTYPE:-bfloat16}
DEVICE=${DEVICE:-cpu}
BATCH=${BATCH:-8}
OUT=${OUT:-runs/lm_eval_compare}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(smollm2-135m qwen2.5-coder-0.5b)
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
calib=""
[ -n "${CALIB:-}" ] && calib=",calib_size=$CALIB"

timed() {  # timed DIR CMD...: run CMD, keep its log and its wall time in DIR
  local dir=$1; shift
  mkdir -p "$dir"
  local start end
  start=$(date +%s.%N)
  "$@" >"$dir/log.txt" 2>&1 || { tail -20 "$dir/log.txt"; exit 1; }
  end=$(date +%s.%N)
  echo "$start $end" | awk '{printf "%.1f\n", $2 - $1}' >"$dir/wall_s"
}

for model in "${MODELS[@]}"; do
  # lm-eval's hf model loads the same weights from qkscore's converted folder (or a hub id)
  weights=$("$PY" -c "
import sys
from qkscore.models.aliases import get_alias
from qkscore.models.loading import ensure_converted
alias = get_alias(sys.argv[1])
print(ensure_converted(alias) if alias else sys.argv[1])" "$model")
  for task in $TASKS; do
    dir=$OUT/$model/$task
    echo "== $model $task: hf" >&2
    timed "$dir/hf" "$PY" -m qkscore lm-eval run --model hf \
      --model_args "pretrained=$weights,dtype=$DTYPE" --tasks "$task" "${limit[@]}" \
      --device "$DEVICE" --batch_size "$BATCH" --output_path "$dir/hf"
    echo "== $model $task: qkscore" >&2
    timed "$dir/qkscore" "$PY" -m qkscore lm-eval run --model qkscore \
      --model_args "pretrained=$model,calibrate=$task,dtype=$DTYPE,calibrate_out=$dir/calibration$calib" \
      --tasks "$task" "${limit[@]}" --device "$DEVICE" --batch_size "$BATCH" \
      --output_path "$dir/qkscore"
  done
done

"$PY" - "$OUT" <<'PY' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| model | task | lm-eval model | n | acc ± stderr | wall s |")
print("|---|---|---|---|---|---|")
for wall in sorted(out.glob("*/*/*/wall_s")):
    run = wall.parent
    found = sorted(run.rglob("results_*.json"))
    if not found:
        continue
    res = json.loads(found[-1].read_text())
    task = run.parent.name
    r = res["results"][task]
    n = res.get("n-samples", {}).get(task, {}).get("effective", "?")
    model = run.parent.parent.name
    print(f"| {model} | {task} | {run.name} | {n} | {r['acc,none']:.3f} ± "
          f"{r['acc_stderr,none']:.3f} | {float(wall.read_text()):.0f} |")
PY
