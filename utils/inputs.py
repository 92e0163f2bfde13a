"""The one data interface of every pipeline, and the tensors it passes: the last step of the data path.

A reader (utils/cifar.py, utils/imagenet.py) returns a ``Dataset``, a data set's classes and its
splits (CIFAR's: ``ImageSet`` tensors); its ``.inputs(...)`` builds what a run feeds its models in
one process, an ``Inputs`` object (see there). The CIFAR tensors and the cached backbone features
(``TensorInputs``: utils/cifar.py, whose training loader is ``TrainLoader`` or the PIL
pipeline's, and utils/features.py) and the image folders (``FileInputs``, utils/imagenet.py)
implement it. ``Normalize`` turns uint8 images into the model's inputs on the training device,
with the statistics that ``normalizer`` chooses for a run (``NORMALIZATION``).

Reached from every pipeline and from utils/batches.py (which sample is drawn when); it imports no
other data module: the data path ends here.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from utils.errors import UserError


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

    def train_subset(self, index: torch.Tensor) -> "Dataset":
        """The data set with only the training samples at ``index``."""
        return replace(self, train=self.train.subset(index))

    def holdout(self, held: torch.Tensor) -> "Dataset":
        """The training samples at indices ``held`` become the val split (see ``utils.data.validation_split``)."""
        keep = torch.ones(len(self.train), dtype=torch.bool)
        keep[held] = False
        return replace(self, train=self.train.subset(keep.nonzero().flatten()), val=self.train.subset(held))

    def inputs(self, args, device: torch.device, rank: int = 0, world: int = 1, min_share: int = 1) -> "Inputs":
        """What this process feeds the model (implemented by each kind of data set); no step gives
        a process fewer than ``min_share`` samples (``utils.batches.BatchPlan``)."""
        raise NotImplementedError


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


class Inputs:
    """What a run feeds its models in this process; every pipeline implements it.

    ``train_loader``: this rank's share of each (augmented, normalised) training batch, with
    ``len()`` (the epoch's steps), ``set_epoch(epoch, first_step=0)`` and its ``plan`` (a
    ``BatchPlan``); ``min_share``: the fewest
    samples a process may get in a step; ``eval_batches(split)``: the unaugmented batches of this
    rank's strided shard of a split (rows rank, rank + world, ...), which
    ``utils.distributed.gather_rows`` puts back in order; ``targets[split]``: the whole split's
    labels on the CPU. ``split`` is one of ``targets``' keys: "train", "test" and, with
    --val-fraction, "val".
    """
    train_loader = None
    targets: dict

    def __init__(self, batch_size: int, rank: int = 0, world: int = 1, min_share: int = 1):
        if batch_size % world:
            raise UserError(f"--batch-size {batch_size} is the global batch: it must be a multiple "
                            f"of the {world} processes")
        self.rank, self.world, self.min_share = rank, world, min_share

    def eval_batches(self, split: str):
        raise NotImplementedError


class TensorInputs(Inputs):
    """``Inputs`` of device-resident tensors (CIFAR images, or cached features); the train
    loader is given (``TrainLoader``, or the PIL pipeline's)."""

    def __init__(self, splits: dict, transform, train_loader, batch_size: int, eval_batch_size: int,
                 rank: int = 0, world: int = 1, min_share: int = 1):
        super().__init__(batch_size, rank, world, min_share)
        self.splits, self.transform, self.train_loader = splits, transform, train_loader
        self.eval_batch_size = eval_batch_size
        self.targets = {k: v.targets.cpu() for k, v in splits.items()}

    def eval_batches(self, split: str):
        data = self.splits[split]
        if self.world > 1:
            data = data.subset(slice(self.rank, None, self.world))
        return eval_batches(data, self.eval_batch_size, self.transform)


def eval_batches(data: ImageSet, batch_size: int, normalize: Normalize):
    """Normalised test batches in order (no augmentation)."""
    for start in range(0, len(data), batch_size):
        yield normalize(data.images[start:start + batch_size]), data.targets[start:start + batch_size]


def no_transform(x):
    """The transform of inputs that need none (cached features)."""
    return x


# The official code's normalisation (CIFAR-10 statistics, also used for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# torchvision's ImageNet statistics: the ImageNet data set and every pretrained backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def normalizer(args, channels_last: bool = False) -> Normalize:
    """The normalisation (and resize to ``--image-size``) of a run with these flags."""
    return Normalize(*NORMALIZATION[normalization(args)], size=getattr(args, "image_size", None),
                     channels_last=channels_last)


def normalization(args) -> str:
    """The statistics the inputs are normalised with: a pretrained backbone expects ImageNet's."""
    return ("imagenet" if args.dataset in ("imagenet", "folder") or getattr(args, "pretrained", False)
            else "cifar")


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
