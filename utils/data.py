"""The data sets by name, and the experiment's splits of them: the top of the data path.

``load_dataset`` chooses a reader, one module per source: utils/cifar.py (CIFAR from image
folders or torchvision's files) and utils/imagenet.py (ImageNet's JPEG folders and a user's own,
``--dataset folder``); each returns a ``Dataset`` (utils/inputs.py) whose ``.inputs(...)`` builds
its pipeline, and the reader's module is where to go next. ``fetch_dataset`` downloads what a
reader would otherwise miss. Then the splits a run takes: C_old (``num_old_classes``), the
``--val-fraction`` hold-out (``validation_split``) and the old model's ``--old-data-fraction``
share of the rest (``old_data_subset``), both stratified and drawn from ``--split-seed`` alone;
``input_spec`` is what a checkpoint records of the inputs its model was fed.
"""
from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import torch

from utils.batches import SPLIT, mix_seed
from utils.cifar import fetch_cifar, load_cifar
from utils.errors import UserError
from utils.image_files import CIFAR_FILES, DATASETS
from utils.imagenet import load_image_folder, load_imagenet
from utils.inputs import Dataset, normalization


def load_dataset(name: str, root: str | os.PathLike, download: bool = True, classes=None) -> Dataset:
    """The data set ``name`` from ``root``, read by its reader. CIFAR (utils/cifar.py): an
    image-folder layout ``train/<class>/*`` + ``test/<class>/*`` (sorted class names give the
    indices), or torchvision's format, downloaded when absent. ImageNet and ``folder``
    (utils/imagenet.py); ``folder``: a user's image folders, its classes in the order of the file
    ``classes`` (``--classes``; else sorted)."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-root {root} is a file; give the folder that holds the data set")
    if name == "imagenet":
        return load_imagenet(root)
    if name == "folder":
        return load_image_folder(root, classes)
    return load_cifar(name, root, download)


def fetch_dataset(name: str, root: str | os.PathLike):
    """Download CIFAR in torchvision's format into ``root`` where neither its files nor image
    folders are there (a no-op for the other data sets and for data already in place)."""
    if name in CIFAR_FILES:
        fetch_cifar(name, Path(root))


def num_old_classes(num_classes: int, old_fraction: float) -> int:
    """C_old: the first round(fraction * C) classes, in the data set's own order; fraction 1.0
    is a same-class update (C_old = C: every class is old). The flag's range is checked with the
    other flags (utils.cli.validate); what depends on C is checked here."""
    c_old = int(round(num_classes * old_fraction))
    if old_fraction != 1 and not 1 <= c_old < num_classes:
        raise UserError(f"--old-fraction {old_fraction} leaves {c_old} of {num_classes} classes "
                        "as old classes; it must leave at least one old and one new class "
                        "(or be 1.0: an update on the same classes)")
    return c_old


def validation_split(targets: torch.Tensor, fraction: float, split_seed: int) -> tuple[torch.Tensor, dict]:
    """The training samples held out by ``--val-fraction F --split-seed S``: their indices into
    the whole training set, and the record every checkpoint keeps of the split it was trained
    without (fraction, split seed, and a hash of the indices, so that two runs can tell whether
    they held out the same images). The split depends on F and S only, never on the training
    seed, so runs over several seeds, and every model of an experiment, share one split."""
    if fraction == 0:
        return torch.zeros(0, dtype=torch.int64), {"val_fraction": 0.0}
    keep, held = stratified_split(targets, fraction, split_seed)
    if len(keep) == 0 or len(held) == 0:
        raise UserError(f"--val-fraction {fraction} leaves {len(keep)} training and {len(held)} "
                        "validation samples; choose a fraction that leaves both")
    return held, {"val_fraction": fraction, "split_seed": split_seed, "heldout_sha256": indices_digest(held)}


def old_data_subset(targets: torch.Tensor, index: torch.Tensor, fraction: float,
                    split_seed: int, classes: list | None = None) -> tuple[torch.Tensor, dict]:
    """The old model's share of its training samples under ``--old-data-fraction F`` (a data-growth
    update: the old model sees F of every old class's images, the new models all of them).
    ``targets`` are the classes of the samples it could train on (old classes, after the
    validation hold-out), ``index`` their indices into the whole training set. Returns the
    positions chosen (of a class of n images, n - round((1 - F) * n), drawn with ``split_seed``)
    and the record that its checkpoint and results.json keep: fraction, split seed and a hash of
    the chosen indices. A fraction that would keep no image of some class (4 images at 0.1) is
    refused (``classes``: the names for the message)."""
    if fraction == 1:
        return torch.arange(len(targets)), {"old_data_fraction": 1.0}
    kept, _ = stratified_split(targets, 1 - fraction, split_seed)
    present = targets.unique()
    empty = present[~torch.isin(present, targets[kept])].tolist()
    if empty:
        sizes = {c: int((targets == c).sum()) for c in empty}
        smallest = int(min((targets == c).sum() for c in present.tolist()))
        named = ", ".join(f"{classes[c] if classes else c} ({sizes[c]} images)" for c in empty[:5])
        raise UserError(f"--old-data-fraction {fraction:g} keeps no training image of {len(empty)} old class(es): "
                        f"{named}{' ...' if len(empty) > 5 else ''} (a class of n images keeps "
                        f"n - round((1 - F) * n) of them); give --old-data-fraction "
                        f"{math.ceil(1000 / smallest) / 1000:g} or more to keep at least one image of every class")
    return kept, {"old_data_fraction": fraction, "split_seed": split_seed,
                  "subset_sha256": indices_digest(index[kept])}


def stratified_split(targets: torch.Tensor, fraction: float, seed: int):
    """Indices (keep, held_out): ``fraction`` of every class held out, chosen with ``seed``."""
    g = torch.Generator().manual_seed(mix_seed(SPLIT, seed))
    keep, held = [], []
    for c in targets.unique():
        idx = (targets == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(fraction * len(idx)))
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def indices_digest(indices: torch.Tensor) -> str:
    """A short hash of a set of sample indices: two runs can tell whether they used the same samples."""
    return hashlib.sha256(indices.sort().values.numpy().astype("<i8").tobytes()).hexdigest()[:16]


def input_spec(args) -> dict:
    """What a model was fed, stored in its checkpoint: a reference model must be fed the same."""
    return {"image_size": args.image_size, "normalization": normalization(args)}
