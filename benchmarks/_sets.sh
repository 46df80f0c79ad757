# The findings' data sets by name, sourced by findings.sh and protocol_best.sh so every
# measurement of a set reads the same items. Needs SHARED (the data folder) and N set.
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
