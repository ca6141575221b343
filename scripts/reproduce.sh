#!/usr/bin/env bash
# The full sequence behind one of the paper's Tables 1-3 (see docs/REPRODUCING.md):
# the dense baseline; DiSparse static, pretrained (disparse_pt) and dynamic; and the comparison
# baselines (SNIP, random, magnitude/IMP-style, RigL, LTH) at the same sparsity. Every net is
# evaluated against the baseline's metrics so each metrics JSON carries delta_m.
#
# usage: scripts/reproduce.sh DATASET [RATIO]      (DATASET: nyuv2 | cityscapes | taskonomy)
# env:   DISPARSE_DATA (dataset root, required unless the config names one), DEST (default runs/DATASET),
#        PYTHON (default .venv/bin/python), EXTRA (extra flags for every command, e.g. "--device cuda")
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:?usage: scripts/reproduce.sh DATASET [RATIO]}
R=${2:-90}
DEST=${DEST:-runs/$D}
PY=${PYTHON:-.venv/bin/python}
EXTRA=${EXTRA:-}
BASE_METRICS="$DEST/metrics_${D}_baseline.json"

run() { echo "+ $*"; "$@"; }

# 1. Dense baseline (also the pretrained model for disparse_pt, LTH rewinding and IMP).
run $PY launch_training.py --dataset "$D" --method baseline --dest "$DEST" $EXTRA
run $PY eval_pruned_net.py --dataset "$D" --method baseline --dest "$DEST" $EXTRA

# 2. Static sparse training: prune at initialisation, then train with fixed masks.
for M in disparse_static snip random; do
  run $PY create_pruned_net.py --dataset "$D" --method "$M" --ratio "$R" --num_batches 50 --dest "$DEST" $EXTRA
  run $PY launch_training.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" $EXTRA
  run $PY eval_pruned_net.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" --baseline-metrics "$BASE_METRICS" $EXTRA
done

# 3. Dynamic sparse training from scratch.
for M in disparse_dynamic rigl; do
  run $PY launch_training.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" $EXTRA
  run $PY eval_pruned_net.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" --baseline-metrics "$BASE_METRICS" $EXTRA
done

# 4. Pruning the pretrained dense model, then fine-tuning (retrain settings of the config).
for M in disparse_pt magnitude; do
  run $PY create_pruned_net.py --dataset "$D" --method "$M" --ratio "$R" --from "$DEST/final_${D}_baseline.pth" --dest "$DEST" $EXTRA
  run $PY launch_training.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" $EXTRA
  run $PY eval_pruned_net.py --dataset "$D" --method "$M" --ratio "$R" --dest "$DEST" --baseline-metrics "$BASE_METRICS" $EXTRA
done

# 5. Lottery ticket / iterative magnitude pruning with rewinding (config section `lth`).
run $PY launch_training.py --dataset "$D" --method lth --ratio "$R" --dest "$DEST" $EXTRA
run $PY eval_pruned_net.py --dataset "$D" --method lth --ratio "$R" --dest "$DEST" --baseline-metrics "$BASE_METRICS" $EXTRA

echo "metrics files:"; ls "$DEST"/metrics_*.json
