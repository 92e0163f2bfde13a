"""Which training sample is drawn when, with which randomness: the training batches of every
pipeline (the interface they fill and the tensors they pass are utils/inputs.py's).

CIFAR training batches (``TrainLoader``) are augmented on the training device (random crop with
4-pixel zero padding + horizontal flip, ``random_crop_flip``: the distribution of torchvision's
RandomCrop(32, padding=4) + RandomHorizontalFlip) and normalised there, with all of an epoch's
randomness drawn up front from (seed, epoch): no per-item Python, a data order that a resumed run
reproduces exactly, and the same global batches whatever the number of processes. The per-image
pipelines (PIL, image folders: ``SeededLoader``) decode and augment in DataLoader workers, in the
batches of ``SeededBatches``, each sample's augmentation seeded from (seed, epoch, sample index)
(``SeededSamples``). Every pipeline cuts its steps with ``BatchPlan``; every seed is hashed from
its purpose and its parts (``mix_seed``), so that streams of different purposes never share one.

Reached from the pipelines (utils/cifar.py, utils/imagenet.py, utils/pil_pipeline.py,
utils/features.py) and from the experiment's splits (utils/data.py, ``SPLIT``); next, and last:
utils/inputs.py (``ImageSet``, ``Normalize``).
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from utils.inputs import ImageSet, Normalize

# What a mixed seed is for: streams of different purposes never share a seed.
ORDER, AUGMENT, SPLIT = 0, 1, 2


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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's data order (and, on the CIFAR tensor pipeline, augmentation)."""
    return mix_seed(ORDER, seed, epoch)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one training sample's augmentation in one epoch (``index``: its place in the
    training set): the same in every process, loader worker and resumed run."""
    return mix_seed(AUGMENT, seed, epoch, index)


def mix_seed(*parts: int) -> int:
    """One 32-bit seed hashed (BLAKE2b) from all of ``parts``, integers of any size. torch's CPU
    generator keeps only a seed's low 32 bits, so a seed made by arithmetic (seed * 2**32 +
    index) loses its high parts; a hashed one keeps every part's entropy: neighbouring tuples
    and seeds beyond 2**32 give unrelated values. (numpy's SeedSequence mixes as well, at five
    times the cost: this runs once per training image.)"""
    key = ",".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "little")
