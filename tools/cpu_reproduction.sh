#!/usr/bin/env bash
# The README's CPU-scale result: CIFAR-10 (5 old -> 10 classes), torchvision ResNet-18 from
# scratch, 5 epochs for every model, the official hyperparameters otherwise.
#   tools/cpu_reproduction.sh DATA_ROOT [OUT]        (about 2.5 hours on 2 CPU cores)
# DATA_ROOT: CIFAR-10 in torchvision's format or as train/<class>/* + test/<class>/* folders.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE   # spinning OpenMP threads slow a shared CPU down
PY=${PYTHON:-python}
DATA=$1
OUT=${2:-runs/cpu_reproduction}
C=(--dataset cifar10 --data-root "$DATA" --epochs 5 --device cpu)

[ -f "$OUT/ckpt_old.pth" ] || $PY train_old_model.py "${C[@]}" --save "$OUT/ckpt_old.pth" --output-dir "$OUT/old"
[ -f "$OUT/ckpt_new.pth" ] || $PY train_new_model.py "${C[@]}" --save "$OUT/ckpt_new.pth" --output-dir "$OUT/new"
update() {  # METHOD B SEED
  local dir="$OUT/update/$1-b$2-seed$3"
  [ -f "$dir/results.json" ] || $PY main.py "${C[@]}" --method "$1" --b "$2" --seed "$3" \
    --old-ckpt "$OUT/ckpt_old.pth" --new-ckpt "$OUT/ckpt_new.pth" --output-dir "$dir"
}
for seed in 42 43 44; do
  for method in No_Treatment MPT_KL PCT_KL; do update "$method" 4.0 "$seed"; done
done
update MPT_KL 1.0 42
update MPT_KL_nobias 4.0 42
update MPT_LM 4.0 42
$PY -m tools.tables "$OUT" --out "$OUT"
