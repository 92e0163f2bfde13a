"""Data: one path for all three scripts.

CIFAR is decoded once into uint8 tensors (N, 3, 32, 32). Training batches are augmented on the
training device (random crop with 4-pixel zero padding + horizontal flip, the distribution of
torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip) and normalised there, with all of
an epoch's randomness drawn up front from (seed, epoch): no per-item Python, a data order that a
resumed run reproduces exactly, and the same global batches whatever the number of processes.
``--data-pipeline pil`` is the official per-image torchvision pipeline, kept for comparison.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError

# The official code's normalisation (CIFAR-10 statistics, also used for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
DATASETS = {"cifar10": 10, "cifar100": 100}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


@dataclass
class ImageSet:
    images: torch.Tensor    # uint8 (N, 3, H, W)
    targets: torch.Tensor   # int64 (N,)

    def __len__(self):
        return len(self.targets)

    def classes_below(self, num_classes: int) -> "ImageSet":
        """The samples whose class index is < num_classes (the old classes)."""
        keep = self.targets < num_classes
        return ImageSet(self.images[keep], self.targets[keep])

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.targets.to(device))


@dataclass
class Dataset:
    name: str
    classes: list
    train: ImageSet
    test: ImageSet

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def num_old_classes(num_classes: int, old_fraction: float) -> int:
    """C_old: the first round(fraction * C) classes, in the data set's own order."""
    if not 0 < old_fraction < 1:
        raise UserError(f"--old-fraction must lie in (0, 1), got {old_fraction}")
    c_old = int(round(num_classes * old_fraction))
    if not 1 <= c_old < num_classes:
        raise UserError(f"--old-fraction {old_fraction} leaves {c_old} of {num_classes} classes "
                        "as old classes; it must leave at least one old and one new class")
    return c_old


def load_dataset(name: str, root: str | os.PathLike, download: bool = True) -> Dataset:
    """CIFAR from ``root``: an image-folder layout ``train/<class>/*`` + ``test/<class>/*``
    (sorted class names give the indices), or torchvision's format, downloaded when absent."""
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of: {', '.join(DATASETS)}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"--data-root {root} is a file; give the folder that holds the data set")
    if (root / "train").is_dir() and (root / "test").is_dir():
        data = _load_image_folders(name, root)
    else:
        data = _load_torchvision_cifar(name, root, download)
    if data.num_classes != DATASETS[name]:
        raise UserError(f"{root} holds {data.num_classes} classes but {name} has {DATASETS[name]}; "
                        "check --dataset and --data-root")
    return data


def _load_image_folders(name: str, root: Path) -> Dataset:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not classes or classes != test_classes:
        raise UserError(f"{root}/train and {root}/test must hold the same class folders "
                        f"(found {len(classes)} and {len(test_classes)})")
    return Dataset(name, classes, _read_split(root / "train", classes), _read_split(root / "test", classes))


def _read_split(folder: Path, classes: list) -> ImageSet:
    from torchvision.io import ImageReadMode, decode_image, read_file

    images, targets = [], []
    for index, cls in enumerate(classes):
        files = sorted(f for f in (folder / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"no images in {folder / cls}; expected image files such as 0001.jpg")
        for f in files:
            images.append(decode_image(read_file(str(f)), mode=ImageReadMode.RGB))
            targets.append(index)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) != 1:
        raise UserError(f"images in {folder} have different sizes {sorted(shapes)[:3]}; "
                        "CIFAR images must all be 32x32")
    return ImageSet(torch.stack(images), torch.tensor(targets, dtype=torch.int64))


def _load_torchvision_cifar(name: str, root: Path, download: bool) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        train, test = (cls(str(root), train=t, download=download) for t in (True, False))
    except (RuntimeError, OSError) as err:  # absent and not downloadable (offline, unwritable, corrupt)
        raise UserError(
            f"cannot find or download {name} under --data-root {root} ({err}). Give --data-root a "
            f"folder with torchvision's {name} files, or an image-folder layout train/<class>/*.png "
            "and test/<class>/*.png, or run once with network access") from None

    def to_set(ds):
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64))

    return Dataset(name, list(train.classes), to_set(train), to_set(test))


def stratified_split(targets: torch.Tensor, fraction: float, seed: int):
    """Indices (keep, held_out): ``fraction`` of every class held out, chosen with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in targets.unique():
        idx = (targets == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(fraction * len(idx)))
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


class Normalize:
    """uint8 (N, 3, H, W) -> normalised float, on the tensor's device."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD, channels_last=False):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        if self.mean.device != images_u8.device:
            self.mean, self.std = self.mean.to(images_u8.device), self.std.to(images_u8.device)
        x = images_u8.float().sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)


def random_crop_flip(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor,
                     padding: int = 4) -> torch.Tensor:
    """Crop each image at offset (dy, dx) of its zero-padded copy, mirrored where ``flip``.

    One gather for the whole batch; offsets lie in [0, 2 * padding] as in RandomCrop."""
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    ar_h = torch.arange(h, device=images.device)
    ar_w = torch.arange(w, device=images.device)
    rows = (dy[:, None] + ar_h)                                           # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)   # (N, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    # Advanced indexing on dims (0, 2, 3) puts the channel dim last: (N, H, W, C).
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


class TrainLoader:
    """Shuffled, augmented, normalised batches from a device-resident uint8 ImageSet.

    Batches are cut from one global permutation; with ``world_size`` > 1 each rank takes its
    share of every global batch, so a distributed run sees the same global batches as one process.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, normalize: Normalize,
                 augment: bool = True, rank: int = 0, world_size: int = 1):
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.normalize, self.augment = normalize, augment
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return -(-len(self.data) // self.batch_size)

    def epoch_randomness(self):
        """(order, dy, dx, flip) for the whole epoch, a function of (seed, epoch) only."""
        n = len(self.data)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 9, (n,), generator=g)
        dx = torch.randint(0, 9, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        return order, dy, dx, flip

    def __iter__(self):
        device = self.data.images.device
        order, dy, dx, flip = (t.to(device) for t in self.epoch_randomness())
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size][self.rank::self.world_size]
            images = self.data.images[idx]
            if self.augment:
                images = random_crop_flip(images, dy[idx], dx[idx], flip[idx])
            yield self.normalize(images), self.data.targets[idx]


def eval_batches(data: ImageSet, batch_size: int, normalize: Normalize):
    """Normalised test batches in order (no augmentation)."""
    for start in range(0, len(data), batch_size):
        yield normalize(data.images[start:start + batch_size]), data.targets[start:start + batch_size]
