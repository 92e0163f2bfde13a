# Helpers of the scripts in tools/ that train several runs: source this file, do not run it.

# usage: print the calling script's header comment (its lines 2 up to the first blank line).
usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
}

# train_run OUT_DIR DONE_FILE SCRIPT [FLAGS ...]: run a training script with ${PYTHON:-python},
# its output in OUT_DIR/train.log. Skipped when DONE_FILE exists, so that repeating a sweep only
# trains what is missing; an interrupted run (OUT_DIR/state.pth) gets --resume and its log goes on.
train_run() {
    local out=$1 done_file=$2 resume=()
    shift 2
    if [ -f "$done_file" ]; then
        echo "done already: $out"
        return 0
    fi
    mkdir -p "$out"
    if [ -f "$out/state.pth" ]; then
        resume=(--resume)
    else
        : > "$out/train.log"
    fi
    echo "start: $out${CUDA_VISIBLE_DEVICES:+ (GPU $CUDA_VISIBLE_DEVICES)}"
    if "${PYTHON:-python}" "$@" "${resume[@]}" >> "$out/train.log" 2>&1; then
        echo "finished: $out | $(tail -n 1 "$out/train.log")"
    else
        echo "FAILED: $out (see $out/train.log):" >&2
        tail -n 5 "$out/train.log" >&2
        return 1
    fi
}

# logged_run RUN_DIR SCRIPT [FLAGS ...]: ${PYTHON:-python} SCRIPT FLAGS --output-dir RUN_DIR, its
# output appended to RUN_DIR/train.log, then one line: "done: ..." with the run's last line, or
# "FAILED: ..." on stderr, which also sets the caller's variable failed=1 (a study goes on past a
# failed run and reports it in its exit status).
logged_run() {
    local dir=$1 script=$2
    shift 2
    mkdir -p "$dir"
    if "${PYTHON:-python}" "$script" "$@" --output-dir "$dir" >> "$dir/train.log" 2>&1; then
        echo "done: $dir | $(tail -n 1 "$dir/train.log")"
    else
        echo "FAILED: $dir (see $dir/train.log): $(tail -n 1 "$dir/train.log")" >&2
        failed=1
    fi
}

# cpu_study: the set-up of the CPU study scripts: PY, the interpreter (${PYTHON:-python}, exported
# as PYTHON for the helpers here), OpenMP threads that wait without spinning (spinning threads slow
# a shared CPU down) and failed=0 (logged_run sets it to 1).
cpu_study() {
    export OMP_WAIT_POLICY=PASSIVE
    PY=${PYTHON:-python}
    export PYTHON=$PY
    failed=0
}

# train RUN_DIR SCRIPT [FLAGS ...]: logged_run with the calling script's common flags, its array C.
train() {
    logged_run "$1" "$2" "${C[@]}" "${@:3}"
}

# run_jobs N FUNCTION: call FUNCTION 0, ..., FUNCTION N-1, one after another; with GPUS="0 1 2 3"
# in the environment, one worker per listed GPU runs in parallel with the others, worker g doing
# jobs g, g + #GPUS, ... (round robin) with CUDA_VISIBLE_DEVICES set to its GPU. A failed job
# does not stop the others; the return status is 1 when any failed.
run_jobs() {
    local n=$1 fn=$2 failed=0 i g p gpus pids=()
    read -ra gpus <<< "${GPUS:-}"
    if [ ${#gpus[@]} -eq 0 ]; then
        for ((i = 0; i < n; i++)); do
            "$fn" "$i" || failed=1
        done
        return $failed
    fi
    for g in "${!gpus[@]}"; do
        (
            export CUDA_VISIBLE_DEVICES=${gpus[g]}
            status=0
            for ((i = g; i < n; i += ${#gpus[@]})); do
                "$fn" "$i" || status=1
            done
            exit $status
        ) &
        pids+=($!)
    done
    # A script's background jobs ignore Ctrl-C: stop the workers and their training processes.
    trap 'for p in "${pids[@]}"; do pkill -TERM -P "$p"; kill -TERM "$p"; done 2>/dev/null; exit 130' INT TERM
    for p in "${pids[@]}"; do
        wait "$p" || failed=1
    done
    trap - INT TERM
    return $failed
}
