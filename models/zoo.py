"""Architectures by name.

- ``resnet18`` / ``resnet50``: torchvision's ImageNet ResNets, which the official code applies
  unchanged to 32x32 CIFAR images (7x7 stride-2 stem and max-pool).
- ``resnet18_cifar``: the same network with the usual CIFAR stem (3x3 stride-1 conv, no max-pool).
- ``vit_b_32``: torchvision's ViT-B/32 (Table 4 trains only its classifier, ``--freeze-backbone``);
  its input size is a constructor argument (``image_size``, a multiple of the 32-pixel patch).
- ``torchvision:NAME``: any torchvision classification model (``torchvision.models.get_model``),
  its last linear layer (the classifier) taken off as the backbone's output; its pretrained
  weights are the model's ``DEFAULT`` ones.

Every model keeps the path of the linear classifier in torchvision's own model
(``torchvision_head``: ``fc``, ``heads.head``, ``classifier.1`` ...), so that a plain
torchvision ``state_dict`` trained elsewhere maps onto it (``from_torchvision_state_dict``).

``embed_dim`` inserts a linear bottleneck of that size before the classifier (the paper's
128-d ImageNet embedding, or a 2-d space for Figure 3); the model then exposes ``features(x)``.
``pretrained`` loads torchvision's ImageNet-1k weights into the backbone; where they cannot be
had (no network and no cached copy) that is an error (``WeightsUnavailable``, which the caller
words for its user, or answers with a random backbone where its user allows one).
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm

PRETRAINED = "IMAGENET1K_V1"  # the one ImageNet-1k weight set every architecture here has
VIT_PATCH = 32
TORCHVISION = "torchvision:"  # --arch torchvision:NAME
# Constructor arguments of some torchvision models: the auxiliary classifiers of GoogLeNet and
# Inception v3 are left out (their forward then returns the logits alone, in training too).
NO_AUX = {"googlenet", "inception_v3"}


class WeightsUnavailable(RuntimeError):
    """torchvision's pretrained weights could not be loaded; the message says which and why."""


class ArchitectureError(ValueError):
    """An architecture that cannot be built with these settings; the message says why."""


class Classifier(nn.Module):
    """backbone -> (optional linear embedding) -> linear head.

    ``features`` returns what the head sees, so embeddings can be plotted or cached."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, embed_dim: int | None,
                 weights: str | None = None, torchvision_head: str = "fc"):
        super().__init__()
        self.weights = weights  # the pretrained weights the backbone started from, or None
        # The classifier's path in the torchvision model the backbone is (from_torchvision_state_dict).
        self.torchvision_head = torchvision_head
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
    return Classifier(net, net.hidden_dim, num_classes, embed_dim, weights, torchvision_head="heads.head")


ARCHS = {
    "resnet18": _resnet(tvm.resnet18, cifar_stem=False),
    "resnet18_cifar": _resnet(tvm.resnet18, cifar_stem=True),
    "resnet50": _resnet(tvm.resnet50, cifar_stem=False),
    "vit_b_32": _vit_b_32,
}


def torchvision_models() -> list[str]:
    """The names of torchvision's classification models (``--arch torchvision:NAME``)."""
    return tvm.list_models(module=tvm)


def arch_problem(arch: str) -> str | None:
    """Why ``arch`` names no architecture here (one line, with the choices), or None."""
    if arch in ARCHS:
        return None
    if not arch.startswith(TORCHVISION):
        return (f"unknown architecture {arch!r}; choose one of: {', '.join(ARCHS)}, or "
                f"{TORCHVISION}NAME for any torchvision classification model (e.g. {TORCHVISION}resnet18)")
    name = arch[len(TORCHVISION):]
    if name not in torchvision_models():
        close = [m for m in torchvision_models() if m.startswith(name[:4])] or torchvision_models()[:8]
        return (f"torchvision has no classification model {name!r} (--arch {arch}); "
                f"e.g. {', '.join(TORCHVISION + m for m in close[:8])}")
    if name.startswith("squeezenet"):
        return (f"--arch {arch}: SqueezeNet classifies with a convolution, not a linear layer, so its "
                "classifier cannot be replaced by a head of this run's classes; choose another model")
    return None


