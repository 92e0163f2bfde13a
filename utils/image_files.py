"""Where a data set's images lie on disk and how they are read with numpy and PIL alone (no
torch): the bottom of the data path. The readers of the training code (utils/cifar.py,
utils/imagenet.py) and the flip analysis (tools/flips.py, which shows the test images that flip)
list and order them here, so that a test-set index means the same image in both. It imports no
other data module, and no torch: tools/flips.py starts without it.

    image folders   <root>/<split>/<class>/<image>: sorted class names give the class indices
                    (``class_folders``, the same in both splits), sorted file names the order
                    within a class (``class_images``; ImageNet: split "val")
    --dataset folder  <root>/<split>/<class>/...: the images of every class in torchvision's
                    ImageFolder order (sorted class names, then the sorted paths under each,
                    subfolders included; ``folder_samples``), the class indices from the run's
                    class list (``--classes FILE``, ``class_list``, else the sorted names); split
                    "val" or "test" (``folder_test_split``)
    torchvision's   the pickled CIFAR batches, in the files' own order (``cifar_batches``)
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from utils.errors import UserError, listing

# Number of classes of each data set; ImageNet's and a folder's come from the folders (tests use a
# few classes).
DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": None, "folder": None}
# The image files read, as torchvision's ImageFolder reads them (torchvision.datasets.folder's
# IMG_EXTENSIONS; a test checks that they agree).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# The test split's folder in an image-folder layout (--dataset folder: val/, else test/).
TEST_SPLIT = {"cifar10": "test", "cifar100": "test", "imagenet": "val", "folder": "val"}
FOLDER_TEST_SPLITS = ("val", "test")

# torchvision's CIFAR layout: the extracted folder, its training and test files, the class names.
CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "data_batch_*", "test_batch", "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", "train", "test", "meta", "fine_label_names", "fine_labels"),
}


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


def class_images(folder: Path) -> list[Path]:
    """The images of one class folder, in the order that gives them their indices."""
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)


def folder_test_split(root: Path) -> Path:
    """The test split of a ``--dataset folder`` root: val/ or test/ (not both: which one is
    scored would be a guess)."""
    found = [root / split for split in FOLDER_TEST_SPLITS if (root / split).is_dir()]
    if len(found) == 2:
        raise UserError(f"--data-root {root} holds both val/ and test/; the images the models are scored on "
                        "would be a guess: keep one of them (rename or move the other)")
    if not found:
        raise UserError(f"--dataset folder needs {root}/train/<class>/ and {root}/val/<class>/ (or test/), "
                        f"one folder of images per class; {root} has no val/ or test/")
    return found[0]


def class_list(path, what: str = "--classes") -> list[str]:
    """The class names of a file, one a line (surrounding blanks and empty lines ignored), in
    its order; ``what`` names the flag in the errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {what} {path} ({getattr(err, 'strerror', None) or err}); give a text "
                        "file of class names, one a line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"{what} {path} names no class; give one class name a line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"{what} {path} names {', '.join(repeated[:5])} more than once; give each class once")
    return names


def cifar_folder(name: str, root: Path) -> Path:
    """The folder of torchvision's pickled files: under ``root``, or ``root`` itself."""
    folder_name = CIFAR_FILES[name][0]
    return root if root.name == folder_name else root / folder_name


def cifar_batches(name: str, paths: list[Path]) -> tuple[np.ndarray, list[int]]:
    """The uint8 (N, 3, 32, 32) images and the labels of torchvision's pickled batch files."""
    labels_key = CIFAR_FILES[name][5]
    images, targets = [], []
    for path in paths:
        batch = read_pickle(path, name)
        try:
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets += list(batch[labels_key])
        except (KeyError, ValueError, TypeError) as err:
            raise UserError(f"{path} is not a {name} batch ({err!r})") from None
    return np.concatenate(images), targets


def read_pickle(path: Path, name: str) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as err:
        raise UserError(f"cannot read {path} ({err}); is it one of torchvision's {name} files?") from None


class TestImages:
    """The test images of ``dataset`` under ``root``, by test-set index: ``paths`` (relative to
    ``root``; None for the pickled CIFAR files), ``targets`` (each image's class, from where it
    lies; for ``--dataset folder`` its index in ``classes``, the run's class order, which
    results.json records) and ``image(i)``, an (H, W, 3) uint8 array."""

    def __init__(self, dataset: str, root: str | Path, classes: list | None = None):
        root = Path(root)
        if dataset not in TEST_SPLIT:
            raise UserError(f"unknown data set {dataset!r}; choose one of: {', '.join(TEST_SPLIT)}")
        self.root, self.paths, self._pixels = root, None, None
        folder = folder_test_split(root) if dataset == "folder" else root / TEST_SPLIT[dataset]
        if dataset == "folder":
            # classes: the run's class order (results.json's "classes"), else the sorted names
            names = list(classes) if classes else sorted(p.name for p in folder.iterdir() if p.is_dir())
            files = folder_samples(folder, {name: c for c, name in enumerate(names)})
            self.paths = [Path(f).relative_to(root).as_posix() for f, _ in files]
            self.targets = np.array([c for _, c in files], dtype=np.int64)
        elif folder.is_dir():
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            files = [(f, c) for c, name in enumerate(classes) for f in class_images(folder / name)]
            self.paths = [f.relative_to(root).as_posix() for f, _ in files]
            self.targets = np.array([c for _, c in files], dtype=np.int64)
        elif dataset in CIFAR_FILES and (cifar_folder(dataset, root) / CIFAR_FILES[dataset][2]).is_file():
            pickles = cifar_folder(dataset, root)
            self._pixels, targets = cifar_batches(dataset, [pickles / CIFAR_FILES[dataset][2]])
            self.targets = np.asarray(targets, dtype=np.int64)
        else:
            raise UserError(f"no {dataset} test images under {root}: expected {folder}/<class>/<image>"
                            + (f" or torchvision's {CIFAR_FILES[dataset][0]}/" if dataset in CIFAR_FILES else ""))

    def __len__(self):
        return len(self.targets)

    def image(self, index: int) -> np.ndarray:
        if self._pixels is not None:
            return self._pixels[index].transpose(1, 2, 0)
        with Image.open(self.root / self.paths[index]) as im:
            return np.asarray(im.convert("RGB"))


def folder_samples(folder: Path, class_index: dict) -> list[tuple[str, int]]:
    """(path, class index) of every image under ``folder``/<class>/ for the classes of
    ``class_index`` (name -> index): torchvision's ``make_dataset`` order, read without torch
    (sorted class names, then every image under the class's folder, subfolders included, in
    sorted order), so that the flip analysis names the images the training code read."""
    samples = []
    for name in sorted(class_index):
        for parent, _, files in sorted(os.walk(folder / name, followlinks=True)):
            samples += [(os.path.join(parent, f), class_index[name]) for f in sorted(files)
                        if f.lower().endswith(IMAGE_SUFFIXES)]
    return samples
