"""Training and inference loops, shared by the three scripts."""
from __future__ import annotations

import contextlib
import copy
import sys

import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.optimization import fuse
from tqdm import tqdm

from utils.distributed import all_reduce_sum
from utils.errors import UserError


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite in ``epoch`` at ``step`` (both 0-based; step is
    None when another process saw it). The runner adds the last good checkpoint to the message."""

    def __init__(self, epoch: int, step: int | None):
        self.epoch, self.step = epoch, step
        where = f"step {step + 1}" if step is not None else "on another process"
        super().__init__(f"the training loss became non-finite in epoch {epoch + 1}, {where}; "
                         "lower --lr or check the inputs")


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA; a no-op elsewhere or when disabled (bit-faithful fp32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EnsembleMean(nn.Module):
    """Mean logits of several models of the same architecture (the ELODI reference).

    ``batched=True`` evaluates all members as one ``torch.vmap`` over their stacked weights:
    one (grouped) kernel per layer instead of one per member and layer. It is for inference
    only, and the members must already be on their device, in eval mode and memory format
    (stacked 5-d weights cannot be converted to channels-last afterwards).
    """

    def __init__(self, members: list[nn.Module], batched: bool = False):
        super().__init__()
        self.batched = batched
        if not batched:
            self.members = nn.ModuleList(members)
            return
        # Stacked by name rather than with torch.func.stack_module_state, which also wants one
        # class, and every BatchNorm-folded (fx-traced) member has a class of its own.
        states = [{**dict(m.named_parameters()), **dict(m.named_buffers())} for m in members]
        self._names = list(states[0])
        for i, name in enumerate(self._names):
            self.register_buffer(f"stacked_{i}", torch.stack([s[name].detach() for s in states]))
        # The members' structure without storage; functional_call supplies the weights. Kept in
        # a tuple so that .to() and state_dict() leave it alone.
        self._skeleton = (copy.deepcopy(members[0]).eval().to("meta"),)

    def _member_logits(self, state: dict, x):
        return functional_call(self._skeleton[0], state, (x,))

    def forward(self, x):
        if self.batched:
            state = {name: getattr(self, f"stacked_{i}") for i, name in enumerate(self._names)}
            return torch.vmap(self._member_logits, in_dims=(0, None))(state, x).float().mean(0)
        out = self.members[0](x).float()
        for m in self.members[1:]:
            out += m(x).float()
        return out / len(self.members)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the convolution before it
    (one kernel and one pass over the activations fewer per layer). The logits agree up to
    rounding, so this is for teachers in the non-bit-faithful (bf16) mode only."""
    return fuse(model.eval())


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
        # A Python scalar fill: no host-to-device copy (and so no sync) in the step.
        first_bad.masked_fill_(~torch.isfinite(detached) & (first_bad < 0), step)
        loss_sum += detached * len(y)
        errors += (logits.detach().argmax(1) != y).sum()
        seen += len(y)
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            # Decided by all ranks together: a rank that stopped alone would leave the others
            # waiting for it in the next gradient all-reduce.
            if all_reduce_sum((first_bad >= 0).to(torch.int64)).item() > 0:
                bad_step = int(first_bad.item())
                raise NonFiniteLoss(epoch, bad_step if bad_step >= 0 else None)
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
