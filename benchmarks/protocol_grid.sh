#!/usr/bin/env bash
# Issue 20: is "every reader at chance with distractors" a finding or our protocol? A sweep of
# the paper's prompt variants on ProntoQA fictional with distractors (the findings' 600 items):
# chat_template x num_fewshot {0,3} x statement_anchor x baseline_tokens x option_style. Cells
# whose prompts are token for token the same (anchor, and answer tokens when no shot shows
# them) share one forward pass; letter answers with plain options are skipped. Every cell gets
# the calibrated model margin, the hidden-state probe, shallow matching, the head chosen by
# AUROC and the paper's way, and the reader chosen by calibration CV; cells are ranked by
# calibration CV only. Resumable: run it again after an interruption.
#   bash benchmarks/protocol_grid.sh MODEL                  (e.g. qwen2.5-coder-1.5b)
#   N=600 CALIB=400 BATCH=8 DTYPE=auto GRID="..." DATA="..." OUT=runs/protocol/MODEL
# Cost: 10 passes for 24 cells; the 3-shot passes read prompts about 4x longer.
# Results: OUT/leaderboard.md (and leaderboard.json), one folder per cell.
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-.venv/bin/qkscore}
SHARED=${QKSCORE_SHARED_DATA:-../shared/data}
model=${1:?usage: bash benchmarks/protocol_grid.sh MODEL}
N=${N:-600}
DATA=${DATA:-"prontoqa:$SHARED/prontoqa/truefalse_0shot/*hop_0shot_random.json?sample=$N&balance=1&seed=0"}
GRID=${GRID:-"chat_template=false,true;num_fewshot=0,3;statement_anchor=last,last_word;baseline_tokens=letters,words;option_style=letters,plain"}
OUT=${OUT:-runs/protocol/$model}
echo "=== $model: sweep ($(date -u +%H:%M:%S))"
$QK sweep --model "$model" --data "$DATA" --out "$OUT" --grid "$GRID" \
  --calib-size "${CALIB:-400}" --batch-size "${BATCH:-8}" --dtype "${DTYPE:-auto}"
echo "=== $model: done ($(date -u +%H:%M:%S)); leaderboard: $OUT/leaderboard.md"
