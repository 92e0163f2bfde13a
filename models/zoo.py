"""Architectures by name.

- ``resnet18`` / ``resnet50``: torchvision's ImageNet ResNets, which the official code applies
  unchanged to 32x32 CIFAR images (7x7 stride-2 stem and max-pool).
- ``resnet18_cifar``: the same network with the usual CIFAR stem (3x3 stride-1 conv, no max-pool).

``embed_dim`` inserts a linear bottleneck of that size before the classifier (the paper's
128-d ImageNet embedding, or a 2-d space for Figure 3); the model then exposes ``features(x)``.
"""
import torch
from torch import nn
from torchvision import models as tvm


class Classifier(nn.Module):
    """backbone -> (optional linear embedding) -> linear head.

    ``features`` returns what the head sees, so embeddings can be plotted or cached."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, embed_dim: int | None):
        super().__init__()
        self.backbone = backbone
        self.embed = nn.Linear(feature_dim, embed_dim) if embed_dim else nn.Identity()
        self.fc = nn.Linear(embed_dim or feature_dim, num_classes)

    def features(self, x):
        return self.embed(self.backbone(x))

    def forward(self, x):
        return self.fc(self.features(x))


def _resnet(ctor, cifar_stem: bool):
    def build(num_classes: int, embed_dim: int | None = None):
        net = ctor()
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return Classifier(net, feature_dim, num_classes, embed_dim)
    return build


ARCHS = {
    "resnet18": _resnet(tvm.resnet18, cifar_stem=False),
    "resnet18_cifar": _resnet(tvm.resnet18, cifar_stem=True),
    "resnet50": _resnet(tvm.resnet50, cifar_stem=False),
}


def build_model(arch: str, num_classes: int, embed_dim: int | None = None) -> nn.Module:
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, embed_dim)
