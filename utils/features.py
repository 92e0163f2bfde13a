"""Training a classifier on a frozen backbone (``--freeze-backbone``, Table 4).

The backbone never changes and its inputs are not augmented, so every image's features are
fixed: they are computed once (train and test splits, each process its shard, gathered) and
the head trains on the cached tensors, one backbone pass per image for the whole run instead
of one per image per epoch. Reference models that share the same frozen backbone (the old and
new ViT heads of Table 4) are run as heads on the same cache.

Reached from utils/runner.py, on the ``Inputs`` of a reader; the cached tensors are fed as
``TensorInputs`` (utils/inputs.py) with the ``TrainLoader`` of utils/batches.py.
"""
from __future__ import annotations

import torch
from torch import nn

from utils import distributed as dist
from utils.batches import TrainLoader
from utils.engine import predict
from utils.errors import UserError
from utils.inputs import ImageSet, TensorInputs, no_transform


def cache_features(inputs, backbone: nn.Module, args, device: torch.device) -> TensorInputs:
    """Backbone features of every split, on ``device``, behind the same interface as ``inputs``
    (an ImageSet's ``images`` hold the feature vectors). Training batches are cut from them like
    CIFAR's, so the global batches are the same for any number of processes."""
    splits = {}
    for split, targets in inputs.targets.items():
        local = predict(backbone, inputs.eval_batches(split)).to(device)
        splits[split] = ImageSet(dist.gather_rows(local, len(targets)), targets.to(device))
    loader = TrainLoader(splits["train"], args.batch_size, args.seed, no_transform, augment=False,
                         rank=inputs.rank, world_size=inputs.world, min_share=inputs.min_share)
    return TensorInputs(splits, no_transform, loader, args.batch_size, args.eval_batch_size,
                        inputs.rank, inputs.world, inputs.min_share)


def head_on(model: nn.Module, backbone: nn.Module, path: str) -> nn.Module:
    """The part of reference ``model`` above ``backbone``, to run on the cached features;
    an error if ``model`` was trained on another backbone (its cached inputs would differ)."""
    if not (hasattr(model, "head") and same_weights(backbone, model.backbone)):
        raise UserError(f"{path} was not trained on this run's frozen backbone, so it cannot run on "
                        "the cached features; train the reference models with the same --arch, "
                        "--freeze-backbone, --pretrained and --image-size")
    return model.head()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa)
