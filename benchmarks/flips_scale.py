"""tools.flips at ImageNet size: wall-clock time and peak memory of one analysis.

Writes --runs synthetic update runs of --samples test samples x --classes classes (C_old half of
them; main.py's files: results.json, and predictions.npz with float16 logits of both models as
--save-logits writes them, without the fp32 margins that newer runs also store, so that the
margins are computed from the logits: the heavier path), then times

    python -m tools.flips RUN_1 ... RUN_n --out OUT --baseline RUN_1

in a child process at the default resamples, and prints its wall-clock seconds and peak resident
memory (the child's maximum RSS). Predictions: the old model right on 70% of the old-class
samples, each update right on 75% of all samples, every run's errors drawn independently.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/flips_scale.py [--runs 10 --samples 50000 --classes 1000]
        [--dir DIR] [--resamples 10000]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def logits_with_argmax(rng, pred: np.ndarray, classes: int) -> np.ndarray:
    """float16 logits whose argmax is ``pred``, written in chunks (the whole float32 array of
    50,000 x 1,000 would be 200 MB)."""
    out = np.empty((len(pred), classes), dtype=np.float16)
    for start in range(0, len(pred), 8192):
        rows = slice(start, start + 8192)
        z = rng.standard_normal((len(pred[rows]), classes), dtype=np.float32)
        z[np.arange(len(z)), pred[rows]] = z.max(axis=1) + rng.exponential(1.0, len(z)).astype(np.float32)
        out[rows] = z
    return out


def write_runs(folder: Path, runs: int, samples: int, classes: int) -> list[Path]:
    rng = np.random.default_rng(0)
    num_old = classes // 2
    targets = np.arange(samples) % classes
    old = targets < num_old
    old_pred = np.where(old & (rng.random(samples) < 0.7), targets, rng.integers(0, num_old, samples))
    old_logits = logits_with_argmax(rng, old_pred, num_old)
    names = [f"class{c}" for c in range(classes)]
    out = []
    for i in range(runs):
        pred = np.where(rng.random(samples) < 0.75, targets, rng.integers(0, classes, samples))
        run = folder / f"MPT_KL-b{i % 5}-seed{42 + i // 5}"
        run.mkdir(parents=True, exist_ok=True)
        config = {"method": "MPT_KL", "dataset": "imagenet", "arch": "resnet18", "b": float(i % 5),
                  "seed": 42 + i // 5}
        (run / "results.json").write_text(json.dumps({"role": "update", "num_old": num_old, "num_classes": classes,
                                                      "classes": names, "config": config}))
        np.savez(run / "predictions.npz", targets=targets, old_pred=old_pred, pred=pred, num_old=np.int64(num_old),
                 logits=logits_with_argmax(rng, pred, classes), old_logits=old_logits)
        out.append(run)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--samples", type=int, default=50000)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--dir", help="where the runs are written (default: a temporary folder, removed after)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.dir or tmp)
        started = time.perf_counter()
        runs = write_runs(folder / "runs", args.runs, args.samples, args.classes)
        print(f"wrote {args.runs} runs of {args.samples} x {args.classes} in {time.perf_counter() - started:.0f} s")
        command = [sys.executable, "-m", "tools.flips", *map(str, runs), "--out", str(folder / "flips"),
                   "--baseline", str(runs[0]), "--resamples", str(args.resamples)]
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True)
        seconds = time.perf_counter() - started
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    print(f"tools.flips: {args.runs} runs x {args.samples} samples x {args.classes} classes, --baseline, "
          f"{args.resamples} resamples: {seconds:.1f} s, peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
