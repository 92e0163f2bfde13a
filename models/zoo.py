"""Architectures by name.

- ``resnet18`` / ``resnet50``: torchvision's ImageNet ResNets, which the official code applies
  unchanged to 32x32 CIFAR images (7x7 stride-2 stem and max-pool).
- ``resnet18_cifar``: the same network with the usual CIFAR stem (3x3 stride-1 conv, no max-pool).
- ``vit_b_32``: torchvision's ViT-B/32 (Table 4 trains only its classifier, ``--freeze-backbone``);
  its input size is a constructor argument (``image_size``, a multiple of the 32-pixel patch).

``embed_dim`` inserts a linear bottleneck of that size before the classifier (the paper's
128-d ImageNet embedding, or a 2-d space for Figure 3); the model then exposes ``features(x)``.
``pretrained`` loads torchvision's ImageNet-1k weights into the backbone; where they cannot be
had (no network and no cached copy) that is an error (``WeightsUnavailable``, which the caller
words for its user, or answers with a random backbone where its user allows one).
"""
from torch import nn
from torchvision import models as tvm

PRETRAINED = "IMAGENET1K_V1"  # the one ImageNet-1k weight set every architecture here has
VIT_PATCH = 32


class WeightsUnavailable(RuntimeError):
    """torchvision's pretrained weights could not be loaded; the message says which and why."""


class Classifier(nn.Module):
    """backbone -> (optional linear embedding) -> linear head.

    ``features`` returns what the head sees, so embeddings can be plotted or cached."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, embed_dim: int | None,
                 weights: str | None = None):
        super().__init__()
        self.weights = weights  # the pretrained weights the backbone started from, or None
        self.backbone = backbone
        self.embed = nn.Linear(feature_dim, embed_dim) if embed_dim else nn.Identity()
        self.fc = nn.Linear(embed_dim or feature_dim, num_classes)

    def features(self, x):
        return self.embed(self.backbone(x))

    def forward(self, x):
        return self.fc(self.features(x))

    def head(self) -> nn.Module:
        """The trainable part above the backbone (shares its parameters): maps backbone outputs
        to logits, for training on cached backbone features."""
        return nn.Sequential(self.embed, self.fc)

    def reset_head(self):
        """Draw the embedding and classifier weights again from the current random state."""
        for layer in (self.embed, self.fc):
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()


def load_pretrained(net: nn.Module, arch: str) -> str:
    """torchvision's ImageNet-1k weights into ``net``; returns their name. Where they cannot be
    loaded (offline, proxy, corrupt download) that is ``WeightsUnavailable``."""
    weights = tvm.get_model_weights(arch)[PRETRAINED]
    try:
        net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True))
        return str(weights)
    except (OSError, RuntimeError, ValueError) as err:
        raise WeightsUnavailable(f"cannot load the pretrained {arch} weights {weights} "
                                 f"({type(err).__name__}: {err})") from None


def _resnet(ctor, cifar_stem: bool):
    def build(num_classes: int, embed_dim: int | None = None, image_size: int | None = None,
              pretrained: bool = False):
        net = ctor()
        weights = load_pretrained(net, ctor.__name__) if pretrained else None
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        feature_dim = net.fc.in_features
        net.fc = nn.Identity()
        return Classifier(net, feature_dim, num_classes, embed_dim, weights)
    return build


def _vit_b_32(num_classes: int, embed_dim: int | None = None, image_size: int | None = None,
              pretrained: bool = False):
    net = tvm.vit_b_32(image_size=image_size or 224)
    weights = load_pretrained(net, "vit_b_32") if pretrained else None
    net.heads = nn.Identity()  # the backbone returns the class token's representation
    return Classifier(net, net.hidden_dim, num_classes, embed_dim, weights)


ARCHS = {
    "resnet18": _resnet(tvm.resnet18, cifar_stem=False),
    "resnet18_cifar": _resnet(tvm.resnet18, cifar_stem=True),
    "resnet50": _resnet(tvm.resnet50, cifar_stem=False),
    "vit_b_32": _vit_b_32,
}


def build_model(arch: str, num_classes: int, embed_dim: int | None = None, *,
                image_size: int | None = None, pretrained: bool = False) -> nn.Module:
    """``image_size`` matters to the ViT only (the ResNets take any input size)."""
    if arch not in ARCHS:
        raise KeyError(f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}")
    return ARCHS[arch](num_classes, embed_dim, image_size, pretrained)