def vit_patch(arch: str) -> int | None:
    """The patch size of a ViT architecture (its input size must be a multiple), else None."""
    name = arch[len(TORCHVISION):] if arch.startswith(TORCHVISION) else arch
    if name.startswith("vit_"):
        return int(name.rsplit("_", 1)[1])
    return None


def pretrained_weights(arch: str):
    """The torchvision weights that ``--pretrained`` loads for ``arch``."""
    if arch.startswith(TORCHVISION):
        return tvm.get_model_weights(arch[len(TORCHVISION):]).DEFAULT
    return tvm.get_model_weights(arch)[PRETRAINED]


def fetch_command(arch: str) -> str:
    """A command that downloads the pretrained weights of ``arch`` into torch's cache."""
    name = arch[len(TORCHVISION):] if arch.startswith(TORCHVISION) else arch
    return (f"python -c \"import torchvision; torchvision.models.get_model_weights('{name}')"
            f".{pretrained_weights(arch).name}.get_state_dict()\"")


def last_linear(net: nn.Module, outputs: int) -> str | None:
    """The path of the last linear layer of ``net`` with ``outputs`` outputs: a torchvision
    classifier's (fc, classifier.1, heads.head ...)."""
    found = [name for name, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == outputs]
    return found[-1] if found else None


def _torchvision(name: str, num_classes: int, embed_dim: int | None = None, image_size: int | None = None,
                 pretrained: bool = False):
    """torchvision's ``name`` (``get_model``), its classifier replaced by the run's head."""
    kwargs = {}
    weights = tvm.get_model_weights(name).DEFAULT if pretrained else None
    if name in NO_AUX:
        kwargs["aux_logits"] = False
        if weights is None:
            kwargs["init_weights"] = True  # torchvision's own initialisation, without its warning
    if vit_patch(name) and image_size:
        kwargs["image_size"] = image_size
    try:
        net = tvm.get_model(name, weights=weights, progress=False, **kwargs)
    except ValueError as err:  # a constructor argument that the weights do not allow
        raise ArchitectureError(f"torchvision cannot build {name} with these settings: {err}") from None
    except (OSError, RuntimeError) as err:  # the weights cannot be had (offline, corrupt download)
        if weights is None:
            raise
        raise WeightsUnavailable(f"cannot load the pretrained {TORCHVISION}{name} weights {weights} "
                                 f"({type(err).__name__}: {err})") from None
    outputs = len(weights.meta["categories"]) if weights is not None else 1000
    head = last_linear(net, outputs)
    if head is None:
        raise ArchitectureError(f"{TORCHVISION}{name} has no linear classifier to replace; choose another model")
    feature_dim = net.get_submodule(head).in_features
    net.set_submodule(head, nn.Identity())
    return Classifier(net, feature_dim, num_classes, embed_dim, None if weights is None else str(weights),
                      torchvision_head=head)


def build_model(arch: str, num_classes: int, embed_dim: int | None = None, *,
                image_size: int | None = None, pretrained: bool = False) -> nn.Module:
    """``image_size`` matters to the ViTs only (the others take any input size)."""
    problem = arch_problem(arch)
    if problem:
        raise KeyError(problem)
    if arch.startswith(TORCHVISION):
        return _torchvision(arch[len(TORCHVISION):], num_classes, embed_dim, image_size, pretrained)
    return ARCHS[arch](num_classes, embed_dim, image_size, pretrained)


def from_torchvision_state_dict(model: Classifier, state: dict) -> dict:
    """The ``state_dict`` of a plain torchvision model (its own keys: ``fc.weight``,
    ``layer1.0.conv1.weight`` ...) as the keys of ``model`` (the same architecture wrapped as a
    ``Classifier``: ``backbone.layer1.0.conv1.weight``, its classifier ``fc.weight``); the
    weights of auxiliary classifiers (GoogLeNet's, Inception's), which ``model`` has not, are
    left out."""
    head = model.torchvision_head + "."
    mapped = {}
    for key, value in state.items():
        if key.startswith(head):
            mapped["fc." + key[len(head):]] = value
        elif not key.startswith(("AuxLogits.", "aux1.", "aux2.")):
            mapped["backbone." + key] = value
    return mapped
