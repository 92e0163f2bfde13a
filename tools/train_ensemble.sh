#!/usr/bin/env bash
# Train the ELODI ensemble: N new models on all classes, member i with --seed i, saved as
# ENSEMBLE_DIR/ckpt_i.pth (what main.py --method ELODI reads from its --ensemble-dir).
#
# usage: tools/train_ensemble.sh [train_new_model.py flags ...]
#   e.g. tools/train_ensemble.sh --config configs/cifar100_resnet18.yaml
# environment:
#   N=8                                      the number of members (main.py --ensemble-size)
#   ENSEMBLE_DIR=checkpoint/ensemble_models  where they go (main.py --ensemble-dir)
#   GPUS="0 1 2 3"                           train in parallel, one member per GPU at a time
#   PYTHON=python                            the interpreter
# Member i's run folder is ENSEMBLE_DIR/runs/ckpt_i (its log: train.log there). Members already
# saved are skipped and interrupted ones resumed, so repeating the command completes the ensemble.

set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/tools/jobs.sh"
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
n=${N:-8}
dir=${ENSEMBLE_DIR:-checkpoint/ensemble_models}
if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
    echo "error: N must be a positive number of members, got '$n'" >&2
    exit 2
fi
extra=("$@")

member() {
    local ckpt="$dir/ckpt_$1.pth" out="$dir/runs/ckpt_$1"
    # The member's own flags come last: they win over the same flags among the extra ones.
    train_run "$out" "$ckpt" "$root/train_new_model.py" "${extra[@]}" \
        --seed "$1" --save "$ckpt" --output-dir "$out"
}

run_jobs "$n" member
echo "ensemble: $n members in $dir"
