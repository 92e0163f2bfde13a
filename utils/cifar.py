"""CIFAR-10 and CIFAR-100, read from disk into uint8 tensors (N, 3, 32, 32): image folders
``train/<class>/*`` + ``test/<class>/*`` (sorted class names give the indices; where the images
lie: utils/image_files.py), or torchvision's pickled files, downloaded through torchvision when
absent. ``load_cifar`` returns a ``TensorDataset``, whose ``.inputs(...)`` feeds its splits as
device-resident tensors (``TensorInputs``, utils/inputs.py) with the training batches augmented on
the device (``TrainLoader``, utils/batches.py), or with ``--data-pipeline pil`` through the
official per-image pipeline (utils/pil_pipeline.py), kept for comparison.

Reached from utils/data.py (``load_dataset``, ``fetch_dataset``); next: utils/pil_pipeline.py,
utils/batches.py, utils/inputs.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import datasets

from utils.batches import TrainLoader
from utils.device import prefers_channels_last
from utils.errors import UserError
from utils.image_files import (
    CIFAR_FILES,
    DATASETS,
    cifar_batches,
    cifar_folder,
    class_folders,
    class_images,
    read_pickle,
)
from utils.inputs import Dataset, ImageSet, TensorInputs, normalizer
from utils.pil_pipeline import pil_train_loader


def load_cifar(name: str, root: Path, download: bool = True) -> TensorDataset:
    """CIFAR from ``root``: an image-folder layout ``train/<class>/*`` + ``test/<class>/*``
    (sorted class names give the indices), or torchvision's format, downloaded when absent."""
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


def fetch_cifar(name: str, root: Path):
    """Download CIFAR in torchvision's format into ``root`` where neither its files nor image
    folders are there (a no-op for data already in place)."""
    # Anything else already at root (image folders, a file) is load_cifar's to check.
    in_place = root.is_file() or any((root / split).is_dir() for split in ("train", "test"))
    if not in_place and not cifar_folder(name, root).is_dir():
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
