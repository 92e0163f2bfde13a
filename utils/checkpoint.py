"""Self-describing checkpoints, written atomically (``atomic_write``, which every final file uses).

A model checkpoint holds the weights and everything needed to rebuild the model: architecture,
head size, embedding size, the inputs it was trained on (image size and normalisation), data
set, class split, epoch and the metrics at save time.
"""
from __future__ import annotations

import glob
import hashlib
import os
import pickle
import secrets
import zipfile
from pathlib import Path

import torch

from models import build_model
from utils.errors import UserError

FORMAT = "mpt-checkpoint/1"
MAKERS = {"old": "train_old_model.py", "new": "train_new_model.py",
          "ensemble": "train_new_model.py --seed S --save PATH"}


def atomic_write(path: str | os.PathLike, write):
    """``write(f)`` into a temporary file in the same folder, then rename it to ``path``: a crash
    mid-write leaves the previous file intact and never a truncated one. Every final file of a
    run is written so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per call, so that concurrent writers never share a temporary file; opened
    # like any new file so that it gets the usual (umask) permissions, not mkstemp's owner-only ones.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    f = open(tmp, "xb")
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike):
    """Delete the temporary files of ``path`` that an ``atomic_write`` killed mid-write left
    behind (a run removes its own files' at start: no other process writes them then)."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*-*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_save(obj, path: str | os.PathLike):
    """torch.save, atomically (``atomic_write``)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def model_checkpoint(model, *, arch, num_classes, embed_dim, dataset, num_old, role, epoch,
                     metrics, config, inputs: dict | None = None, split: dict | None = None,
                     weights: str | None = None, old_data: dict | None = None, made_by: dict | None = None,
                     classes: list | None = None) -> dict:
    """``inputs``: ``utils.data.input_spec`` of the run (image size and normalisation);
    ``split``: the validation split the model was trained without (``utils.data.validation_split``;
    None: trained on the whole training set); ``weights``: the pretrained weights it started from;
    ``old_data``: an old model's share of the training images (``utils.data.old_data_subset``);
    ``made_by``: the code and command that made it ({"code": ..., "command": [...]}); ``classes``:
    the names of its head's classes, in row order."""
    return {"format": FORMAT, "model": unwrap(model).state_dict(), "arch": arch,
            "num_classes": num_classes, "embed_dim": embed_dim, "inputs": inputs, "dataset": dataset,
            "num_old_classes": num_old, "role": role, "epoch": epoch, "metrics": metrics,
            "config": config, "split": split, "weights": weights,
            "old_data": old_data, "classes": classes, **(made_by or {})}


def old_model_setting(ckpt: dict | None, source: dict | None = None) -> dict:
    """What an old model says about the kind of update it starts: its architecture and its share
    of the training images (1.0 for checkpoints written before --old-data-fraction). Which images
    (split seed, hash of the indices) is in results.json's references (``reference_record``). An
    old model from outside (``ckpt`` None, ``source``: utils.external.load_external's record):
    its architecture and file; its training images are not known."""
    if ckpt is None:
        return {"old_arch": source["arch"], "old_source": "state_dict", "old_sha256": source["sha256"]}
    old_data = ckpt.get("old_data") or {"old_data_fraction": 1.0}
    return {"old_arch": ckpt["arch"], "old_data_fraction": old_data["old_data_fraction"]}


def file_digest(path) -> str:
    """SHA-256 (16 hex digits) of a file: which reference model a run used."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def reference_record(path, ckpt: dict) -> dict:
    """Where a reference model of this repository came from, for results.json: its file (path and
    hash), architecture, the validation split it was trained without, an old model's share of the
    images, and the code and command that made it."""
    record = {"source": "checkpoint", "path": str(path), "sha256": file_digest(path), "arch": ckpt["arch"],
              "role": ckpt.get("role")}
    if ckpt.get("role") == "old":
        record["old_data"] = ckpt.get("old_data") or {"old_data_fraction": 1.0}
    return {**record, "split": ckpt.get("split") or {"val_fraction": 0.0}, "weights": ckpt.get("weights"),
            "code": ckpt.get("code"), "command": ckpt.get("command")}


def unwrap(model):
    """The plain module under DistributedDataParallel / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def read_checkpoint(path: str | os.PathLike, role: str = "old") -> dict:
    """Load a checkpoint on the CPU, whatever device saved it; explain every failure in one line."""
    path = Path(path)
    make = MAKERS.get(role, "the script that wrote it")
    if not path.is_file():
        raise UserError(f"{role} model checkpoint {path} not found; create it with {make}, "
                        "or give its path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); "
                        f"it may be truncated: re-create it with {make}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        plain = (f", or, for a plain state_dict of a model trained elsewhere, give --{role}-arch ARCH and "
                 f"--{role}-classes FILE (main.py)" if role in ("old", "new") else "")
        raise UserError(f"{path} is not a checkpoint of this repository (no '{FORMAT}' header); "
                        f"create it with {make}{plain}")
    return ckpt


def load_model(path, role: str, *, num_classes: int, dataset: str, num_old: int | None = None,
               inputs: dict | None = None, classes: list | None = None):
    """Rebuild a reference model from its checkpoint alone and check that it fits ``role``:
    ``num_classes`` is the head size the role needs (C_old for the old model, C otherwise);
    ``inputs`` is what this run feeds it (checked against checkpoints that record theirs);
    ``classes``: the run's class names, in order, which the head's rows of a model of image
    folders (``--dataset folder``, whose order ``--classes`` sets) must follow."""
    ckpt = read_checkpoint(path, role)
    saved_inputs = ckpt.get("inputs") or {}
    if inputs is not None and saved_inputs and saved_inputs != inputs:
        raise UserError(f"{path} was trained on inputs {saved_inputs} but this run feeds {inputs}; "
                        "give the reference models' --image-size and --pretrained to this run too")
    if ckpt["dataset"] != dataset:
        raise UserError(f"{path} was trained on {ckpt['dataset']}, not on {dataset}; "
                        f"give a {dataset} checkpoint or --dataset {ckpt['dataset']}")
    # The class split first: a wrong --old-fraction also shows as a head of another size.
    if num_old is not None and ckpt["num_old_classes"] != num_old:
        raise UserError(f"{path} was trained with {ckpt['num_old_classes']} old classes, this run "
                        f"uses {num_old}; use the same --old-fraction")
    if ckpt["num_classes"] != num_classes:
        raise UserError(f"{path} has a {ckpt['num_classes']}-class head but the {role} model needs "
                        f"{num_classes} classes; is it the right file for this role?")
    theirs = ckpt.get("classes")
    if dataset == "folder" and theirs and classes is not None and list(theirs) != list(classes[:len(theirs)]):
        differ = next(i for i, (a, b) in enumerate(zip(theirs, classes)) if a != b)
        raise UserError(f"{path} was trained on other classes, or in another order: its class {differ} is "
                        f"{theirs[differ]!r}, this run's is {classes[differ]!r}; give the --classes FILE it was "
                        "trained with (the old classes first, in the same order)")
    try:
        model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt.get("embed_dim"),
                            image_size=saved_inputs.get("image_size"))
        model.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError) as err:
        raise UserError(f"{path}: weights do not fit architecture {ckpt.get('arch')!r} ({err}); "
                        f"re-create it with {MAKERS.get(role, 'its script')}") from None
    return model.eval().requires_grad_(False), ckpt
