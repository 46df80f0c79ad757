#!/usr/bin/env bash
# The generated-reasoning issue's measurement: sample 4 chains of thought per ProntoQA problem
# (fictional ontology with distractors, 1-5 hops), label every step with the prover, and rank
# the chains with the readers issue's profile (runs/findings/<model>/prontoqa/profile.json, made
# by benchmarks/findings.sh): step verdicts, solution-level QK, logit confidence, majority vote.
# The problems the profile was calibrated on are left out at generation: the 255 sampled with
# seed 1 keep 152 after the exclusion, and --limit keeps 150 (29/30/36/31/24 over 1-5 hops).
# Generation is resumable: run the script again after an interruption and it continues.
#   bash benchmarks/best_of_n.sh [MODEL ...]          (default: both Qwen sizes)
#   SAMPLES=4 LIMIT=150 BATCH=8 MAX_NEW=256 ... (the defaults); CHAT=--no-chat-template for
#   a plain prompt (default: the chat template, which Qwen-Coder-Instruct has); RANK_DTYPE
#   (default float32: bf16 coarsens the model's own log-odds, the step baseline, but runs ~2x
#   faster) and RANK_BATCH for the rank step. Ranking resumes too (RANKED/cache).
# The README's figures: BATCH=16 (12 for 1.5B) MAX_NEW=160 CHAT=--no-chat-template
#   RANK_DTYPE=bfloat16 RANK_BATCH=8
# Results: runs/best_of_n/<model>/{gen/,ranked/summary.md,ranked/summary.json,ranked/ranked.jsonl}
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-.venv/bin/qkscore}
SHARED=${QKSCORE_SHARED_DATA:-../shared/data}
SAMPLE=${SAMPLE:-255}
LIMIT=${LIMIT:-150}
SAMPLES=${SAMPLES:-4}
BATCH=${BATCH:-8}
DTYPE=${DTYPE:-bfloat16}  # bf16 matmuls (AMX) ran ~2x faster than float32 on this CPU
MAX_NEW=${MAX_NEW:-256}
CHAT=${CHAT:-}
RANK_DTYPE=${RANK_DTYPE:-float32}
RANK_BATCH=${RANK_BATCH:-4}
DATA="prontoqa:$SHARED/prontoqa/truefalse_0shot/*hop_0shot_random.json?sample=$SAMPLE&seed=1"
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(qwen2.5-coder-0.5b qwen2.5-coder-1.5b)
for model in "${MODELS[@]}"; do
  profile=runs/findings/$model/prontoqa/profile.json
  out=runs/best_of_n/$model
  [ -f "$profile" ] || { echo "no $profile: run benchmarks/findings.sh $model first" >&2; exit 2; }
  echo "=== $model: generate ($(date -u +%H:%M:%S))"
  $QK generate --model "$model" --data "$DATA" --exclude-ids-from "$profile" --limit "$LIMIT" \
    --samples "$SAMPLES" --max-new-tokens "$MAX_NEW" --batch-size "$BATCH" --dtype "$DTYPE" $CHAT --out "$out/gen"
  echo "=== $model: rank ($(date -u +%H:%M:%S))"
  $QK rank "$out/gen" --profile "$profile" --out "$out/ranked" --folds 5 \
    --dtype "$RANK_DTYPE" --batch-size "$RANK_BATCH"
  python3 -c "import json,sys; g=json.load(open(sys.argv[1]))['generation']; print('generation:', g)" \
    "$out/gen/run.json"
done
