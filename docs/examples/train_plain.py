"""An old model trained elsewhere: a plain PyTorch training script that knows nothing of this
repository. It trains a torchvision classifier on some classes of an image folder, its head rows
in the order the classes are given (not sorted), and saves what such scripts save: the
state_dict, and the class of each head row, one a line.

    python docs/examples/train_plain.py --data DIR --classes cherry,apple,banana \
        --arch resnet18 --image-size 32 --epochs 8 --out old/model.pth --classes-out old/classes.txt

It prints its error on those classes' DIR/val images, preprocessed as this repository scores
image folders (resize to 256/224 of the size, centre crop, ImageNet normalisation).
"""
import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision import datasets, models
from torchvision import transforms as T

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class SomeClasses(datasets.ImageFolder):
    """ImageFolder of the given class folders only, each with its index in the given order."""

    def __init__(self, root, classes, transform):
        self.wanted = classes
        super().__init__(root, transform=transform)

    def find_classes(self, directory):
        return self.wanted, {name: i for i, name in enumerate(self.wanted)}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--classes", required=True, help="comma-separated class folders, in head-row order")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--out", required=True)
    p.add_argument("--classes-out", required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    classes = args.classes.split(",")
    size = args.image_size
    train_tf = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    eval_tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), T.Normalize(MEAN, STD)])
    train = SomeClasses(Path(args.data) / "train", classes, train_tf)
    val = SomeClasses(Path(args.data) / "val", classes, eval_tf)
    model = models.get_model(args.arch, num_classes=len(classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=16, shuffle=True)
    for _ in range(args.epochs):
        model.train()
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    wrong = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=64):
            wrong += (model(x).argmax(1) != y).sum().item()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    Path(args.classes_out).write_text("".join(f"{name}\n" for name in classes))
    print(f"old-class error: {100 * wrong / len(val):.2f} % on {len(val)} images")


if __name__ == "__main__":
    main()
