"""The one data interface of every pipeline, and the parts they share.

A run feeds its models through an ``Inputs`` object (see there): the CIFAR tensors
(``TensorInputs``, utils/data.py), the official-style PIL pipeline (utils/pil_pipeline.py), the
ImageNet folders (``FileInputs``, utils/imagenet.py) and the cached backbone features
(utils/features.py) all implement it. The modules of the pipelines import this one and never
each other.

CIFAR training batches are augmented on the training device (random crop with 4-pixel zero
padding + horizontal flip, the distribution of torchvision's RandomCrop(32, padding=4) +
RandomHorizontalFlip) and normalised there, with all of an epoch's randomness drawn up front
from (seed, epoch): no per-item Python, a data order that a resumed run reproduces exactly, and
the same global batches whatever the number of processes. Every pipeline cuts its steps with
``BatchPlan``; the per-image pipelines (PIL, ImageNet folders) seed each sample's augmentation
from (seed, epoch, sample index) (``SeededSamples``).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from utils.errors import UserError, listing

# The official code's normalisation (CIFAR-10 statistics, also used for CIFAR-100).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# torchvision's ImageNet statistics: the ImageNet data set and every pretrained backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION = {"cifar": (CIFAR_MEAN, CIFAR_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


def class_folders(train: Path, test: Path) -> list:
    """The sorted class folders, which must be the same in both splits: a class missing from
    one would silently shift the label of every class after it."""
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    test_classes = sorted(p.name for p in test.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"{train} holds no class folders; expected {train}/<class>/<images>")
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        differ = "; ".join(f"only in {folder}: {listing(names)}"
                           for folder, names in ((train, only_train), (test, only_test)) if names)
        raise UserError(f"{train} and {test} must hold the same class folders ({differ}); "
                        "add or remove class folders so that both splits list the same classes")
    return classes


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
        a process fewer than ``min_share`` samples (``BatchPlan``)."""
        raise NotImplementedError


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



# What a mixed seed is for: streams of different purposes never share a seed.
ORDER, AUGMENT, SPLIT = 0, 1, 2


def mix_seed(*parts: int) -> int:
    """One 32-bit seed hashed (BLAKE2b) from all of ``parts``, integers of any size. torch's CPU
    generator keeps only a seed's low 32 bits, so a seed made by arithmetic (seed * 2**32 +
    index) loses its high parts; a hashed one keeps every part's entropy: neighbouring tuples
    and seeds beyond 2**32 give unrelated values. (numpy's SeedSequence mixes as well, at five
    times the cost: this runs once per training image.)"""
    key = ",".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order (and, on the CIFAR tensor pipeline, augmentation)."""
    return mix_seed(ORDER, seed, epoch)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training sample's augmentation in one epoch (``index``: its place in the
    training set): the same in every process, loader worker and resumed run."""
    return mix_seed(AUGMENT, seed, epoch, index)


