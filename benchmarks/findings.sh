#!/usr/bin/env bash
# The readers issue's measurements: scan, calibrate (400 balanced items, every reader chosen by
# cross-validation on them) and evaluate Qwen2.5-Coder 0.5B and 1.5B on ProntoQA (fictional,
# 1-5 hops, with and without distractors), the built-in generator with distractors, debiased
# PARARULE-Plus and Multi-LogiEval, with the context-ablated shortcut control. Every scan is
# resumable: run this script again after an interruption and it continues where it stopped.
#   bash benchmarks/findings.sh [MODEL ...]      (default: both Qwen sizes)
#   ORDER="prontoqa-nodistractor prontoqa" ...   (a subset of the sets, in that order; also
#     multi-logieval-debiased and prontoqa-ood-composed, issue 20's rows)
#   ORDER=generated-nodistractor bash benchmarks/findings.sh smollm2-135m   (the SmolLM2 row)
#   SCAN_ONLY=1 ...                              (scans only; calibrate and evaluate later)
# Results: runs/findings/<model>/<set>/{run/,profile.json,evaluation.json,summary.md}
# Table: python benchmarks/findings_table.py
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-.venv/bin/qkscore}
SHARED=${QKSCORE_SHARED_DATA:-../shared/data}
N=${N:-600}
source benchmarks/_sets.sh
ORDER=${ORDER:-"prontoqa-nodistractor prontoqa generated-distractors pararule-debiased multi-logieval"}
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(qwen2.5-coder-0.5b qwen2.5-coder-1.5b)
for model in "${MODELS[@]}"; do
  for set in $ORDER; do
    out=runs/findings/$model/$set
    mkdir -p "$out"
    echo "=== $model / $set  ($(date -u +%H:%M:%S))"
    $QK scan --model "$model" --data "${SETS[$set]}" --template answer-statement \
      --out "$out/run" --control context-ablated --attention --batch-size 8
    [ -n "${SCAN_ONLY:-}" ] && continue
    $QK calibrate "$out/run" --out "$out/profile.json" --calib-size "${CALIB_OF[$set]:-400}" \
      --reader auto
    $QK evaluate "$out/run" --profile "$out/profile.json" --out "$out/evaluation.json" \
      | tee "$out/summary.md"
  done
done
