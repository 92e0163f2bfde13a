"""``--data-pipeline pil``: the official per-image pipeline (PIL images through torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize in DataLoader workers),
kept to compare with the device-resident default.

Unlike a plain ``DataLoader(shuffle=True)``, every sample's augmentation is seeded from
(seed, epoch) in the main process: worker processes are seeded once when they start and
persistent workers are never reseeded, so a resumed run, or one with another ``--workers``,
would otherwise see different crops. Batches are sharded over ranks as in ``TrainLoader``.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from utils.inputs import CIFAR_MEAN, CIFAR_STD, ImageSet, Normalize, epoch_seed


def official_transform():
    """The official code's CIFAR training transform of a PIL image."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])


class PILImages(Dataset):
    """Items are (index, seed) pairs: the image at ``index`` as a PIL image through
    ``transform``, with torch's random state set from ``seed`` for that one image."""

    def __init__(self, data: ImageSet, transform):
        # (N, H, W, C) numpy, as Image.fromarray wants it; converted once, not per item.
        self.images = data.images.cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = data.targets.cpu()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, item):
        index, seed = item
        # fork_rng: with workers=0 this runs in the training process, whose RNG must not move.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image = self.transform(Image.fromarray(self.images[index]))
        return image, self.targets[index]


class EpochBatches:
    """Batch sampler: one epoch's shuffled (index, seed) batches, a function of (seed, epoch);
    rank r of W takes items r, r + W, ... of every global batch."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def __len__(self):
        return -(-self.n // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=g)
        seeds = torch.randint(0, 2**62, (self.n,), generator=g)
        for start in range(0, self.n, self.batch_size):
            shard = slice(start + self.rank, start + self.batch_size, self.world_size)
            yield list(zip(order[shard].tolist(), seeds[shard].tolist()))


class PILTrainLoader:
    """(images, targets) batches on ``device`` from a DataLoader over ``PILImages``."""

    def __init__(self, data: ImageSet, batch_size: int, seed: int, workers: int,
                 device: torch.device, memory_format=torch.contiguous_format,
                 rank: int = 0, world_size: int = 1):
        self.device, self.memory_format = torch.device(device), memory_format
        self.batches = EpochBatches(len(data), batch_size, seed, rank, world_size)
        # The DataLoader draws its workers' base seed from this generator (else from the
        # training process's global RNG, which would then move every epoch).
        self.generator = torch.Generator()
        self.loader = DataLoader(PILImages(data, official_transform()), batch_sampler=self.batches,
                                 num_workers=workers, persistent_workers=workers > 0,
                                 pin_memory=self.device.type == "cuda", generator=self.generator)
        self.set_epoch(0)

    def set_epoch(self, epoch: int):
        self.batches.epoch = epoch
        self.generator.manual_seed(epoch_seed(self.batches.seed, epoch))

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield x, y.to(self.device, non_blocking=True)


def pil_train_loader(train_set: ImageSet, args, device, normalize: Normalize, rank: int = 0,
                     world: int = 1) -> PILTrainLoader:
    """The data set's entry point; ``normalize`` only supplies the memory format (the images are
    normalised per item by torchvision)."""
    return PILTrainLoader(train_set, args.batch_size, args.seed, args.workers, device,
                          normalize.memory_format, rank, world)
