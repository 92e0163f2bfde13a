"""The per-sample cost of seeding a sample's augmentation (utils.batches.SeededSamples) over the
plain random transform: mixing (seed, epoch, index) into one 32-bit seed, forking the CPU
generator and seeding it. The transform is the official CIFAR one (RandomCrop(32, padding=4) +
flip + ToTensor + Normalize of a 32 x 32 PIL image), the cheapest a pipeline uses, so the
overhead's share is the largest there.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/seeded_transform.py [--samples 20000 --repeats 5]

Prints the median over repeats of the plain and seeded microseconds per sample and their
difference (the target: at most 20 us a sample).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from utils.batches import SeededSamples  # noqa: E402
from utils.pil_pipeline import official_transform  # noqa: E402


def us_per_sample(fetch, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fetch(i)
    return (time.perf_counter() - start) / n * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker's setting
    rng = np.random.default_rng(0)
    images = [(Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), 0) for _ in range(256)]
    transform = official_transform()
    seeded = SeededSamples(images, transform)

    def plain(i):
        image, target = images[i % len(images)]
        return transform(image), target

    def with_seed(i):
        return seeded[(42, 3, i % len(images))]

    times = {"plain": [], "seeded": []}
    for _ in range(args.repeats):  # interleaved, so that a change of load hits both alike
        times["plain"].append(us_per_sample(plain, args.samples))
        times["seeded"].append(us_per_sample(with_seed, args.samples))
    plain_us, seeded_us = (statistics.median(times[k]) for k in ("plain", "seeded"))
    print(f"plain   {plain_us:.1f} us/sample median of {args.repeats}")
    print(f"seeded  {seeded_us:.1f} us/sample median of {args.repeats}")
    print(f"overhead {seeded_us - plain_us:.1f} us/sample")


if __name__ == "__main__":
    main()
