#!/usr/bin/env bash
# The GPU check: the one command to run on a machine with a CUDA GPU. It writes gpu_report.md,
# every number in it next to the command that produced it.
#
# usage: tools/gpu_check.sh [DATA_ROOT]
#   DATA_ROOT: CIFAR-10 in torchvision's format or as train/<class>/* + test/<class>/* image
#   folders; default: the repository's ./data, where the scripts download CIFAR-10 when absent.
#
# Stages (each one's output is also in LOG_DIR/<stage>.log; a failed stage is reported and the
# next ones still run; the exit status is 1 when any failed):
#   1. the CUDA tests: python -m pytest -q -m cuda --continue-on-collection-errors tests
#   2. throughput: benchmarks/throughput.py --device cuda with --precision fp32 and bf16, one
#      update epoch of MPT_KL and ELODI's ensemble forward (--ensemble); image-folder loading
#      (benchmarks/folder_loading.py: generated JPEGs, 1 to 8 loader workers, against ResNet-18's
#      and ResNet-50's training rate: whether --workers' default feeds the GPU)
#   3. a fidelity study of the precision modes on CIFAR-10 (5 old -> 10 classes, ResNet-18):
#      old and new reference models trained once (fp32, seed 42), then No_Treatment and MPT_KL
#      (b = B) with --precision fp32 and bf16 for each seed: a table of mean +- sample std of
#      ER(Y_old), ER(Y_all), NFR and Rel-NFR per (method, precision), and bf16 - fp32 by seed.
#   4. scaling: one CIFAR-10 epoch of the new reference model on 1 GPU and, where there are two,
#      on 2 GPUs under torchrun (DDP + SyncBatchNorm), and --compile under torchrun on 2 GPUs.
#   5. paths: one epoch each of --fast, --data-pipeline pil, --freeze-backbone, and ELODI (two
#      ensemble members, no warm-up) with --precision bf16.
# The report says which parts were skipped and why (e.g. one GPU only).
# Expected to take about 20 minutes on one H100 with the defaults (an estimate: not yet timed).
#
# environment:
#   EPOCHS=3            epochs of every model of the study
#   SEEDS="42 43 44"    seeds of the study's updated models
#   B=4.0               MPT_KL's margin bias
#   PARALLEL=4          study runs sharing the GPU at a time (the per-epoch seconds in their logs
#                       are then not throughput figures; stage 2 measures throughput alone)
#   BENCH_FLAGS=""      extra flags of every benchmark command (e.g. "--repeats 1")
#   STAGES="tests bench study scaling paths"  the stages to run
#   OUT=runs/gpu_check/<date-time>  run folders; LOG_DIR=$OUT/logs
#   REPORT=gpu_report.md  (in the repository root)
#   PYTHON              the interpreter (default: .venv/bin/python if present, else python)
# Without a usable CUDA GPU it prints one line (the torch build's CUDA version, the driver's
# version where nvidia-smi runs, and torch's own warning if it gave one) and exits with status 2.

set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

if [ $# -gt 1 ] || [[ ${1:-} == -* ]]; then
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit 2
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$root/.venv/bin/python" ]; then py=$root/.venv/bin/python; else py=python; fi
fi
# Three lines from an interpreter that imports torch (nothing from one that cannot): "yes" or
# "no", the torch version and the CUDA version it was built for, and the warning torch gave while
# looking for a GPU (a driver too old for the build says so there), on one line.
probe=$("$py" -c '
import warnings

import torch

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    usable = torch.cuda.is_available()
print("yes" if usable else "no")
print(f"torch {torch.__version__}, built for CUDA {torch.version.cuda}")
print(" ".join(" ".join(str(w.message).split()) for w in caught))' 2>/dev/null || true)
mapfile -t probe_lines <<< "$probe"
case ${probe_lines[0]} in
    yes) ;;
    no) if command -v nvidia-smi > /dev/null; then
            driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 || true)
            driver=${driver:+NVIDIA driver $driver (nvidia-smi)}
            driver=${driver:-nvidia-smi gives no driver version}
        else
            driver="no nvidia-smi on PATH (no NVIDIA driver?)"
        fi
        warned=${probe_lines[2]:+; torch warned: ${probe_lines[2]}}
        echo "gpu_check: no CUDA GPU visible to $py (${probe_lines[1]}; $driver$warned); run this on a" \
             "machine with one, or, where the driver is too old for that CUDA, install a torch build for" \
             "an older CUDA: TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 ./install_requirements.sh" >&2
        exit 2 ;;
    *) echo "gpu_check: cannot import torch with $py; install the requirements (./install_requirements.sh) or set PYTHON" >&2
       exit 2 ;;
