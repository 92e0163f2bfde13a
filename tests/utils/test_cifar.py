"""CIFAR read from disk (utils/cifar.py): image folders, and torchvision's pickled files without
their checksums, broken ones named."""
import numpy as np
import pytest
import torch

from conftest import write_cifar_pickles, write_png
from utils.cifar import load_cifar
from utils.errors import UserError


def test_load_cifar_reads_an_image_folder(tmp_path):
    # Class folders created out of order: indices follow the sorted names.
    names = ["truck", "airplane", "dog", "cat", "ship", "bird", "frog", "horse", "deer", "automobile"]
    written = {}
    g = torch.Generator().manual_seed(0)
    for split, per_class in (("train", 2), ("test", 1)):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g)
                write_png(image, tmp_path / split / name / f"{i:02d}.png")
                written[(split, name, i)] = image
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")

    data = load_cifar("cifar10", tmp_path)
    assert data.classes == sorted(names) and data.num_classes == 10
    assert data.train.images.shape == (20, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (10, 3, 32, 32)
    for split, per_class in (("train", 2), ("test", 1)):
        images = getattr(data, split)
        assert images.targets.tolist() == [c for c in range(10) for _ in range(per_class)]
        for c, name in enumerate(sorted(names)):
            for i in range(per_class):
                assert torch.equal(images.images[c * per_class + i], written[(split, name, i)])

    with pytest.raises(UserError, match="100"):
        load_cifar("cifar100", tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_reads_torchvision_pickles_without_checksums(tmp_path, name):
    """Generated or re-pickled files in torchvision's layout load offline, given the folder that
    holds them or the folder itself; the images keep their bytes and order."""
    folder, written, names = write_cifar_pickles(tmp_path, name)
    for root in (tmp_path, folder):
        data = load_cifar(name, root)
        assert data.classes == names
        train_files = [f for f in written if f not in ("test_batch", "test")]
        expected = np.concatenate([written[f]["data"] for f in train_files]).reshape(-1, 3, 32, 32)
        assert torch.equal(data.train.images, torch.from_numpy(expected))
        labels = "labels" if name == "cifar10" else "fine_labels"
        assert data.train.targets.tolist() == sum((written[f][labels] for f in train_files), [])
        test_file = "test_batch" if name == "cifar10" else "test"
        assert data.test.images.shape == (10, 3, 32, 32)
        assert data.test.targets.tolist() == written[test_file][labels]


def test_broken_torchvision_pickles_are_named(tmp_path):
    folder, _, _ = write_cifar_pickles(tmp_path, "cifar10")
    (folder / "test_batch").unlink()
    with pytest.raises(UserError, match="has no test_batch"):
        load_cifar("cifar10", tmp_path)
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read .*test_batch"):
        load_cifar("cifar10", tmp_path)
