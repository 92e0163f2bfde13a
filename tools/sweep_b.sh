#!/usr/bin/env bash
# Train MPT over a grid of the margin bias b (the paper's Figure 4), then write the tables, the
# figure and, when the runs have validation metrics (--val-fraction), the selected b.
#
# usage: tools/sweep_b.sh SWEEP_DIR [main.py flags ...]
#   e.g. tools/sweep_b.sh runs/sweep_b --config configs/cifar100_resnet18.yaml --val-fraction 0.1
# With --val-fraction F (given here or in --config) b is selected on a hold-out that the reference
# models must not have trained on: the sweep first trains the old and new models itself, with the
# same F and --split-seed and those of the flags that train_old_model.py / train_new_model.py take
# (the config's old: and new: sections included), into SWEEP_DIR/refs/{old,new}, and every run
# uses them. An --old-ckpt or --new-ckpt given on the command line is used instead (main.py
# refuses it unless it was trained with the same F and --split-seed).
# environment:
#   BS="0 0.5 1 2 3 4 5 6"   the grid of b
#   METHODS="MPT_KL MPT_LM"  the methods
#   SEEDS=42                 the seeds (one run per method, b and seed)
#   GPUS="0 1 2 3"           run in parallel, one run per GPU at a time (default: one after another)
#   TOLERANCE=1.0            python -m tools.select_b --tolerance
#   PYTHON=python            the interpreter
# Run (METHOD, b, SEED) goes to SWEEP_DIR/METHOD/bB/seedSEED (its log: train.log there). Finished
# runs are skipped and interrupted ones resumed, so repeating the command completes a sweep.
# Outputs: SWEEP_DIR/tables.md, tables.csv, b_sweep.png, selected_b.json.

set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/tools/jobs.sh"
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
    usage
    exit 2
fi
sweep=$1
shift
extra=("$@")
read -ra bs <<< "${BS:-0 0.5 1 2 3 4 5 6}"
read -ra methods <<< "${METHODS:-MPT_KL MPT_LM}"
read -ra seeds <<< "${SEEDS:-42}"
py=${PYTHON:-python}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # for python -m tools.* from any folder

# The reference models of a --val-fraction sweep: one line "ROLE FLAGS" (shell-quoted) per
# reference model to train, none without --val-fraction.
references=$("$py" - "${extra[@]}" <<'PY'
import shlex
import sys

from utils.cli import base_parser, parse, update_parser
from utils.errors import UserError

argv = sys.argv[1:]
try:
    args = parse(update_parser(""), argv, section="update")
except UserError as err:
    sys.exit(f"error: {err}")
if args.val_fraction > 0:
    every = update_parser("")._option_string_actions
    takes = base_parser("")._option_string_actions  # the reference models' scripts' flags
    for role in ("old", "new"):
        if any(a == f"--{role}-ckpt" or a.startswith(f"--{role}-ckpt=") for a in argv):
            continue  # given: main.py checks its split
        flags, i = [], 0
        while i < len(argv):
            name = argv[i].split("=", 1)[0]
            action = every.get(name)
            n = 1 + (action is not None and action.nargs != 0 and "=" not in argv[i])
            if name in takes and name not in ("--output-dir", "--save", "--resume"):
                flags += argv[i:i + n]
            i += n
        flags += ["--val-fraction", repr(args.val_fraction), "--split-seed", str(args.split_seed)]
        print(role, shlex.join(flags))
PY
)
reference_flags=()
while read -r role flags; do
    [ -n "$role" ] || continue
    eval "role_flags=($flags)"
    out="$sweep/refs/$role"
    train_run "$out" "$out/results.json" "$root/train_${role}_model.py" "${role_flags[@]}" \
        --output-dir "$out" --save "$out/ckpt_$role.pth"
    reference_flags+=("--$role-ckpt" "$out/ckpt_$role.pth")
done <<< "$references"

grid=()
for m in "${methods[@]}"; do
    for b in "${bs[@]}"; do
        for s in "${seeds[@]}"; do
            grid+=("$m $b $s")
        done
    done
done

train() {
    local m b s out
    read -r m b s <<< "${grid[$1]}"
    out="$sweep/$m/b$b/seed$s"
    # The sweep's own flags come last: they win over the same flags among the extra ones.
    train_run "$out" "$out/results.json" "$root/main.py" "${extra[@]}" "${reference_flags[@]}" \
        --method "$m" --b "$b" --seed "$s" --output-dir "$out"
}

status=0
run_jobs "${#grid[@]}" train || status=1
echo
"$py" -m tools.tables "$sweep" --out "$sweep" --print || status=1
"$py" -m tools.plots b-sweep "$sweep" --out "$sweep/b_sweep.png" || echo "(no b-sweep figure)"
"$py" -m tools.select_b "$sweep" --tolerance "${TOLERANCE:-1.0}" --out "$sweep/selected_b.json" \
    || echo "(b not selected)"
exit $status
