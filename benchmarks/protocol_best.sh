#!/usr/bin/env bash
# Issue 20's second half: the cell protocol_grid.sh chose on calibration CV (ProntoQA with
# distractors), measured on the other sets the paper reports: PrOntoQA-OOD (Composed,
# debiased), PARARULE-Plus (debiased) and Multi-LogiEval (debiased), each a one-cell sweep
# with the context-ablated control, so every row stands beside the calibrated margin, the
# probe, shallow matching and its context-removed figure. Resumable: run it again.
#   bash benchmarks/protocol_best.sh MODEL          (after protocol_grid.sh MODEL)
#   SETS_TO_RUN="pararule-debiased" GRID="..." (another cell) OUT=runs/protocol/MODEL
# Results: OUT/best-<set>/<setting>/evaluation.json; rows: python benchmarks/findings_table.py OUT
set -euo pipefail
cd "$(dirname "$0")/.."
QK=${QK:-.venv/bin/qkscore}
PY=${PY:-.venv/bin/python}
SHARED=${QKSCORE_SHARED_DATA:-../shared/data}
N=${N:-600}
source benchmarks/_sets.sh
model=${1:?usage: bash benchmarks/protocol_best.sh MODEL}
OUT=${OUT:-runs/protocol/$model}
# the chosen cell's settings as a one-cell grid ("template=...;num_fewshot=3;...")
GRID=${GRID:-$($PY -c '
import json, sys
from qkscore.grid import grid_spec
print(grid_spec(json.load(open(sys.argv[1]))["chosen"]))
' "$OUT/leaderboard.json")}
echo "=== $model: best cell $GRID"
for set in ${SETS_TO_RUN:-prontoqa-ood-composed multi-logieval-debiased pararule-debiased}; do
  echo "=== $model / $set ($(date -u +%H:%M:%S))"
  $QK sweep --model "$model" --data "${SETS[$set]}" --out "$OUT/best-$set" --grid "$GRID" \
    --calib-size "${CALIB_OF[$set]:-400}" --batch-size "${BATCH:-8}" --dtype "${DTYPE:-auto}" \
    --control context-ablated
done
echo "=== $model: done ($(date -u +%H:%M:%S)); rows: $PY benchmarks/findings_table.py $OUT"
