"""Data: one path for all three scripts.

CIFAR is decoded once into uint8 tensors (N, 3, 32, 32). Training batches are augmented on the
training device (random crop with 4-pixel zero padding + horizontal flip, the distribution of
torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip) and normalised there, with all of
an epoch's randomness drawn up front from (seed, epoch): no per-item Python, a data order that a
resumed run reproduces exactly, and the same global batches whatever the number of processes.
``--data-pipeline pil`` is the official per-image torchvision pipeline, kept for comparison.

ImageNet cannot live in one tensor: ``--dataset imagenet`` reads JPEG folders through a
DataLoader (utils/imagenet.py). Both kinds of data set answer the runner through one interface:
``dataset.inputs(args, device, rank, world)`` returns this process's train loader and the
eval batches of its shard of each split (see ``TensorInputs``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import UserError

# The official code's normalisation (CIFAR-10 statistics, also used for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# torchvision's ImageNet statistics: the ImageNet data set and every pretrained backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}
# Number of classes of each data set; ImageNet's comes from its folders (tests use a few classes).
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": None}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp"}


@dataclass
class ImageSet:
    images: torch.Tensor    # uint8 (N, 3, H, W)
    targets: torch.Tensor   # int64 (N,)

    def __len__(self):
        return len(self.targets)

    def classes_below(self, num_classes: int) -> "ImageSet":
        """The samples whose class index is < num_classes (the old classes)."""
        return self.subset(self.targets < num_classes)

    def subset(self, index) -> "ImageSet":
        """The samples at ``index`` (indices, a mask or a slice)."""
        return ImageSet(self.images[index], self.targets[index])

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.targets.to(device))


@dataclass
class Dataset:
    """A data set's classes and its splits (CIFAR: tensors): train, test and, once ``holdout``
    has set part of the training set aside, val."""
    name: str
    classes: list
    train: ImageSet
    test: ImageSet
    val: ImageSet | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> dict:
        return {k: v for k, v in (("train", self.train), ("test", self.test), ("val", self.val)) if v is not None}

    def classes_below(self, num_classes: int) -> "Dataset":
        """The data set restricted to its first ``num_classes`` classes (the old model's)."""
        return replace(self, classes=self.classes[:num_classes],
                       **{k: v.classes_below(num_classes) for k, v in self.splits.items()})

    def holdout(self, fraction: float, seed: int) -> "Dataset":
        """``fraction`` of every class of the training set (chosen with ``seed``) becomes the val split."""
        keep, held = stratified_split(self.train.targets, fraction, seed)
        if len(keep) == 0 or len(held) == 0:
            raise UserError(f"--val-fraction {fraction} leaves {len(keep)} training and {len(held)} "
                            "validation samples; choose a fraction that leaves both")
        return replace(self, train=self.train.subset(keep), val=self.train.subset(held))

    def inputs(self, args, device: torch.device, rank: int = 0, world: int = 1) -> "TensorInputs":
        """What this process feeds the model: augmented train batches and unaugmented eval
        batches, normalised (and resized to ``--image-size``) on ``device``."""
        normalize = normalizer(args, channels_last=device.type == "cuda")
        splits = {k: v.to(device) for k, v in self.splits.items()}
        if args.data_pipeline == "pil":
            from utils.pil_pipeline import pil_train_loader
            loader = pil_train_loader(splits["train"], args, device, normalize)
        else:
            loader = TrainLoader(splits["train"], args.batch_size, args.seed, normalize, rank=rank, world_size=world)
        return TensorInputs(splits, normalize, loader, args.eval_batch_size, rank, world)


def normalization(args) -> str:
    """The statistics the inputs are normalised with: a pretrained backbone expects ImageNet's."""
    return "imagenet" if args.dataset == "imagenet" or getattr(args, "pretrained", False) else "cifar"


def normalizer(args, channels_last: bool = False) -> Normalize:
    """The normalisation (and resize to ``--image-size``) of a run with these flags."""
    return Normalize(*NORMALIZATION[normalization(args)], size=getattr(args, "image_size", None),
                     channels_last=channels_last)


def input_spec(args) -> dict:
    """What a model was fed, stored in its checkpoint: a reference model must be fed the same."""
    return {"image_size": args.image_size, "normalization": normalization(args)}


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
    if name == "imagenet":
        from utils.imagenet import load_imagenet
        return load_imagenet(root)
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


def _load_image_folders(name: str, root: Path) -> Dataset:
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
    if not classes or classes != test_classes:
        raise UserError(f"{root}/train and {root}/test must hold the same class folders "
                        f"(found {len(classes)} and {len(test_classes)})")
    return Dataset(name, classes, _read_split(root / "train", classes), _read_split(root / "test", classes))


def _read_split(folder: Path, classes: list) -> ImageSet:
    # PIL, not torchvision.io: torchvision 0.29 deprecates its decoders.
    from PIL import Image, UnidentifiedImageError

    images, targets = [], []
    for index, cls in enumerate(classes):
        files = sorted(f for f in (folder / cls).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
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


# torchvision's CIFAR layout: the extracted folder, its training and test files, the class names.
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "data_batch_*", "test_batch", "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", "train", "test", "meta", "fine_label_names", "fine_labels"),
}


