"""Write a small image-folder data set for the walk-through in docs/own-model.md: six classes of
32x32 images, each class with its own colour and random noise, PNG and JPEG files mixed,

    DIR/train/<class>/*.png|*.jpg   (24 a class)
    DIR/val/<class>/*.png|*.jpg     (8 a class)

    python docs/examples/make_images.py DIR
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = {"apple": (220, 30, 30), "banana": (230, 220, 40), "cherry": (120, 0, 40),
           "grape": (90, 30, 140), "kiwi": (90, 160, 40), "plum": (60, 40, 90)}


def main(root: Path, train: int = 24, val: int = 8, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for name, colour in CLASSES.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-50, 51, (size, size, 3))
                pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
                suffix = ".png" if i % 2 else ".jpg"  # any format torchvision reads
                Image.fromarray(pixels).save(folder / f"{name}_{i:03d}{suffix}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "my_images"))
