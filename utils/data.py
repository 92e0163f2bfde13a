"""Data: the data sets by name, read from disk into the one data interface (utils/inputs.py).

CIFAR is decoded once into uint8 tensors (N, 3, 32, 32) and fed as device-resident tensors
(``TensorInputs``), or with ``--data-pipeline pil`` through the official per-image pipeline
(utils/pil_pipeline.py), kept for comparison. ImageNet cannot live in one tensor:
``--dataset imagenet`` reads JPEG folders through DataLoaders (utils/imagenet.py).
``--val-fraction`` holds out part of the training set (``validation_split``).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from utils.device import prefers_channels_last
from utils.errors import UserError
from utils.image_files import CIFAR_FILES, DATASETS, cifar_batches, cifar_folder, class_images, read_pickle
from utils.imagenet import load_image_folder, load_imagenet
from utils.inputs import (
    NORMALIZATION,
    SPLIT,
    Dataset,
    ImageSet,
    Normalize,
    TensorInputs,
    TrainLoader,
    class_folders,
    mix_seed,
)
from utils.pil_pipeline import pil_train_loader


@dataclass
class TensorDataset(Dataset):
    """A ``Dataset`` whose splits are uint8 ``ImageSet`` tensors (CIFAR)."""

    def inputs(self, args, device: torch.device, rank: int = 0, world: int = 1, min_share: int = 1) -> TensorInputs:
        """Augmented train batches and unaugmented eval batches, normalised (and resized to
        ``--image-size``) on ``device``."""
        normalize = normalizer(args, channels_last=prefers_channels_last(device))
        splits = {k: v.to(device) for k, v in self.splits.items()}
        if args.data_pipeline == "pil":
            loader = pil_train_loader(splits["train"], args, device, normalize, rank, world, min_share)
        else:
            loader = TrainLoader(splits["train"], args.batch_size, args.seed, normalize, rank=rank,
                                 world_size=world, min_share=min_share)
        return TensorInputs(splits, normalize, loader, args.batch_size, args.eval_batch_size, rank, world,
                            min_share)


def normalization(args) -> str:
    """The statistics the inputs are normalised with: a pretrained backbone expects ImageNet's."""
    return ("imagenet" if args.dataset in ("imagenet", "folder") or getattr(args, "pretrained", False)
            else "cifar")


def normalizer(args, channels_last: bool = False) -> Normalize:
    """The normalisation (and resize to ``--image-size``) of a run with these flags."""
    return Normalize(*NORMALIZATION[normalization(args)], size=getattr(args, "image_size", None),
                     channels_last=channels_last)


def input_spec(args) -> dict:
    """What a model was fed, stored in its checkpoint: a reference model must be fed the same."""
    return {"image_size": args.image_size, "normalization": normalization(args)}


def num_old_classes(num_classes: int, old_fraction: float) -> int:
    """C_old: the first round(fraction * C) classes, in the data set's own order; fraction 1.0
    is a same-class update (C_old = C: every class is old)."""
    if not 0 < old_fraction <= 1:
        raise UserError(f"--old-fraction must lie in (0, 1], got {old_fraction}")
    c_old = int(round(num_classes * old_fraction))
    if old_fraction < 1 and not 1 <= c_old < num_classes:
        raise UserError(f"--old-fraction {old_fraction} leaves {c_old} of {num_classes} classes "
                        "as old classes; it must leave at least one old and one new class "
                        "(or be 1.0: an update on the same classes)")
    return c_old


