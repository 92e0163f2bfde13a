#!/usr/bin/env bash
# The README's CPU-scale data-growth result (a same-class update, PCT's setting): CIFAR-10, the
# old model trained on 50% of every class's training images, the new reference and updated
# models on all of them; ResNet-18 from scratch, 5 epochs each, official hyperparameters otherwise.
#   tools/data_growth_cpu.sh DATA_ROOT [OUT]
# DATA_ROOT: CIFAR-10 as image folders train/<class>/* + test/<class>/* (or torchvision's files
# when PER_CLASS is unset). Finished runs are skipped: repeat the command after an interruption.
# Environment: PER_CLASS=N uses only the first N training images of every class (sorted file
# names; linked into OUT/data, the test set whole) to fit a CPU's time; EPOCHS=5; SEEDS="42 43 44"
# (the updated models'; the reference models use seed 42); PYTHON=python.
# Writes OUT/tables.md (mean +- sd over the seeds) and the runs old, new, update/METHOD-seedS.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE   # spinning OpenMP threads slow a shared CPU down
PY=${PYTHON:-python}
DATA=$1
OUT=$(mkdir -p "${2:-runs/data_growth_cpu}" && cd "${2:-runs/data_growth_cpu}" && pwd)
read -ra seeds <<< "${SEEDS:-42 43 44}"
if [ -n "${PER_CLASS:-}" ]; then  # a smaller training set of the same images, as links
  SRC=$(cd "$DATA" && pwd)
  DATA="$OUT/data"
  if [ ! -d "$DATA/test" ]; then
    for dir in "$SRC"/train/*/; do
      cls=$(basename "$dir")
      files=("$dir"*)  # sorted by the glob
      mkdir -p "$DATA/train/$cls"
      ln -s -t "$DATA/train/$cls" "${files[@]:0:$PER_CLASS}"
    done
    ln -s "$SRC/test" "$DATA/test"
  fi
fi
C=(--dataset cifar10 --data-root "$DATA" --epochs "${EPOCHS:-5}" --device cpu --old-fraction 1.0)

[ -f "$OUT/ckpt_old.pth" ] || $PY train_old_model.py "${C[@]}" --old-data-fraction 0.5 \
  --save "$OUT/ckpt_old.pth" --output-dir "$OUT/old"
[ -f "$OUT/ckpt_new.pth" ] || $PY train_new_model.py "${C[@]}" --save "$OUT/ckpt_new.pth" --output-dir "$OUT/new"
update() {  # METHOD SEED [main.py flags]
  local method=$1 seed=$2 dir="$OUT/update/$1-seed$2"
  shift 2
  [ -f "$dir/results.json" ] || $PY main.py "${C[@]}" --old-ckpt "$OUT/ckpt_old.pth" --new-ckpt "$OUT/ckpt_new.pth" \
    --method "$method" --seed "$seed" --output-dir "$dir" "$@"
}
for seed in "${seeds[@]}"; do
  update No_Treatment "$seed"
  update PCT_KL "$seed"
  # On 10 classes the logit-matching term is ten times CIFAR-100's per logit (see cpu_reproduction.sh).
  update PCT_LM "$seed" --lm-weight 0.04
  update MPT_KL_nobias "$seed"
done
$PY -m tools.tables "$OUT/old" "$OUT/new" "$OUT/update" --out "$OUT"
