"""Normalize (utils/inputs.py), the PIL pipeline and its per-sample seeds (utils/pil_pipeline.py),
and the experiment's splits (utils/data.py). Which sample is drawn when is tested in
test_batches.py, CIFAR's readers in test_cifar.py."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from conftest import agreement, augmented_by_index, epochs_of, random_set
from utils.data import stratified_split
from utils.inputs import CIFAR_MEAN, CIFAR_STD, ImageSet, Normalize
from utils.pil_pipeline import pil_train_loader

MEAN = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR_STD).view(3, 1, 1)


# --------------------------------------------------------------------------------------------
# Normalize.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_last", [False, True])
def test_normalize_matches_torchvision(channels_last):
    images = random_set(6).images
    official = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    expected = torch.stack([official(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in images])
    out = Normalize(channels_last=channels_last)(images)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=fmt)


# --------------------------------------------------------------------------------------------
# The PIL pipeline (--data-pipeline pil).
# --------------------------------------------------------------------------------------------
def pil_loader(data, workers=0, seed=3, batch_size=16):
    args = SimpleNamespace(batch_size=batch_size, workers=workers, seed=seed)
    return pil_train_loader(data, args, torch.device("cpu"), Normalize())


def test_pil_crops_and_flips_change_with_the_epoch_and_the_seed_and_repeat_for_any_workers():
    """Over 100 images, RandomCrop(32, padding=4) + flip repeat an image's crop by chance in
    1 / 162 of the samples; a seed that loses its epoch or its run seed repeats them all."""
    data = random_set(100)
    seed42 = augmented_by_index(pil_loader(data, seed=42), 0)
    assert agreement(seed42, augmented_by_index(pil_loader(data, seed=42), 1)) <= 0.05
    assert agreement(seed42, augmented_by_index(pil_loader(data, seed=43), 0)) <= 0.05
    assert agreement(seed42, augmented_by_index(pil_loader(data, seed=42, workers=2), 0)) == 1


def test_pil_batches_are_shaped_and_normalised():
    """Constant images: every pixel is either the normalised value or zero padding."""
    values = torch.arange(20, dtype=torch.uint8) * 12 + 10
    data = ImageSet(values.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous(), torch.arange(20))
    loader = pil_loader(data)
    batches = epochs_of(loader, 0)[0]
    assert len(loader) == len(batches) == 2
    assert [tuple(x.shape) for x, _ in batches] == [(16, 3, 32, 32), (4, 3, 32, 32)]
    for x, y in batches:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        for image, target in zip(x, y):
            value = (values[target].float() / 255 - MEAN) / STD
            is_value = torch.isclose(image, value.expand(3, 32, 32), atol=1e-6, rtol=0).all(0)
            is_pad = torch.isclose(image, (-MEAN / STD).expand(3, 32, 32), atol=1e-6, rtol=0).all(0)
            assert (is_value | is_pad).all()
            assert is_value.sum() >= 28 * 28   # at most 4 padded rows and columns
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == list(range(20))


def same_batches(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(xa, xb) and torch.equal(ya, yb)
                                    for (xa, ya), (xb, yb) in zip(a, b))


def test_pil_pipeline_is_a_function_of_seed_and_epoch():
    data = random_set(40)
    state = torch.get_rng_state()
    first = epochs_of(pil_loader(data), 0, 1)
    assert torch.equal(torch.get_rng_state(), state)   # the training process's RNG is untouched
    assert same_batches(first[1], epochs_of(pil_loader(data), 1)[0])   # a resumed run
    assert not same_batches(first[0], first[1])
    assert not same_batches(first[0], epochs_of(pil_loader(data, seed=4), 0)[0])


def test_pil_pipeline_does_not_depend_on_the_workers():
    """Persistent workers keep their RNG between epochs: epoch 1 after epoch 0 in two workers
    must still equal epoch 1 computed alone in the main process."""
    data = random_set(40)
    in_workers = epochs_of(pil_loader(data, workers=2), 0, 1)
    alone = epochs_of(pil_loader(data, workers=0), 1)[0]
    assert same_batches(in_workers[1], alone)


# --------------------------------------------------------------------------------------------
# The experiment's splits.
# --------------------------------------------------------------------------------------------
def test_stratified_split_holds_out_a_fraction_of_every_class():
    targets = torch.arange(10).repeat_interleave(20)[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    keep, held = stratified_split(targets, 0.25, seed=7)
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(200))
    assert torch.equal(keep, keep.sort().values) and torch.equal(held, held.sort().values)
    assert np.bincount(targets[held].numpy(), minlength=10).tolist() == [5] * 10
    again, _ = stratified_split(targets, 0.25, seed=7)
    other, _ = stratified_split(targets, 0.25, seed=8)
    assert torch.equal(keep, again) and not torch.equal(keep, other)
