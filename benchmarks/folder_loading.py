"""Does the image-folder loader keep the GPU busy? Images/s of the ImageNet-folder training
loader (decode, RandomResizedCrop, flip: utils.imagenet's pipeline, per-sample seeded) with 1 to
8 loader workers, against the images/s the model trains at on the device, on generated JPEGs of
ImageNet's typical size.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/folder_loading.py [--device cuda] [--arch resnet18]
        [--images 2048 --batch-size 128 --image-size 224 --workers-list "1 2 4 8"] [--dir DIR]

Prints one line per worker count, the model's training rate, and which of the two limits a
training process at --workers' default (utils.cli.default_workers: this machine's CPUs).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from models import build_model  # noqa: E402
from utils.cli import default_workers  # noqa: E402
from utils.data import load_dataset  # noqa: E402

CLASSES = 8


def write_jpegs(root: Path, images: int, seed: int = 0):
    """``images`` training JPEGs of 500 x 375 pixels (ImageNet's median size) in CLASSES class
    folders, smooth enough to compress like photographs; one validation image a class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", images), ("val", CLASSES)):
        for i in range(count):
            folder = root / split / f"n{i % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((500, 375), Image.BILINEAR).save(folder / f"{i}.JPEG", quality=90)


def loader_rate(data, args, workers: int, device: torch.device) -> float:
    """Images/s of one pass of the training loader (after its workers started: the first batch
    is not timed)."""
    settings = SimpleNamespace(image_size=args.image_size, batch_size=args.batch_size, seed=0, workers=workers,
                               eval_batch_size=args.batch_size)
    loader = data.inputs(settings, device).train_loader
    loader.set_epoch(0)
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for x, _ in batches:
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)


def model_rate(args, device: torch.device, steps: int = 10) -> float:
    """Images/s of training steps (forward, backward, SGD) of ``--arch`` on random batches."""
    model = build_model(args.arch, CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, CLASSES, (args.batch_size,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up: allocation, cuDNN's choice of kernels
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * args.batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers-list", default="1 2 4 8")
    parser.add_argument("--model-steps", type=int, default=10)
    parser.add_argument("--dir", help="where the JPEGs go (default: a temporary folder)")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp)
        if not (root / "train").is_dir():
            write_jpegs(root, args.images)
        data = load_dataset("imagenet", root)
        rates = {}
        for workers in map(int, args.workers_list.split()):
            rates[workers] = loader_rate(data, args, workers, device)
            print(f"loader, {workers} worker(s): {rates[workers]:.0f} images/s", flush=True)
    trained = model_rate(args, device, args.model_steps)
    print(f"model {args.arch}, batch {args.batch_size} at {args.image_size} px, {args.device}: "
          f"{trained:.0f} images/s")
    default = default_workers()
    nearest = max((w for w in rates if w <= default), default=min(rates))
    fed = rates[nearest] >= trained
    print(f"--workers default here: {default}; with {nearest} worker(s) the "
          f"{'model on the ' + args.device if fed else 'loader'} is the limit "
          f"({rates[nearest]:.0f} loaded vs {trained:.0f} trained "
          "images/s)")


if __name__ == "__main__":
    main()
