#!/usr/bin/env bash
# Quick end-to-end reproduction on CIFAR-10 (5 old -> 10 classes): old model, new reference
# model, then No_Treatment, PCT_KL and MPT_KL (at its default b = 4), ending with the flip table.
#   tools/quickstart.sh [--data-root DIR] [--epochs N] [other flags for all three scripts]
# CIFAR-10 is downloaded into ./data unless --data-root points at an existing copy
# (torchvision's files, or train/<class>/*.png + test/<class>/*.png folders).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/quickstart}
COMMON=(--dataset cifar10 --epochs 3 "$@")

$PY train_old_model.py "${COMMON[@]}" --save "$OUT/ckpt_old.pth" --output-dir "$OUT/old"
$PY train_new_model.py "${COMMON[@]}" --save "$OUT/ckpt_new.pth" --output-dir "$OUT/new"
for method in No_Treatment PCT_KL MPT_KL; do
  $PY main.py "${COMMON[@]}" --method "$method" \
    --old-ckpt "$OUT/ckpt_old.pth" --new-ckpt "$OUT/ckpt_new.pth" --output-dir "$OUT/$method"
done
$PY -m tools.tables "$OUT" --print