esac

# Paths given by the user are relative to the current folder; the commands run from the root.
data_root=$(realpath -m "${1:-$root/data}")
out=$(realpath -m "${OUT:-$root/runs/gpu_check/$(date +%Y%m%d-%H%M%S)}")
logs=$(realpath -m "${LOG_DIR:-$out/logs}")
report=$(realpath -m "${REPORT:-$root/gpu_report.md}")
epochs=${EPOCHS:-3}
read -ra seeds <<< "${SEEDS:-42 43 44}"
b=${B:-4.0}
parallel=${PARALLEL:-4}
read -ra bench_flags <<< "${BENCH_FLAGS:-}"
stages=" ${STAGES:-tests bench study scaling paths} "
cd "$root"
mkdir -p "$out" "$logs" "$(dirname "$report")"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

failures=()
skipped=()   # each part not run, with the reason
for name in tests bench study scaling paths; do
    [[ $stages == *" $name "* ]] || skipped+=("stage $name (not in STAGES)")
done
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count())')
start_all=$SECONDS
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -v " ${report#$root/}\$" || true)

note() {  # append text to the report
    printf '%s\n' "$@" >> "$report"
}

code_block() {  # code_block FILE [LINES]: the file (or its last LINES lines) as a code block
    note '```'
    if [ -n "${2:-}" ]; then tail -n "$2" "$1" >> "$report"; else cat "$1" >> "$report"; fi
    note '```'
}

quote() {  # the command as one shell-quoted line, paths shown relative to the root
    local s
    s=$(printf '%q ' "$@")
    s=${s% }
    printf '%s' "${s//$root\//}"
}

# stage NAME COMMAND...: run COMMAND (a program or a function of this script), its output shown
# and tee'd into LOG_DIR/NAME.log; sets stage_rc and stage_secs, and records a failure.
stage() {
    local name=$1 start=$SECONDS
    shift
    echo "== gpu_check: $name: $(quote "$@")"
    set +e
    "$@" 2>&1 | tee "$logs/$name.log"
    stage_rc=${PIPESTATUS[0]}
    set -e
    stage_secs=$((SECONDS - start))
    if [ "$stage_rc" -ne 0 ]; then
        failures+=("$name (exit status $stage_rc; log: ${logs#$root/}/$name.log)")
    fi
    note "" "\`$(quote "$@")\` — exit status $stage_rc, ${stage_secs} s (log: \`${logs#$root/}/$name.log\`)" ""
}

# --- the machine ---------------------------------------------------------------------------
: > "$report"
note "# GPU check" ""
note "Written by \`tools/gpu_check.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') at commit" \
     "\`$commit\`${dirty:+ (with uncommitted changes)}." \
     "Settings: EPOCHS=$epochs, SEEDS=\"${seeds[*]}\", B=$b, PARALLEL=$parallel, BENCH_FLAGS=\"${bench_flags[*]:-}\"," \
     "DATA_ROOT=\`$data_root\`; run folders in \`${out#$root/}\`." ""
note "## The machine" ""
{
    nvidia-smi 2>&1 || echo "(nvidia-smi failed)"
    "$py" -c '
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"capability {p.major}.{p.minor}")
print("defaults: cudnn.allow_tf32", torch.backends.cudnn.allow_tf32,
      "| cuda.matmul.allow_tf32", torch.backends.cuda.matmul.allow_tf32)'
} > "$logs/machine.log" 2>&1 || true
cat "$logs/machine.log"
note "\`nvidia-smi\`, then the interpreter's versions (\`$(quote "$py")\`):" ""
code_block "$logs/machine.log"

# --- 1. the CUDA tests -------------------------------------------------------------------------
if [[ $stages == *" tests "* ]]; then
    note "" "## 1. The CUDA tests"
    # A test module that fails to import must not keep the CUDA tests from running.
    stage tests "$py" -m pytest -q -m cuda --continue-on-collection-errors tests
    note "Summary (the last lines of its output):" ""
    code_block "$logs/tests.log" 15
