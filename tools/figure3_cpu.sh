#!/usr/bin/env bash
# The CPU-scale Figure 3: test embeddings of CIFAR-10 (5 old -> 10 classes) in a 2-d feature
# space before the classifier (configs/cifar10_embed2.yaml), torchvision ResNet-18 from scratch,
# 5 epochs for every model, seed 42.
#   tools/figure3_cpu.sh DATA_ROOT [OUT]      (OUT default results/cpu_cifar10/fig3_runs)
# About 50 minutes on a 2-core CPU (measured, log.jsonl: 4 the old model, 11 the new, 11-15 an
# update, with tests running beside two of them). DATA_ROOT: CIFAR-10 in torchvision's format or as
# train/<class>/* + test/<class>/* folders. Trains the runs old, new, No_Treatment, MPT_KL-b1 and
# MPT_KL (b = 4) into OUT (checkpoints OUT/ckpt_old.pth, OUT/ckpt_new.pth, RUN/checkpoint.pth),
# then writes OUT/tables.md and OUT/embeddings.png (one panel per model, 4000 test images each).
# Every run starts with --resume auto: repeat the command after an interruption. A failed run is
# reported and the others go on (exit status 1 at the end). Environment: EPOCHS=5, PYTHON=python.
set -uo pipefail
cd "$(dirname "$0")/.."
source tools/jobs.sh
cpu_study
DATA=$1
OUT=${2:-results/cpu_cifar10/fig3_runs}
C=(--config configs/cifar10_embed2.yaml --data-root "$DATA" --epochs "${EPOCHS:-5}" --device cpu --resume auto)

train "$OUT/old" train_old_model.py --save "$OUT/ckpt_old.pth"
train "$OUT/new" train_new_model.py --save "$OUT/ckpt_new.pth"
REFS=(--old-ckpt "$OUT/ckpt_old.pth" --new-ckpt "$OUT/ckpt_new.pth")
train "$OUT/No_Treatment" main.py "${REFS[@]}" --method No_Treatment
train "$OUT/MPT_KL-b1" main.py "${REFS[@]}" --method MPT_KL --b 1
train "$OUT/MPT_KL" main.py "${REFS[@]}" --method MPT_KL
$PY -m tools.tables "$OUT" --out "$OUT" || failed=1
$PY -m tools.plots embeddings "$OUT"/{old,new,No_Treatment,MPT_KL-b1,MPT_KL} --data-root "$DATA" \
  --max-points 4000 --out "$OUT/embeddings.png" || failed=1
exit $failed
