"""The scoring step: which models are scored, on which splits, at which precision.

Every prediction here is plain fp32 (``utils.engine.predict``), of unfolded models: the old
model's reference predictions (once per run) and the trained model's (every epoch). An update
is scored with the flip metrics against the old model; a reference model with its error rates.
Under torchrun each process predicts its shard and the rows are gathered back in order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils import distributed as dist
from utils.engine import predict
from utils.metrics import error_rate, flip_metrics


def split_logits(model, inputs, split: str, device: torch.device) -> torch.Tensor:
    """fp32 logits of ``model`` over the whole ``split``, in order, on the CPU (every rank)."""
    local = predict(model, inputs.eval_batches(split))
    return dist.gather_rows(local.to(device), len(inputs.targets[split])).cpu()


@dataclass
class Scores:
    """One evaluation: the test metrics (the validation ones nested under "val") and the test
    logits of the scored model and, for an update, of the old model."""
    metrics: dict
    logits: torch.Tensor
    old_logits: torch.Tensor | None = None

    @property
    def pred(self) -> np.ndarray:
        return self.logits.argmax(1).numpy()

    @property
    def old_pred(self) -> np.ndarray | None:
        return None if self.old_logits is None else self.old_logits.argmax(1).numpy()


class Scorer:
    """Scores a trained model of ``role`` ("old", "new" or "update") on the test split and, where
    the run holds one out, the validation split. For an update, the old model's logits are
    computed once, here."""

    def __init__(self, inputs, role: str, num_old: int, device: torch.device, old_model=None):
        self.inputs, self.role, self.num_old, self.device = inputs, role, num_old, device
        self.splits = [s for s in ("test", "val") if s in inputs.targets]
        self.old_logits = {}
        if role == "update":
            self.old_logits = {s: split_logits(old_model, inputs, s, device) for s in self.splits}

    def metrics(self, split: str, pred: np.ndarray) -> dict:
        targets = self.inputs.targets[split].numpy()
        if self.role == "update":
            return flip_metrics(targets, self.old_logits[split].argmax(1).numpy(), pred, self.num_old)
        old = targets < self.num_old
        metrics = {"er_old": error_rate(pred[old], targets[old])}
        if self.role == "new":
            metrics["er_all"] = error_rate(pred, targets)
        return metrics

    def __call__(self, model) -> Scores:
        dist.broadcast_buffers(model)  # every rank scores its shard with rank 0's model
        logits = {s: split_logits(model, self.inputs, s, self.device) for s in self.splits}
        metrics = self.metrics("test", logits["test"].argmax(1).numpy())
        if "val" in logits:
            metrics["val"] = self.metrics("val", logits["val"].argmax(1).numpy())
        return Scores(metrics, logits["test"], self.old_logits.get("test"))