def _load_torchvision_cifar(name: str, root: Path, download: bool) -> Dataset:
    """torchvision's pickled CIFAR files under ``root`` (or ``root`` itself being their folder),
    read directly: no checksum, so a subset or a re-pickled copy loads too. When absent, they are
    downloaded through torchvision."""
    folder_name = CIFAR_FILES[name][0]
    folder = root if root.name == folder_name else root / folder_name
    if not folder.is_dir():
        _download_cifar(name, root, download)
    return _read_cifar_pickles(name, folder)


def _download_cifar(name: str, root: Path, download: bool):
    from torchvision import datasets

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


def _read_cifar_pickles(name: str, folder: Path) -> Dataset:
    import pickle

    _, train_glob, test_file, meta_file, names_key, labels_key = CIFAR_FILES[name]

    def load(path: Path) -> dict:
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
            raise UserError(f"cannot read {path} ({err}); is it one of torchvision's {name} files?") from None

    def split(paths: list, expected: str) -> ImageSet:
        if not paths:
            raise UserError(f"{folder} has no {expected}; expected torchvision's {name} files")
        images, targets = [], []
        for path in paths:
            batch = load(path)
            try:
                images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                targets += list(batch[labels_key])
            except (KeyError, ValueError, TypeError) as err:
                raise UserError(f"{path} is not a {name} batch ({err!r})") from None
        return ImageSet(torch.from_numpy(np.concatenate(images)), torch.tensor(targets, dtype=torch.int64))

    train_paths = sorted(folder.glob(train_glob))
    test_paths = [folder / test_file] if (folder / test_file).is_file() else []
    train, test = split(train_paths, train_glob), split(test_paths, test_file)
    meta = folder / meta_file
    classes = list(load(meta)[names_key]) if meta.is_file() else [str(c) for c in range(DATASETS[name])]
    return Dataset(name, classes, train, test)


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
    """uint8 (N, 3, H, W) -> normalised float, on the tensor's device; resized to ``size`` x
    ``size`` (bilinear) where given, e.g. CIFAR images for a 224-pixel ViT."""

    def __init__(self, mean=CIFAR_MEAN, std=CIFAR_STD, channels_last=False, size: int | None = None):
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.size = size

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        if self.mean.device != images_u8.device:
            self.mean, self.std = self.mean.to(images_u8.device), self.std.to(images_u8.device)
        x = images_u8.float().sub_(self.mean).div_(self.std)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            # Per-channel normalisation commutes with interpolation, so resizing after it is exact.
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
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


def identity(x):
    """The transform of inputs that need none (cached features)."""
    return x


class TensorInputs:
    """The runner's view of a data set in this process, for device-resident tensors.

    ``train_loader`` yields this rank's share of each training batch and has ``set_epoch``;
    ``eval_batches(split)`` yields the unaugmented batches of this rank's strided shard of a
    split (rows rank, rank + world, ...), which ``utils.distributed.gather_rows`` puts back in
    order; ``targets[split]`` holds the whole split's labels on the CPU. ``split`` is one of
    ``targets``' keys: "train", "test" and, with --val-fraction, "val".
    """

    def __init__(self, splits: dict, transform, train_loader, eval_batch_size: int,
                 rank: int = 0, world: int = 1):
        self.splits, self.transform, self.train_loader = splits, transform, train_loader
        self.eval_batch_size, self.rank, self.world = eval_batch_size, rank, world
        self.targets = {k: v.targets.cpu() for k, v in splits.items()}

    def eval_batches(self, split: str):
        data = self.splits[split]
        if self.world > 1:
            data = data.subset(slice(self.rank, None, self.world))
        return eval_batches(data, self.eval_batch_size, self.transform)
