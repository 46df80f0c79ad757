#!/usr/bin/env bash
# Issue 19's measurement: a step profile calibrated on the prover's labels of chains the model
# wrote, against the model's own step log-odds, logit confidence, the hidden-state probe and an
# answer profile, on problems the step profile never saw.
#   1. generate: N ProntoQA problems (fictional ontology with distractors, 1-5 hops) x SAMPLES
#      chains, resumable (run the script again after an interruption and it continues);
#   2. calibrate on the steps of half of the problems (CALIB_SIZE problems otherwise): step.json;
#   3. rank the other half with the step profile and, beside it, the answer profile.
#   bash benchmarks/step_verifier.sh MODEL
#   DATA=SPEC for another problem set (default: ProntoQA fictional with distractors, 1-5 hops;
#   e.g. DATA="generated:depth=1-5&n=100&distractors=1&seed=11" N=100 for SmolLM2's small run).
#   What the README's step-verifier findings ran (Qwen2.5-Coder-0.5B, about 2 h on the 2 cores):
#   N=300 SAMPLES=4 BATCH=16 MAX_NEW=160 CHAT=--no-chat-template STEP_DTYPE=bfloat16 \
#     bash benchmarks/step_verifier.sh qwen2.5-coder-0.5b
#   N=300 SAMPLES=4 BATCH=8 MAX_NEW=256 DTYPE=bfloat16 (generation, as best_of_n.sh);
#   CHAT=--no-chat-template for a plain prompt; STEP_DTYPE (calibrate and rank; default float32,
#   as the judge serves a profile) and STEP_BATCH; ANSWER_PROFILE (default
#   runs/findings/MODEL/prontoqa/profile.json from benchmarks/findings.sh, when it exists; its
#   calibration items are left out at generation, so both profiles judge the same problems).
# A finished step.json is kept (delete it to calibrate again); rank resumes from its cache.
# Results: runs/step_verifier/MODEL/{gen/, step.json, ranked/summary.md, ranked/summary.json}
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-.venv/bin/qkscore}
SHARED=${QKSCORE_SHARED_DATA:-../shared/data}
model=${1:?usage: bash benchmarks/step_verifier.sh MODEL}
N=${N:-300}
SAMPLE=${SAMPLE:-$((N * 2))}  # drawn before the answer profile's items are left out
SAMPLES=${SAMPLES:-4}
BATCH=${BATCH:-8}
MAX_NEW=${MAX_NEW:-256}
DTYPE=${DTYPE:-bfloat16}
CHAT=${CHAT:-}
STEP_DTYPE=${STEP_DTYPE:-float32}
STEP_BATCH=${STEP_BATCH:-8}
CALIB=${CALIB_SIZE:+--calib-size $CALIB_SIZE}
ANSWER_PROFILE=${ANSWER_PROFILE:-runs/findings/$model/prontoqa/profile.json}
OUT=${OUT:-runs/step_verifier/$model}
DATA=${DATA:-"prontoqa:$SHARED/prontoqa/truefalse_0shot/*hop_0shot_random.json?sample=$SAMPLE&seed=2"}
exclude=() answer=()
if [ -f "$ANSWER_PROFILE" ]; then
  exclude=(--exclude-ids-from "$ANSWER_PROFILE")
  answer=(--answer-profile "$ANSWER_PROFILE")
else
  echo "no answer profile at $ANSWER_PROFILE: ranking with the step profile alone" >&2
fi
echo "=== $model: generate ($(date -u +%H:%M:%S))"
$QK generate --model "$model" --data "$DATA" "${exclude[@]}" --limit "$N" --samples "$SAMPLES" \
  --max-new-tokens "$MAX_NEW" --batch-size "$BATCH" --dtype "$DTYPE" $CHAT --out "$OUT/gen"
if [ -f "$OUT/step.json" ]; then
  echo "=== $model: $OUT/step.json exists (delete it to calibrate again)"
else
  echo "=== $model: calibrate on steps ($(date -u +%H:%M:%S))"
  $QK calibrate "$OUT/gen" --out "$OUT/step.json" $CALIB --dtype "$STEP_DTYPE" \
    --batch-size "$STEP_BATCH"
fi
echo "=== $model: rank the other problems ($(date -u +%H:%M:%S))"
$QK rank "$OUT/gen" --profile "$OUT/step.json" "${answer[@]}" --out "$OUT/ranked" --folds 5 \
  --dtype "$STEP_DTYPE" --batch-size "$STEP_BATCH"
echo "=== $model: done ($(date -u +%H:%M:%S)); summary: $OUT/ranked/summary.md (and summary.json)"
