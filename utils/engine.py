"""Training and inference loops, shared by the three scripts."""
from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn
from tqdm import tqdm

from utils.distributed import all_reduce_sum
from utils.errors import UserError


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite."""


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere or when disabled (bit-faithful fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EnsembleMean(nn.Module):
    """Mean logits of several models of the same architecture (the ELODI reference)."""

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        out = self.members[0](x).float()
        for m in self.members[1:]:
            out += m(x).float()
        return out / len(self.members)


class Teachers:
    """The reference models a method needs, run in inference mode on each training batch."""

    def __init__(self, old: nn.Module | None = None, new: nn.Module | None = None):
        self.old, self.new = old, new

    @torch.inference_mode()
    def __call__(self, x, amp: bool) -> dict:
        out = {}
        with autocast(x.device, amp):
            if self.old is not None:
                out["old_logits"] = self.old(x).float()
            if self.new is not None:
                out["new_logits"] = self.new(x).float()
        return out


def progress(iterable, **kwargs):
    """tqdm that stays quiet when stderr is not a terminal (logs, CI, batch jobs)."""
    return tqdm(iterable, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True, **kwargs)


def train_one_epoch(model, loader, optimizer, loss_fn, teachers: Teachers, epoch: int, *,
                    amp: bool = True, log_every: int = 50) -> dict:
    """One pass over ``loader``. Losses stay on the device and are read every ``log_every``
    steps, so the step itself never waits for the host."""
    model.train()
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    errors = torch.zeros((), device=device, dtype=torch.int64)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    seen = 0
    bar = progress(loader, desc=f"epoch {epoch}", total=len(loader))
    for step, (x, y) in enumerate(bar):
        refs = teachers(x, amp)
        with autocast(device, amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y, epoch=epoch, **refs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        detached = loss.detach()
        bad = ~torch.isfinite(detached)
        first_bad = torch.where(bad & (first_bad < 0), torch.tensor(step, device=device), first_bad)
        loss_sum += detached * len(y)
        errors += (logits.detach().argmax(1) != y).sum()
        seen += len(y)
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            if first_bad.item() >= 0:
                raise NonFiniteLoss(f"the training loss became non-finite at epoch {epoch}, "
                                    f"step {first_bad.item()}; lower --lr or check the inputs")
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}")
    totals = all_reduce_sum(torch.stack([loss_sum, errors.double(), torch.tensor(seen, device=device, dtype=torch.float64)]))
    loss_total, error_total, seen_total = totals.tolist()
    return {"loss": loss_total / seen_total, "train_er": 100.0 * error_total / seen_total}


@torch.inference_mode()
def predict(model, batches, amp: bool = True) -> torch.Tensor:
    """Logits of ``model`` over an iterable of (images, targets) batches, on the CPU."""
    model.eval()
    outs = []
    for x, _ in batches:
        with autocast(x.device, amp):
            outs.append(model(x).float())
    return torch.cat(outs).cpu()
