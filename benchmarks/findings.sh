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
PRONTO=$SHARED/prontoqa/truefalse_0shot
declare -A SETS=(
  [prontoqa]="prontoqa:$PRONTO/*hop_0shot_random.json?sample=$N&balance=1&seed=0"
  [prontoqa-nodistractor]="prontoqa:$PRONTO/*hop_0shot_random_nodistractor.json?sample=$N&balance=1&seed=0"
  [generated-distractors]="generated:depth=1-3&n=$N&distractors=1&seed=0"
  [generated-nodistractor]="generated:depth=1-3&n=$N&distractors=0&seed=0"
  [pararule-debiased]="pararule-plus:$SHARED/pararule_plus/Depth*/*_test.jsonl?debias=1&sample=$N&balance=1&seed=0"
  [multi-logieval]="multi-logieval:$SHARED/multi_logieval/data?sample=$N&balance=1&seed=0"
  # wording alone gives the label on the raw set (statement-only 0.714 balanced): 594 items
  [multi-logieval-debiased]="multi-logieval:$SHARED/multi_logieval/data?debias=1&seed=0"
  # PrOntoQA-OOD Composed 2-4 hops, goal/negation pairs matched (328 items); still FLAGGED by
  # shallow matching (benchmarks/ood_audit.py): no distractors, so overlap reads the label
  [prontoqa-ood-composed]="prontoqa-ood:$SHARED/prontoqa/ood_proofs_only_8shot/*Composed*.json?debias=1&seed=0"
)
# calibration items per set (400 unless named): a set too small for 400 keeps a test split
declare -A CALIB_OF=([prontoqa-ood-composed]=200)
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