fi

# --- 2. throughput -----------------------------------------------------------------------------
if [[ $stages == *" bench "* ]]; then
    note "" "## 2. Throughput" "" \
         "One update epoch on generated CIFAR-sized data against the official-style pipeline, and" \
         "ELODI's ensemble forward (vmapped vs a loop); each command's last lines (\`speedup\` is" \
         "this engine over the official-style path, wall clock)."
    for precision in fp32 bf16; do
        stage "bench-MPT_KL-$precision" "$py" benchmarks/throughput.py --device cuda --precision "$precision" \
            --method MPT_KL ${bench_flags[@]+"${bench_flags[@]}"}
        code_block "$logs/bench-MPT_KL-$precision.log" 12
        stage "bench-ensemble-$precision" "$py" benchmarks/throughput.py --device cuda --precision "$precision" \
            --ensemble ${bench_flags[@]+"${bench_flags[@]}"}
        code_block "$logs/bench-ensemble-$precision.log" 8
    done
    note "" "Image-folder loading (ImageNet-sized JPEGs, RandomResizedCrop 224 + flip) per training process," \
         "against the model's training rate; the last line says which limits at --workers' default."
    for arch in resnet18 resnet50; do
        stage "loading-$arch" "$py" benchmarks/folder_loading.py --device cuda --arch "$arch" --dir "$out/jpegs"
        code_block "$logs/loading-$arch.log" 8
    done
fi

# --- 3. the fidelity study ---------------------------------------------------------------------
study=$out/study
common=(--dataset cifar10 --data-root "$data_root" --device cuda --epochs "$epochs")
methods=(No_Treatment MPT_KL)
precisions=(fp32 bf16)

train() {  # train OUT_DIR SCRIPT FLAGS...: one run, its output in OUT_DIR/train.log
    local dir=$1
    shift
    mkdir -p "$dir"
    echo "$(quote "$py" "$@")" >> "$study/commands.txt"
    if "$py" "$@" > "$dir/train.log" 2>&1; then
        echo "finished: ${dir#$study/} | $(tail -n 1 "$dir/train.log")"
    else
        echo "FAILED: ${dir#$study/} (see $dir/train.log):"
        tail -n 5 "$dir/train.log"
        return 1
    fi
}

update_dir() { echo "$study/$1/$2/seed$3"; }

run_study() {
    mkdir -p "$study"
    : > "$study/commands.txt"
    # The references one after the other: the first one downloads CIFAR-10 when it is absent.
    for role in old new; do
        train "$study/$role" "train_${role}_model.py" "${common[@]}" --precision fp32 --seed 42 \
            --output-dir "$study/$role" --save "$study/ckpt_$role.pth" || return 1
    done
    local m p s flags failed=0
    for m in "${methods[@]}"; do
        for p in "${precisions[@]}"; do
            for s in "${seeds[@]}"; do
                flags=(--method "$m")
                [ "$m" = MPT_KL ] && flags+=(--b "$b")
                train "$(update_dir "$m" "$p" "$s")" main.py "${common[@]}" --precision "$p" --seed "$s" \
                    "${flags[@]}" --old-ckpt "$study/ckpt_old.pth" --new-ckpt "$study/ckpt_new.pth" \
                    --output-dir "$(update_dir "$m" "$p" "$s")" &
                while [ "$(jobs -rp | wc -l)" -ge "$parallel" ]; do
                    wait -n || failed=1
                done
            done
        done
    done
    while [ "$(jobs -rp | wc -l)" -gt 0 ]; do
        wait -n || failed=1
    done
    wait || failed=1
    python_table
    return $failed
}

