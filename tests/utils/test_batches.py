"""Which sample is drawn when, with which randomness (utils/batches.py): the device augmentation
against torchvision's transforms, the epoch randomness of TrainLoader, the steps of several
processes (BatchPlan), the mixed seeds and the per-sample items of SeededBatches."""
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms

from conftest import epochs_of, random_set
from utils.batches import (
    AUGMENT,
    ORDER,
    BatchPlan,
    SeededBatches,
    TrainLoader,
    epoch_seed,
    mix_seed,
    random_crop_flip,
    sample_seed,
)
from utils.inputs import CIFAR_MEAN, CIFAR_STD, ImageSet, Normalize

MEAN = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(3, 1, 1)


# --------------------------------------------------------------------------------------------
# random_crop_flip: torchvision's RandomCrop(32, padding=4) + RandomHorizontalFlip, exactly.
# --------------------------------------------------------------------------------------------
def test_crop_flip_equals_torchvision_functional_for_every_offset():
    """All 9 x 9 offsets, flipped and not: the crop of the zero-padded image (and its mirror)."""
    offsets = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
    images = random_set(len(offsets)).images
    dy, dx, flip = (torch.tensor(v) for v in zip(*offsets))
    out = random_crop_flip(images, dy, dx, flip)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for k, (y, x, f) in enumerate(offsets):
        expected = TF.crop(TF.pad(images[k], [4]), y, x, 32, 32)
        if f:
            expected = TF.hflip(expected)
        assert torch.equal(out[k], expected), (y, x, f)


@pytest.mark.parametrize("seed", range(20))
def test_crop_flip_equals_the_torchvision_transforms(seed):
    """The transform classes draw top offset, left offset, then the flip; replaying those draws
    through random_crop_flip gives the transforms' output (on tensors and on PIL images)."""
    image = random_set(1, seed).images[0]
    official = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])
    torch.manual_seed(seed)
    from_tensor = official(image)
    torch.manual_seed(seed)
    from_pil = TF.pil_to_tensor(official(TF.to_pil_image(image)))
    torch.manual_seed(seed)
    dy, dx = torch.randint(0, 9, (1,)), torch.randint(0, 9, (1,))
    flip = torch.rand(1) < 0.5
    ours = random_crop_flip(image[None], dy, dx, flip)[0]
    assert torch.equal(ours, from_tensor)
    assert torch.equal(ours, from_pil)