def load_dataset(name: str, root: str | os.PathLike, download: bool = True, classes=None) -> Dataset:
    """CIFAR from ``root``: an image-folder layout ``train/<class>/*`` + ``test/<class>/*``
    (sorted class names give the indices), or torchvision's format, downloaded when absent.
    ``folder``: a user's image folders, its classes in the order of the file ``classes``
    (``--classes``; else sorted)."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-root {root} is a file; give the folder that holds the data set")
    if name == "imagenet":
        return load_imagenet(root)
    if name == "folder":
        return load_image_folder(root, classes)
    splits = [split for split in ("train", "test") if (root / split).is_dir()]
    if len(splits) == 1:  # half an image-folder layout: say so instead of trying a download
        other = "test" if splits[0] == "train" else "train"
        raise UserError(f"--data-root {root} has {splits[0]}/ but no {other}/; an image-folder "
                        "data set needs both train/<class>/* and test/<class>/*")
    if splits:
        data = _load_image_folders(name, root)
    else:
        data = _load_torchvision_cifar(name, root, download)
    if data.num_classes != DATASETS[name]:
        raise UserError(f"{root} holds {data.num_classes} classes but {name} has {DATASETS[name]}; "
                        "check --dataset and --data-root")
    return data


def fetch_dataset(name: str, root: str | os.PathLike):
    """Download CIFAR in torchvision's format into ``root`` where neither its files nor image
    folders are there (a no-op for the other data sets and for data already in place)."""
    root = Path(root)
    # Anything else already at root (image folders, a file) is load_dataset's to check.
    in_place = root.is_file() or any((root / split).is_dir() for split in ("train", "test"))
    if name in ("cifar10", "cifar100") and not in_place and not cifar_folder(name, root).is_dir():
        _download_cifar(name, root, download=True)


def _load_image_folders(name: str, root: Path) -> TensorDataset:
    classes = class_folders(root / "train", root / "test")
    return TensorDataset(name, classes, _read_split(root / "train", classes), _read_split(root / "test", classes))


def _read_split(folder: Path, classes: list) -> ImageSet:
    # PIL, not torchvision.io: torchvision 0.29 deprecates its decoders.
    images, targets = [], []
    for index, cls in enumerate(classes):
        files = class_images(folder / cls)
        if not files:
            raise UserError(f"no images in {folder / cls}; expected image files such as 0001.jpg")
        for f in files:
            try:
                with Image.open(f) as im:
                    images.append(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1))
            except (OSError, UnidentifiedImageError) as err:
                raise UserError(f"cannot decode the image {f} ({err}); replace or remove it") from None
            targets.append(index)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise UserError(f"images in {folder} have different sizes {sorted(shapes)[:3]}; "
                        "CIFAR images must all be 32x32")
    return ImageSet(torch.stack(images), torch.tensor(targets, dtype=torch.int64))


def _load_torchvision_cifar(name: str, root: Path, download: bool) -> TensorDataset:
    """torchvision's pickled CIFAR files under ``root`` (or ``root`` itself being their folder),
    read directly: no checksum, so a subset or a re-pickled copy loads too. When absent, they are
    downloaded through torchvision."""
    folder = cifar_folder(name, root)
    if not folder.is_dir():
        _download_cifar(name, root, download)
    return _read_cifar_pickles(name, folder)


def _download_cifar(name: str, root: Path, download: bool):
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    created = not root.exists()
    try:
        cls(str(root), train=True, download=download)
    except (RuntimeError, OSError) as err:  # absent and not downloadable (offline, unwritable, corrupt)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # the download attempt made it: leave no empty folder behind
        raise UserError(
            f"cannot find or download {name} under --data-root {root} ({err}). Give --data-root a "
            f"folder with torchvision's {name} files, or an image-folder layout train/<class>/*.png "
            "and test/<class>/*.png, or run once with network access") from None


def _read_cifar_pickles(name: str, folder: Path) -> TensorDataset:
    _, train_glob, test_file, meta_file, names_key, _ = CIFAR_FILES[name]

    def split(paths: list, expected: str) -> ImageSet:
        if not paths:
            raise UserError(f"{folder} has no {expected}; expected torchvision's {name} files")
        images, targets = cifar_batches(name, paths)
        return ImageSet(torch.from_numpy(images), torch.tensor(targets, dtype=torch.int64))

    train_paths = sorted(folder.glob(train_glob))
    test_paths = [folder / test_file] if (folder / test_file).is_file() else []
    train, test = split(train_paths, train_glob), split(test_paths, test_file)
    meta = folder / meta_file
    classes = list(read_pickle(meta, name)[names_key]) if meta.is_file() else [str(c) for c in range(DATASETS[name])]
    return TensorDataset(name, classes, train, test)


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


def indices_digest(indices: torch.Tensor) -> str:
    """A short hash of a set of sample indices: two runs can tell whether they used the same samples."""
    return hashlib.sha256(indices.sort().values.numpy().astype("<i8").tobytes()).hexdigest()[:16]


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
