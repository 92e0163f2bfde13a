"""A run's files: checked writable before anything runs, written atomically once it succeeded.

    <output-dir>/results.json      the final metrics, the class split and the settings
    <output-dir>/predictions.npz   an update's per-sample test predictions (and logits): the format
                                   of ``save_predictions``, which writes it from predictions made anywhere
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
from utils.metrics import margins, margins_agreeing_with

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
    """Per-sample test predictions of an update (``utils.evaluation.Scores``) in the format of
    ``save_predictions``, the margins taken from the fp32 logits that gave the predictions, the
    logits stored where there are at most LOGITS_MAX_CLASSES classes or with ``save_logits``."""
    keep = save_logits or scores.logits.shape[1] <= LOGITS_MAX_CLASSES
    save_predictions(path, targets, scores.old_pred, scores.pred, num_old, logits=scores.logits.numpy(),
                     old_logits=scores.old_logits.numpy(), store_logits=keep)


def save_predictions(path, targets, old_pred, pred, num_old: int, logits=None, old_logits=None, *,
                     store_logits: bool = True):
    """Write ``path`` (predictions.npz) from predictions made anywhere (numpy arrays, tensors or
    lists), in the format that main.py writes and ``python -m tools.flips`` reads:

        targets     int64 (N,)   the true class of every test sample, classes 0 .. C-1
        old_pred    int64 (N,)   the old model's prediction, a class < C_old
        pred        int64 (N,)   the updated model's prediction
        num_old     int64 ()     C_old: the classes 0 .. C_old-1 are the old ones
        margin      float32 (N,) z_y - max_{j != y} z_j of the updated model's ``logits`` (N, C)
        old_margin  float32 (N,) the same of the old model's ``old_logits`` (N, C_old); NaN on
                                 new-class samples, where the old model has no output for y
        logits, old_logits       (float16, float32 where a value exceeds its range; ``compact``)

    The margins and logits are written where the logits are given (the logits unless not
    ``store_logits``); each margin agrees in sign with its prediction (at most 0 where it is
    wrong: ``utils.metrics.margins_agreeing_with``). Inconsistent arrays are a ValueError."""
    targets, old_pred, pred = (_labels(a, name) for a, name in ((targets, "targets"), (old_pred, "old_pred"),
                                                                (pred, "pred")))
    n = len(targets)
    if not len(old_pred) == len(pred) == n:
        raise ValueError(f"targets, old_pred and pred must have one entry per test sample, got {n}, "
                         f"{len(old_pred)} and {len(pred)}")
    if isinstance(num_old, bool) or not float(num_old).is_integer() or num_old < 1:
        raise ValueError(f"num_old must be a positive integer (C_old), got {num_old!r}")
    num_old = int(num_old)
    if n and old_pred.max() >= num_old:
        raise ValueError(f"old_pred holds class {old_pred.max()}, but the old model knows only classes "
                         f"0 .. {num_old - 1} (num_old = {num_old})")
    arrays = {"targets": targets, "old_pred": old_pred, "pred": pred, "num_old": np.int64(num_old)}
    old = targets < num_old
    if logits is not None:
        logits = _scores(logits, "logits", n)
        if n and max(targets.max(), pred.max()) >= logits.shape[1]:
            raise ValueError(f"logits have {logits.shape[1]} columns, but targets or pred hold class "
                             f"{max(targets.max(), pred.max())}")
        arrays["margin"] = margins_agreeing_with(pred, targets, margins(logits, targets))
    if old_logits is not None:
        old_logits = _scores(old_logits, "old_logits", n)
        if old_logits.shape[1] != num_old:
            raise ValueError(f"old_logits have {old_logits.shape[1]} columns but num_old is {num_old}: the old "
                             "model has one output per old class")
        old_margin = np.full(n, np.nan, dtype=np.float32)
        old_margin[old] = margins_agreeing_with(old_pred[old], targets[old],
                                                margins(old_logits[old], targets[old]))
        arrays["old_margin"] = old_margin
    if store_logits:
        arrays.update({k: compact(v) for k, v in (("logits", logits), ("old_logits", old_logits)) if v is not None})
    atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def _labels(values, name: str) -> np.ndarray:
    """Class indices as int64 (N,), from a tensor, an array or a list."""
    a = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one class index per sample, shape (N,), got shape {a.shape}")
    if a.size and not (np.issubdtype(a.dtype, np.integer) or np.all(np.mod(a, 1) == 0)):
        raise ValueError(f"{name} must hold class indices (integers), got {a.dtype} values")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ValueError(f"{name} holds a negative class index ({a.min()})")
    return a


def _scores(values, name: str, n: int) -> np.ndarray:
    """Logits as a float array (N, classes), from a tensor or an array."""
    a = np.asarray(values.detach().float().cpu() if hasattr(values, "detach") else values)
    if a.ndim != 2 or len(a) != n:
        raise ValueError(f"{name} must have shape (N, classes) with N = {n} samples, got {a.shape}")
    return a


def results_record(role: str, metrics: dict, checkpoint, data, weights: str | None, config: dict,
                   setting: dict | None = None, device: str | None = None,
                   ignored_flags: dict | None = None, method: dict | None = None,
                   made_by: dict | None = None, references: dict | None = None) -> dict:
    """The content of results.json: the metrics (validation ones under "val"), the model's
    checkpoint, the class split (``data``: utils.runner.RunData), the number of training images,
    the validation split and an old model's share of the images, the kind of experiment
    (``setting``: utils.runner.run_setting), the pretrained weights the model started from, the
    settings, the flags of other methods given to an update (``ignored_flags``: {"--b": 2.0}; not
    in the settings), an update's method (``method``: utils.cli.method_record), the code and
    command that made the run (``made_by``: {"code": {"commit", "dirty"} or None, "command":
    [...]}) and the software and hardware (of ``device``, by default the settings' own); an
    update's ``references``: where each reference model came from ({"old":
    utils.checkpoint.reference_record or utils.external.load_external's record, "new": ...})."""
    record = {"role": role, **metrics, "checkpoint": str(checkpoint), "num_old": data.num_old,
              "num_classes": data.num_classes, "classes": data.classes, "train_size": len(data.dataset.train),
              "split": data.holdout}
    if data.old_data is not None:
        record["old_data"] = data.old_data
    record.update(setting=setting, weights=weights, config=config)
    if ignored_flags is not None:
        record["ignored_flags"] = ignored_flags
    if method is not None:
        record["method"] = method
    if references is not None:
        record["references"] = references
    return {**record, **(made_by or {}), "environment": environment(device or config["device"])}