python_table() {
    "$py" - "$study" "${seeds[@]}" <<'EOF'
"""The study's tables from its run folders: STUDY/{old,new}/results.json and
STUDY/<method>/<precision>/seed<S>/{results.json,predictions.npz}."""
import json
import statistics
import sys
from pathlib import Path

import numpy as np

study, seeds = Path(sys.argv[1]), sys.argv[2:]
METHODS, PRECISIONS = ("No_Treatment", "MPT_KL"), ("fp32", "bf16")
KEYS = (("er_old", "ER(Y_old)"), ("er_all", "ER(Y_all)"), ("nfr", "NFR"), ("rel_nfr", "Rel-NFR"))


def load(path):
    return json.loads(path.read_text()) if path.is_file() else None


def stats(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


runs = {(m, p, s): load(study / m / p / f"seed{s}" / "results.json")
        for m in METHODS for p in PRECISIONS for s in seeds}
print("| Method | Precision | Runs | " + " | ".join(label for _, label in KEYS) + " |")
print("| --- | --- | ---: |" + " ---: |" * len(KEYS))
for role, name in (("old", "Old model"), ("new", "New model")):
    r = load(study / role / "results.json")
    if r:
        cells = [f"{r[k]:.2f}" if k in r else "–" for k, _ in KEYS]
        print(f"| {name} | fp32 | 1 | " + " | ".join(cells) + " |")
for m in METHODS:
    for p in PRECISIONS:
        done = [runs[m, p, s] for s in seeds if runs[m, p, s]]
        cells = [stats([r[k] for r in done]) for k, _ in KEYS]
        print(f"| {m} | {p} | {len(done)} | " + " | ".join(cells) + " |")

print()
print("bf16 − fp32 with the same seed (mean ± sample std over the seeds), and the share of test")
print("predictions of the updated model that agree between the two:")
print()
print("| Method | Pairs | " + " | ".join(f"Δ {label}" for _, label in KEYS) + " | Same predictions |")
print("| --- | ---: |" + " ---: |" * (len(KEYS) + 1))
old_preds = []
for m in METHODS:
    pairs = [s for s in seeds if runs[m, "fp32", s] and runs[m, "bf16", s]]
    cells = [stats([runs[m, "bf16", s][k] - runs[m, "fp32", s][k] for s in pairs]) for k, _ in KEYS]
    agree = []
    for s in pairs:
        files = [study / m / p / f"seed{s}" / "predictions.npz" for p in PRECISIONS]
        if all(f.is_file() for f in files):
            a, b = (np.load(f) for f in files)
            agree.append(100.0 * float((a["pred"] == b["pred"]).mean()))
            old_preds += [a["old_pred"], b["old_pred"]]
    print(f"| {m} | {len(pairs)} | " + " | ".join(cells) + f" | {stats(agree)} % |")
print()
if old_preds:
    same = all(np.array_equal(old_preds[0], o) for o in old_preds)
    print(f"The old model's test predictions (old_pred, scored in fp32) are {'identical' if same else 'NOT identical'}"
          f" in all {len(old_preds)} runs, whatever their --precision.")
missing = [f"{m}/{p}/seed{s}" for (m, p, s), r in runs.items() if r is None]
if missing:
    print("Runs without results (failed): " + ", ".join(missing))
EOF
}

if [[ $stages == *" study "* ]]; then
    note "" "## 3. Fidelity of the precision modes (CIFAR-10, 5 old → 10 classes, ResNet-18)" "" \
         "Old and new reference models trained once (fp32, seed 42), then each updated model with" \
         "\`--precision fp32\` and \`bf16\`, seeds ${seeds[*]}, EPOCHS=$epochs epochs each, $parallel runs at a time" \
         "on the GPU; percent, mean ± sample std over the seeds. The table is computed by the" \
         "script's own Python snippet from \`results.json\` and \`predictions.npz\` in" \
         "\`${study#$root/}/<method>/<precision>/seed<S>/\`."
    stage study run_study
    table_start=$(grep -n '^| Method | Precision' "$logs/study.log" | head -n 1 | cut -d: -f1 || true)
    if [ -n "$table_start" ]; then
        tail -n "+$table_start" "$logs/study.log" >> "$report"
    else
        note "(no table: see the log)"
    fi
    note "" "The commands, in the order they ran (the updated models $parallel at a time):" ""
    code_block "$study/commands.txt"
fi

# --- 4. scaling -----------------------------------------------------------------------------------
one_epoch=(--dataset cifar10 --data-root "$data_root" --device cuda --epochs 1 --seed 42)
torchrun_2=("$py" -m torch.distributed.run --standalone --nproc-per-node 2)

epoch_seconds() {  # epoch_seconds RUN_DIR: the seconds of its first epoch (log.jsonl), or "–"
    "$py" -c 'import json, sys; print(json.loads(open(sys.argv[1]).readline())["seconds"])' \
        "$1/log.jsonl" 2>/dev/null || echo "–"
}

if [[ $stages == *" scaling "* ]]; then
    scaling=$out/scaling
    note "" "## 4. One CIFAR-10 epoch on 1 and 2 GPUs, and --compile under torchrun" "" \
         "The new reference model (ResNet-18, 10 classes, global batch 128, fp32), one epoch; the seconds" \
         "are the epoch's training and scoring as \`log.jsonl\` records them. On 2 GPUs SyncBatchNorm" \
         "synchronises the processes at every BatchNorm layer."
    stage scaling-1gpu "$py" train_new_model.py "${one_epoch[@]}" --output-dir "$scaling/1gpu" --save "$scaling/1gpu.pth"
    note "One GPU: $(epoch_seconds "$scaling/1gpu") s."
    if [ "$gpus" -ge 2 ]; then
        stage scaling-2gpu "${torchrun_2[@]}" train_new_model.py "${one_epoch[@]}" \
            --output-dir "$scaling/2gpu" --save "$scaling/2gpu.pth"
        note "Two GPUs: $(epoch_seconds "$scaling/2gpu") s."
        stage compile-2gpu "${torchrun_2[@]}" train_new_model.py "${one_epoch[@]}" --compile \
            --output-dir "$scaling/compile-2gpu" --save "$scaling/compile-2gpu.pth"
        if [ "$stage_rc" -eq 0 ]; then
            note "\`--compile\` under torchrun on 2 GPUs: $(epoch_seconds "$scaling/compile-2gpu") s, compilation included."
        else
            note "\`--compile\` under torchrun on 2 GPUs FAILED (DDP + SyncBatchNorm under torch.compile has open" \
                 "upstream problems): \`--compile\` with several processes should then be refused with one line."
        fi
    else
        skipped+=("4. the epoch on 2 GPUs and --compile under torchrun on 2 GPUs (only $gpus GPU visible)")
        note "Skipped: the epoch on 2 GPUs and \`--compile\` under torchrun (only $gpus GPU visible)."
    fi
fi

# --- 5. paths ----------------------------------------------------------------------------------------
# ELODI's references: an old model and two ensemble members, one epoch each.
elodi_references() {
    local dir=$1 i
    "$py" train_old_model.py "${one_epoch[@]}" --output-dir "$dir/old" --save "$dir/old.pth" || return 1
    for i in 0 1; do
        "$py" train_new_model.py "${one_epoch[@]}" --seed "$i" --output-dir "$dir/member$i" \
            --save "$dir/ensemble/ckpt_$i.pth" || return 1
    done
}

if [[ $stages == *" paths "* ]]; then
    paths=$out/paths
    note "" "## 5. Other paths on CUDA, one epoch each" ""
    stage path-fast "$py" train_new_model.py "${one_epoch[@]}" --fast --output-dir "$paths/fast" --save "$paths/fast.pth"
    stage path-pil "$py" train_new_model.py "${one_epoch[@]}" --data-pipeline pil \
        --output-dir "$paths/pil" --save "$paths/pil.pth"
    stage path-freeze-backbone "$py" train_old_model.py "${one_epoch[@]}" --freeze-backbone \
        --output-dir "$paths/freeze" --save "$paths/freeze.pth"
    stage path-elodi-references elodi_references "$paths/elodi"
    # No warm-up, so that the one epoch runs the ensemble (bf16 on CUDA: folded, vmapped members).
    stage path-elodi-bf16 "$py" main.py "${one_epoch[@]}" --method ELODI --precision bf16 --elodi-warmup 0 \
        --old-ckpt "$paths/elodi/old.pth" --ensemble-dir "$paths/elodi/ensemble" --ensemble-size 2 \
        --output-dir "$paths/elodi-bf16"
fi

# --- summary -------------------------------------------------------------------------------------
total=$((SECONDS - start_all))
note "" "## Summary" "" "Total time: $((total / 60)) min $((total % 60)) s."
if [ ${#failures[@]} -eq 0 ]; then
    note "Every stage finished with exit status 0."
else
    note "Failed stages:"
    for f in "${failures[@]}"; do note "- $f"; done
fi
if [ ${#skipped[@]} -gt 0 ]; then
    note "" "Skipped:"
    for part in "${skipped[@]}"; do note "- $part"; done
fi
echo "gpu_check: report in $report ($((total / 60)) min $((total % 60)) s)${failures:+; FAILED: ${failures[*]}}"
[ ${#failures[@]} -eq 0 ]