def test_padding_is_zero_and_normalises_to_minus_mean_over_std():
    white = torch.full((1, 3, 32, 32), 255, dtype=torch.uint8)
    out = random_crop_flip(white, torch.tensor([0]), torch.tensor([0]), torch.tensor([False]))[0]
    assert (out[:, :4, :] == 0).all() and (out[:, :, :4] == 0).all()
    assert (out[:, 4:, 4:] == 255).all()
    x = Normalize()(out[None])[0]
    pad = (-MEAN / STD).expand(3, 32, 32)
    torch.testing.assert_close(x[:, :4, :], pad[:, :4, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(x[:, 4:, 4:], ((1 - MEAN) / STD).expand(3, 28, 28), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------
# TrainLoader's epoch randomness.
# --------------------------------------------------------------------------------------------
def index_only_set(n: int) -> ImageSet:
    """epoch_randomness only needs the length: tiny images keep a large n cheap."""
    return ImageSet(torch.zeros(n, 3, 1, 1, dtype=torch.uint8), torch.arange(n))


@pytest.mark.parametrize("epoch", [0, 7])
def test_offsets_are_uniform_and_flips_fair(epoch):
    n = 45_000
    loader = TrainLoader(index_only_set(n), 128, seed=3, normalize=Normalize())
    loader.set_epoch(epoch)
    _, dy, dx, flip = loader.epoch_randomness()
    chi2_critical = 26.12  # 8 degrees of freedom, p = 0.001
    for offsets in (dy, dx):
        assert offsets.min() == 0 and offsets.max() == 8
        counts = torch.bincount(offsets, minlength=9).double()
        expected = n / 9
        assert ((counts - expected) ** 2 / expected).sum() < chi2_critical
    # (dy, dx) pairs: 81 cells, 80 degrees of freedom; critical value at p = 0.001.
    pairs = torch.bincount(dy * 9 + dx, minlength=81).double()
    assert ((pairs - n / 81) ** 2 / (n / 81)).sum() < 124.84
    assert abs(flip.double().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5


def test_epoch_randomness_depends_only_on_seed_and_epoch():
    def draw(seed, epoch):
        loader = TrainLoader(index_only_set(500), 64, seed=seed, normalize=Normalize())
        loader.set_epoch(epoch)
        torch.manual_seed(seed + epoch + 1234)  # the global RNG must not matter
        torch.rand(10)
        return loader.epoch_randomness()

    def same(a, b):
        return all(torch.equal(u, v) for u, v in zip(a, b))

    assert same(draw(1, 2), draw(1, 2))
    assert not same(draw(1, 2), draw(1, 3))
    assert not same(draw(1, 2), draw(2, 2))
    # No collision between neighbouring (seed, epoch) pairs, as seed + epoch would give.
    assert not same(draw(1, 2), draw(2, 1))
    # Nor between seeds that agree in their low 32 bits (the generator keeps only those).
    assert not same(draw(4295, 0), draw(4295 + 2**32, 0))


def test_every_sample_appears_once_per_epoch():
    data = random_set(103)
    loader = TrainLoader(data, 16, seed=0, normalize=Normalize())
    for batches in epochs_of(loader, 0, 1):
        assert len(batches) == len(loader) == 7
        targets = torch.cat([y for _, y in batches])
        assert sorted(targets.tolist()) == list(range(103))
        assert [len(y) for _, y in batches] == [16] * 6 + [7]


def test_unaugmented_batches_are_the_normalised_images():
    data = random_set(40)
    loader = TrainLoader(data, 16, seed=0, normalize=Normalize(), augment=False)
    for x, y in loader:
        torch.testing.assert_close(x, Normalize()(data.images[y]), atol=0, rtol=0)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_shards_are_disjoint_and_make_up_the_single_process_batch(world):
    data = random_set(70)
    single = epochs_of(TrainLoader(data, 16, seed=5, normalize=Normalize()), 4)[0]
    shards = [epochs_of(TrainLoader(data, 16, seed=5, normalize=Normalize(), rank=r, world_size=world), 4)[0]
              for r in range(world)]
    assert all(len(s) == len(single) for s in shards)
    for step, (x, y) in enumerate(single):
        parts = [s[step] for s in shards]
        ids = [set(p[1].tolist()) for p in parts]
        assert sum(map(len, ids)) == len(set().union(*ids)) == len(y)   # disjoint, complete
        for r, (xr, yr) in enumerate(parts):
            # The same samples with the same augmentation: rows r, r + world, ... of the batch.
            assert torch.equal(yr, y[r::world])
            assert torch.equal(xr, x[r::world])


# --------------------------------------------------------------------------------------------
# BatchPlan: the steps of several processes.
# --------------------------------------------------------------------------------------------
def plan_shares(n, batch_size, world, min_share=1):
    """Each rank's (sample lists, loss weights) over one epoch of the identity order."""
    plans = [BatchPlan(n, batch_size, rank, world, min_share) for rank in range(world)]
    return [([s.tolist() for s in p.shares(torch.arange(n))], [p.loss_weight(i) for i in range(len(p))])
            for p in plans]


def test_the_tail_is_shared_as_evenly_as_possible_and_weighted_by_share():
    ranks = plan_shares(23, 6, 3)   # 3 full global batches, a tail of 5
    assert [len(shares) for shares, _ in ranks] == [4, 4, 4]
    assert [len(shares[-1]) for shares, _ in ranks] == [2, 2, 1]
    assert sorted(i for shares, _ in ranks for i in shares[-1]) == [18, 19, 20, 21, 22]
    # Full batches weigh 1; the tail's shares 2/5, 2/5, 1/5 of the global batch, times 3.
    assert [weights for _, weights in ranks] == [[1, 1, 1, 6 / 5]] * 2 + [[1, 1, 1, 3 / 5]]
    # The weighted mean of the ranks' means is the mean over the global batch.
    values = torch.arange(23.0)
    mean_of_ranks = sum(w[-1] * values[s[-1]].mean() for s, w in ranks) / 3
    assert mean_of_ranks.item() == pytest.approx(values[18:].mean().item())


@pytest.mark.parametrize("n, world, min_share, dropped", [
    (19, 3, 1, 1),    # a tail of 1 for 3 processes: two would be idle
    (20, 3, 1, 2),    # a tail of 2 for 3 processes: one would be idle
    (21, 3, 1, 0),    # a tail of 3: one sample each
    (23, 3, 2, 5),    # per-process BatchNorm needs 2 samples each: 5 < 6
    (19, 1, 1, 0),    # one process keeps any tail
    (18, 3, 1, 0),    # no tail
])
def test_a_tail_too_short_for_every_process_is_dropped_and_counted(n, world, min_share, dropped):
    plans = [BatchPlan(n, 6, rank, world, min_share) for rank in range(world)]
    assert {p.dropped for p in plans} == {dropped}
    seen = [i for p in plans for share in p.shares(torch.arange(n)) for i in share.tolist()]
    assert sorted(seen) == list(range(n - dropped))   # each kept sample once, the tail's last ones dropped
    assert all(len(share) >= min_share for p in plans for share in p.shares(torch.arange(n)))
    assert {len(p) for p in plans} == {-(-(n - dropped) // 6)}


def test_mixed_seeds_are_32_bit_and_distinct_for_neighbouring_parts_and_huge_seeds():
    seeds = [sample_seed(s, e, i) for s in (0, 1, 2**32, 2**32 + 1, 2**40) for e in range(3) for i in range(400)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= x < 2**32 for x in seeds)
    # torch keeps a seed's low 32 bits: seeds that agree there must still mix apart.
    assert mix_seed(5) != mix_seed(5 + 2**32) and epoch_seed(4295, 0) != epoch_seed(4295 + 2**32, 0)
    # The purposes never share a stream: an epoch's order is not a sample's augmentation.
    assert epoch_seed(3, 0) != sample_seed(3, 0, 0) and mix_seed(ORDER, 3, 0) != mix_seed(AUGMENT, 3, 0)


def test_every_rank_gives_a_sample_the_items_of_its_seed_epoch_and_index():
    items = {}
    for world in (1, 3):
        for rank in range(world):
            batches = SeededBatches(BatchPlan(23, 6, rank, world), seed=5)
            batches.epoch = 2
            for batch in batches:
                for seed, epoch, index in batch:
                    assert items.setdefault(index, (seed, epoch)) == (5, 2)
    assert sorted(items) == list(range(23))
