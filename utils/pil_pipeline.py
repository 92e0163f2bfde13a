"""``--data-pipeline pil``: the official per-image pipeline (PIL images through torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize in DataLoader workers),
kept to compare with the device-resident default.

Unlike a plain ``DataLoader(shuffle=True)``, every sample's augmentation is seeded from
(seed, epoch, sample index) (``utils.batches.SeededSamples``): worker processes are seeded once
when they start, alike on every rank, and persistent workers are never reseeded, so a resumed
run, another ``--workers`` or another number of processes would otherwise see different crops.
Batches are cut by the same ``BatchPlan`` as ``TrainLoader``'s.

Reached from utils/cifar.py (``TensorDataset.inputs``); next: utils/batches.py (``SeededLoader``).
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms

from utils.batches import BatchPlan, SeededLoader, SeededSamples
from utils.inputs import CIFAR_MEAN, CIFAR_STD, ImageSet, Normalize


def pil_train_loader(train_set: ImageSet, args, device, normalize: Normalize, rank: int = 0,
                     world: int = 1, min_share: int = 1) -> SeededLoader:
    """The data set's entry point; ``normalize`` only supplies the memory format (the images are
    normalised per item by torchvision)."""
    plan = BatchPlan(len(train_set), args.batch_size, rank, world, min_share)
    return SeededLoader(SeededSamples(PILImages(train_set), official_transform()), plan, args.seed,
                        args.workers, device, lambda x: x.contiguous(memory_format=normalize.memory_format))


class PILImages(torch.utils.data.Dataset):
    """The images of an ImageSet as (PIL image, target) pairs."""

    def __init__(self, data: ImageSet):
        # (N, H, W, C) numpy, as Image.fromarray wants it; converted once, not per item.
        self.images = data.images.cpu().permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = data.targets.cpu()

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return Image.fromarray(self.images[index]), self.targets[index]


def official_transform():
    """The official code's CIFAR training transform of a PIL image."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