class BatchPlan:
    """How one epoch's ``n`` shuffled training samples become the steps of ``world`` processes.

    The global batches are cut in order from the epoch's permutation, as in one process; rank r
    takes the samples r, r + world, ... of each, so the last, shorter global batch (the tail, n
    mod ``batch_size`` samples) is shared as evenly as possible. No process may sit a step out
    (an empty batch has a NaN loss, and the others would wait for it), nor hold fewer samples
    than ``min_share`` (2 where BatchNorm normalises each process's batch by its own
    statistics): a tail too short for that is dropped from the epoch and counted in
    ``dropped``. DDP averages the processes' gradients, so each process scales its mean loss by
    ``loss_weight(step)``, its share of the global batch times ``world``: every step's gradient
    is then the mean over its global batch, as in one process, also when the shares differ.
    """

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1, min_share: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        tail = n % batch_size
        self.min_share = min_share
        self.dropped = tail if tail < world * min_share else 0
        self.used = n - self.dropped

    def __len__(self):
        return -(-self.used // self.batch_size)

    def global_size(self, step: int) -> int:
        return min(self.batch_size, self.used - step * self.batch_size)

    def shares(self, order: torch.Tensor, first_step: int = 0):
        """This process's samples of every step from ``first_step`` on, cut from ``order`` (the
        epoch's permutation)."""
        for start in range(first_step * self.batch_size, self.used, self.batch_size):
            yield order[start:start + self.batch_size][self.rank::self.world]

    def loss_weight(self, step: int) -> float:
        size = self.global_size(step)
        return len(range(self.rank, size, self.world)) * self.world / size


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

    Batches are cut from one global permutation by ``plan`` (a ``BatchPlan``): each rank takes
    its share of every global batch, so a distributed run sees the same global batches as one
    process.
    """

    def __init__(self, data: ImageSet, batch_size: int, seed: int, normalize: Normalize,
                 augment: bool = True, rank: int = 0, world_size: int = 1, min_share: int = 1):
        self.data, self.seed = data, seed
        self.normalize, self.augment = normalize, augment
        self.plan = BatchPlan(len(data), batch_size, rank, world_size, min_share)
        self.epoch, self.first_step = 0, 0

    def set_epoch(self, epoch: int, first_step: int = 0):
        """The epoch the next pass draws, starting at its step ``first_step`` (a resumed epoch)."""
        self.epoch, self.first_step = epoch, first_step

    def __len__(self):
        return len(self.plan)

    def epoch_randomness(self):
        """(order, dy, dx, flip) for the whole epoch, a function of (seed, epoch) only."""
        n = len(self.data)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(n, generator=g)
        dy = torch.randint(0, 9, (n,), generator=g)
        dx = torch.randint(0, 9, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.5
        return order, dy, dx, flip

    def __iter__(self):
        device = self.data.images.device
        order, dy, dx, flip = (t.to(device) for t in self.epoch_randomness())
        for idx in self.plan.shares(order, self.first_step):
            images = self.data.images[idx]
            if self.augment:
                images = random_crop_flip(images, dy[idx], dx[idx], flip[idx])
            yield self.normalize(images), self.data.targets[idx]



class SeededSamples(torch.utils.data.Dataset):
    """The training samples of a per-image pipeline, each augmented from its own seed: an item
    is (seed, epoch, index), and sample ``index`` of ``samples`` (an untransformed (image,
    target)) goes through the random ``transform`` with torch's CPU generator seeded from
    ``sample_seed(seed, epoch, index)`` for that one sample. The augmentation is then a function
    of (seed, epoch, index) alone: not of the loader worker that makes it (workers are seeded
    alike on every rank), of --workers, of the number of processes, nor of the epoch a run
    resumed at. The seed is mixed here, in the loader workers, not in the training process."""

    def __init__(self, samples, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        seed, epoch, index = item
        image, target = self.samples[index]
        # With --workers 0 this runs in the training process, whose random state must not move:
        # the CPU generator's state is put back (fork_rng(devices=[]) does the same at three
        # times the cost). Only the CPU generator is seeded: torchvision's transforms draw from
        # it alone, and torch.manual_seed would also seed (and cost a call into) every GPU.
        generator = torch.default_generator
        state = generator.get_state()
        try:
            generator.manual_seed(sample_seed(seed, epoch, index))
            return self.transform(image), target
        finally:
            generator.set_state(state)


class SeededBatches:
    """Batch sampler over ``SeededSamples``: this process's (seed, epoch, index) items of each
    step of the current epoch, cut by ``plan`` from the epoch's permutation (drawn from
    (seed, epoch))."""

    def __init__(self, plan: BatchPlan, seed: int):
        self.plan, self.seed, self.epoch, self.first_step = plan, seed, 0, 0

    def __len__(self):
        return len(self.plan)

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        for share in self.plan.shares(torch.randperm(self.plan.n, generator=g), self.first_step):
            yield [(self.seed, self.epoch, i) for i in share.tolist()]


class SeededLoader:
    """The training loader of a per-image pipeline: ``SeededSamples`` decoded and augmented in
    DataLoader workers, in the batches of ``SeededBatches``; each batch is moved to ``device``
    and passed through ``finish`` there (normalisation or memory format)."""

    def __init__(self, samples: SeededSamples, plan: BatchPlan, seed: int, workers: int,
                 device: torch.device, finish):
        self.plan, self.device, self.finish = plan, torch.device(device), finish
        self.batches = SeededBatches(plan, seed)
        # The DataLoader draws its workers' base seed from its own generator, not from the
        # training process's random state (it would move it); no augmentation depends on it.
        self.loader = DataLoader(samples, batch_sampler=self.batches, num_workers=workers,
                                 persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
                                 generator=torch.Generator())

    def set_epoch(self, epoch: int, first_step: int = 0):
        """The epoch the next pass draws, starting at its step ``first_step`` (a resumed epoch)."""
        self.batches.epoch, self.batches.first_step = epoch, first_step

    def __len__(self):
        return len(self.plan)

    def __iter__(self):
        for x, y in self.loader:
            yield self.finish(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)


def eval_batches(data: ImageSet, batch_size: int, normalize: Normalize):
    """Normalised test batches in order (no augmentation)."""
    for start in range(0, len(data), batch_size):
        yield normalize(data.images[start:start + batch_size]), data.targets[start:start + batch_size]



def no_transform(x):
    """The transform of inputs that need none (cached features)."""
    return x


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

