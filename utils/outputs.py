"""A run's files: checked writable before anything runs, written atomically once it succeeded.

    <output-dir>/results.json      the final metrics, the class split and the settings
    <output-dir>/predictions.npz   an update's per-sample test predictions (and logits)
    --save (default <output-dir>/checkpoint.pth)   the trained model's checkpoint
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from utils.checkpoint import atomic_write
from utils.device import environment
from utils.errors import UserError
from utils.metrics import margins

# Test logits are stored for up to this many classes (float16: 20 KB per 100 samples at 100
# classes); above it, only with --save-logits.
LOGITS_MAX_CLASSES = 100


RESULTS_FILE = "results.json"   # written last: its presence marks a finished run
PREDICTIONS_FILE = "predictions.npz"


def check_writable(path: Path, flag: str, folder: bool):
    """Fail, writing nothing, when the folder (``folder``) or file that ``flag`` names cannot be
    created or replaced: it is of the other kind, or its nearest existing folder is a file or
    read-only."""
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{flag} {path} is a {'file' if folder else 'folder'}; "
                        f"give {'a folder' if folder else 'a file path'}")
    start = (path if folder else path.parent).absolute()
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {existing} is a file; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written: {existing} is read-only; give a writable path")


def prepare_output_dir(path: Path):
    if path.exists() and not path.is_dir():
        raise UserError(f"--output-dir {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: concurrent runs may probe too
            pass
    except OSError as err:
        raise UserError(f"cannot write to --output-dir {path} ({err.strerror}); give a writable folder") from None


def checkpoint_path(args, out_dir: Path) -> Path:
    return Path(args.save) if args.save else out_dir / "checkpoint.pth"


def write_json(path: Path, obj):
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def compact(logits: np.ndarray) -> np.ndarray:
    """float16, unless some logit lies beyond its range (a barely trained model's can): then
    float32, rather than infinities."""
    fits = np.all(np.abs(logits) <= np.finfo(np.float16).max)
    return logits.astype(np.float16 if fits else np.float32)


def write_predictions(path: Path, targets, scores, num_old: int, save_logits: bool = False):
    """Per-sample test predictions of an update (``utils.evaluation.Scores``): ``targets``,
    ``old_pred``, ``pred``, C_old (``num_old``) and the margins z_y - max_{j != y} z_j of both
    models (``margin``, ``old_margin``; float32, NaN for the old model on new-class samples),
    taken from the fp32 logits that gave the predictions, so that a margin is below zero exactly
    where the prediction is wrong (0 on a tie); with the logits (``compact``) too where there are
    at most LOGITS_MAX_CLASSES classes or with ``save_logits``."""
    targets = np.asarray(targets).astype(np.int64)
    old = targets < num_old
    old_margin = np.full(len(targets), np.nan, dtype=np.float32)
    old_margin[old] = margins(scores.old_logits.numpy()[old], targets[old])
    arrays = {"targets": targets, "old_pred": scores.old_pred.astype(np.int64),
              "pred": scores.pred.astype(np.int64), "num_old": np.int64(num_old),
              "margin": margins(scores.logits.numpy(), targets), "old_margin": old_margin}
    if save_logits or scores.logits.shape[1] <= LOGITS_MAX_CLASSES:
        arrays.update(logits=compact(scores.logits.numpy()), old_logits=compact(scores.old_logits.numpy()))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def results_record(role: str, metrics: dict, checkpoint, data, weights: str | None, config: dict,
                   setting: dict | None = None, device: str | None = None,
                   ignored_flags: dict | None = None, method: dict | None = None,
                   made_by: dict | None = None) -> dict:
    """The content of results.json: the metrics (validation ones under "val"), the model's
    checkpoint, the class split (``data``: utils.runner.RunData), the number of training images,
    the validation split and an old model's share of the images, the kind of experiment
    (``setting``: utils.runner.run_setting), the pretrained weights the model started from, the
    settings, the flags of other methods given to an update (``ignored_flags``: {"--b": 2.0}; not
    in the settings), an update's method (``method``: utils.cli.method_record), the code and command that made the run (``made_by``: {"code": {"commit",
    "dirty"} or None, "command": [...]}) and the software and hardware (of ``device``, by
    default the settings' own)."""
    record = {"role": role, **metrics, "checkpoint": str(checkpoint), "num_old": data.num_old,
              "num_classes": data.num_classes, "classes": data.classes, "train_size": len(data.dataset.train),
              "split": data.split}
    if data.old_data is not None:
        record["old_data"] = data.old_data
    record.update(setting=setting, weights=weights, config=config)
    if ignored_flags is not None:
        record["ignored_flags"] = ignored_flags
    if method is not None:
        record["method"] = method
    return {**record, **(made_by or {}), "environment": environment(device or config["device"])}
