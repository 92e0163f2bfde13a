"""ImageNet-1k from its JPEG folders: ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; and a
user's own image folders (``--dataset folder``, ``load_image_folder``) through the same pipeline.

The sorted wnids give the class indices (the class split takes the first round(F * C)); the
number of classes is what the folders hold, so a few-class folder works as well as all 1,000.
Images are decoded, cropped and flipped in DataLoader workers (the standard recipe:
RandomResizedCrop + RandomHorizontalFlip for training, each sample's from its own seed
(``utils.batches.SeededSamples``), Resize(256/224 of the size) + CenterCrop for evaluation) as
uint8 tensors; the training device normalises them with the same
``Normalize`` as CIFAR, so a batch crosses to the GPU in a quarter of the float32 bytes.

Reached from utils/data.py (``load_dataset``). Here, in order: the readers (``load_image_folder``,
``load_imagenet``; where the images lie: utils/image_files.py), the ``ImageFiles`` they list, the
``FolderDataset`` they return and its pipeline, ``FileInputs``; next: utils/batches.py
(``SeededLoader``, ``BatchPlan``, ``SeededSamples``) and ``Normalize`` (utils/inputs.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, make_dataset

from utils.batches import BatchPlan, SeededLoader, SeededSamples
from utils.device import prefers_channels_last
from utils.errors import UserError, listing
from utils.image_files import class_folders, class_list, folder_test_split
from utils.inputs import NORMALIZATION, Dataset, Inputs, Normalize

TRAIN, EVAL = "train", "val"
DEFAULT_SIZE = 224


def load_image_folder(root: Path, classes_file=None) -> FolderDataset:
    """``--dataset folder``: a user's own images, ``root/train/<class>/`` and ``root/val/<class>/``
    (or ``test/``), read in torchvision's ImageFolder order (``make_dataset``: any image format it
    reads, subfolders included), through the same pipeline as ImageNet. The class indices follow
    ``classes_file`` (one name a line, the old classes first), else the sorted folder names."""
    train_dir = root / TRAIN
    if not train_dir.is_dir():
        raise UserError(f"--dataset folder needs {train_dir}/<class>/ and {root}/val/<class>/ (or test/), one "
                        "folder of images per class; give --data-root the folder that holds them")
    eval_dir = folder_test_split(root)
    folders = class_folders(train_dir, eval_dir)
    classes = folders
    if classes_file is not None:
        classes = class_list(classes_file)
        unknown = [c for c in classes if c not in folders]
        if unknown:
            raise UserError(f"--classes {classes_file} names {len(unknown)} class(es) that {train_dir} does not "
                            f"hold: {listing(unknown)}; its classes are {listing(folders, 20)}")
        unlisted = [c for c in folders if c not in classes]
        if unlisted:
            raise UserError(f"--classes {classes_file} leaves out {len(unlisted)} class folder(s) of {train_dir}: "
                            f"{listing(unlisted)}; list every class, the old ones first, or move those folders out")
    return FolderDataset("folder", classes, *image_files(classes, train_dir, eval_dir))


def load_imagenet(root: Path) -> FolderDataset:
    train_dir, eval_dir = root / TRAIN, root / EVAL
    if not (train_dir.is_dir() and eval_dir.is_dir()):
        raise UserError(f"--dataset imagenet needs {train_dir}/<wnid>/*.JPEG and {eval_dir}/<wnid>/*.JPEG "
                        "(the validation images sorted into one folder per class)")
    classes = class_folders(train_dir, eval_dir)
    return FolderDataset("imagenet", classes, *image_files(classes, train_dir, eval_dir))


def image_files(classes: list, *folders: Path) -> list:
    """The ``ImageFiles`` of each split folder, class indices in the order of ``classes``
    (torchvision's ``make_dataset``: any image format it reads, subfolders included)."""
    index = {c: i for i, c in enumerate(classes)}
    splits = []
    for folder in folders:
        try:
            splits.append(ImageFiles(make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)))
        except FileNotFoundError as err:  # a class folder without images
            raise UserError(f"{folder}: {' '.join(str(err).split())}") from None
    return splits


class ImageFiles(torch.utils.data.Dataset):
    """(path, class index) pairs, read with PIL and passed through ``transform``."""

    def __init__(self, samples: list, transform=None):
        self.samples, self.transform = samples, transform
        self.targets = torch.tensor([t for _, t in samples], dtype=torch.int64)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        try:
            image = default_loader(path)
        except (OSError, ValueError) as err:  # PIL's errors for truncated or non-image files
            raise UserError(f"cannot decode the image {path} ({err}); replace or remove it") from None
        return (self.transform(image) if self.transform else image), target

    def classes_below(self, num_classes: int) -> "ImageFiles":
        return ImageFiles([s for s in self.samples if s[1] < num_classes], self.transform)

    def subset(self, index) -> "ImageFiles":
        """The samples at ``index`` (a 1-d tensor of indices)."""
        return ImageFiles([self.samples[i] for i in index.tolist()], self.transform)

    def with_transform(self, transform) -> "ImageFiles":
        return ImageFiles(self.samples, transform)


@dataclass
class FolderDataset(Dataset):
    """A ``Dataset`` whose splits are ``ImageFiles``, fed through DataLoaders."""

    def inputs(self, args, device: torch.device, rank: int = 0, world: int = 1, min_share: int = 1) -> "FileInputs":
        return FileInputs(self.splits, args, device, rank, world, min_share)


class FileInputs(Inputs):
    """``Inputs`` of a folder data set: DataLoaders of decoded, cropped uint8 images."""

    def __init__(self, splits: dict, args, device: torch.device, rank: int = 0, world: int = 1,
                 min_share: int = 1):
        super().__init__(args.batch_size, rank, world, min_share)
        size = args.image_size or DEFAULT_SIZE
        self.splits = splits
        self.eval_transform = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])
        self.normalize = Normalize(*NORMALIZATION["imagenet"], channels_last=prefers_channels_last(device))
        self.device = device
        self.workers, self.eval_batch_size = args.workers, args.eval_batch_size
        self.targets = {k: v.targets for k, v in splits.items()}
        # The global batches of one process, each sample cropped and flipped from its own seed.
        train = SeededSamples(splits["train"].with_transform(None),
                              T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.PILToTensor()]))
        plan = BatchPlan(len(train), args.batch_size, rank, world, min_share)
        self.train_loader = SeededLoader(train, plan, args.seed, self.workers, device, self.normalize)
        self._eval_loaders = {}

    def eval_batches(self, split: str):
        """Unaugmented batches of rows rank, rank + world, ... of ``split``. The loaders of the
        splits scored every epoch are kept (their workers persist); the training split is read
        once, for the feature cache, so its workers end with it."""
        loader = self._eval_loaders.get(split)
        if loader is None:
            files = self.splits[split].with_transform(self.eval_transform)
            shard = Subset(files, range(self.rank, len(files), self.world))
            loader = DataLoader(shard, batch_size=self.eval_batch_size, num_workers=self.workers,
                                pin_memory=self.device.type == "cuda",
                                persistent_workers=split != "train" and self.workers > 0)
            if split != "train":
                self._eval_loaders[split] = loader
        return on_device(loader, self.normalize, self.device)


def on_device(loader: DataLoader, normalize: Normalize, device: torch.device):
    """The uint8 batches of ``loader``, delivered normalised on the training device."""
    for images, targets in loader:
        yield normalize(images.to(device, non_blocking=True)), targets.to(device, non_blocking=True)
