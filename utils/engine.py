"""Training and inference loops, and the preparation of the teachers they run."""
from __future__ import annotations

import copy
import sys

import torch
from torch import nn
from torch.func import functional_call
from torch.fx.experimental.optimization import fuse
from tqdm import tqdm

from utils.device import autocast, prefers_channels_last
from utils.distributed import all_reduce_sum, is_main
from utils.errors import UserError


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite in ``epoch`` at ``step`` (both 0-based; step is
    None when another process saw it). ``terms``: the loss terms' values on that batch;
    ``teacher_max``: each reference model's largest |logit| on it. The runner turns these facts
    into advice (utils/runner.py, ``non_finite_message``)."""

    def __init__(self, epoch: int, step: int | None, terms: dict | None = None, teacher_max: dict | None = None):
        self.epoch, self.step = epoch, step
        self.terms, self.teacher_max = terms or {}, teacher_max or {}
        super().__init__(f"non-finite loss in epoch {epoch + 1}")


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
    (one kernel and one pass over the activations fewer per layer), on its device and in its
    memory format. The logits agree up to rounding, so this is for teachers in the
    non-bit-faithful (bf16) mode only."""
    return fuse(model.eval())


def prepare_teacher(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` made inference-only, on ``device``, channels-last where that is faster: the one
    preparation of a reference model, whether it is scored or teaches (``build_teachers``)."""
    model = model.eval().requires_grad_(False).to(device)
    return model.to(memory_format=torch.channels_last) if prefers_channels_last(device) else model


class Teachers:
    """The reference models a method needs, run in inference mode on each training batch:
    ``old`` (the old model) and ``new`` (the new reference model, or ELODI's ensemble mean)."""

    def __init__(self, old: nn.Module | None = None, new: nn.Module | None = None):
        self.old, self.new = old, new

    @torch.inference_mode()
    def __call__(self, x, precision: str = "fp32", wanted=frozenset({"old", "new", "ensemble"})) -> dict:
        """The logits of the teachers in ``wanted`` (a method's references this epoch)."""
        out = {}
        with autocast(x.device, precision):
            if self.old is not None and "old" in wanted:
                out["old_logits"] = self.old(x).float()
            if self.new is not None and wanted & {"new", "ensemble"}:
                out["new_logits"] = self.new(x).float()
        return out


def build_teachers(uses, fold: bool, old: nn.Module | None = None, new: nn.Module | None = None,
                   members=()) -> Teachers:
    """The teachers of a method that ``uses`` some of {"old", "new", "ensemble"}, from reference
    models prepared once (``prepare_teacher``): with ``fold``, folded copies and the ensemble as
    one vmapped computation (``utils.device.folds_teachers`` says where); else the models
    themselves, so the scored old model is also the teacher."""
    teacher = fold_batchnorm if fold else (lambda model: model)
    teachers = Teachers()
    if "old" in uses:
        teachers.old = teacher(old)
    if "new" in uses:
        teachers.new = teacher(new)
    if "ensemble" in uses:
        teachers.new = EnsembleMean([teacher(m) for m in members], batched=fold)
    return teachers


def progress(iterable, **kwargs):
    """tqdm on rank 0 only, and quiet when stderr is not a terminal (logs, CI, batch jobs)."""
    return tqdm(iterable, disable=not (sys.stderr.isatty() and is_main()), leave=False, dynamic_ncols=True,
                **kwargs)


def min_share(net: nn.Module) -> int:
    """The fewest samples a process may train on in one step (``utils.batches.BatchPlan``): 2 where
    a BatchNorm normalises by the process's own batch statistics (one sample has no variance;
    at 1x1 pixels BatchNorm refuses it), 1 otherwise (SyncBatchNorm's are the global batch's)."""
    per_process = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                      for m in net.modules())
    return 2 if per_process else 1


class EpochSums:
    """One epoch's running sums on the device, read only at log points: the loss and each term
    summed over samples, training errors, samples seen. A save inside the epoch keeps them
    (``snapshot``: summed over the processes) so that a resumed epoch ends with the same means."""

    def __init__(self, device: torch.device, snapshot: dict | None = None):
        self.device, self.names, self.sums = device, None, None
        self.errors = torch.zeros((), device=device, dtype=torch.int64)
        self.seen = 0
        if snapshot is not None and is_main():  # the other processes' shares are in rank 0's totals
            self.names = snapshot["names"]
            self.sums = torch.tensor(snapshot["sums"], device=device, dtype=torch.float64)
            self.errors += snapshot["errors"]
            self.seen = snapshot["seen"]

    def add(self, names: list, values: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor):
        """``values``: the step's loss then its terms (mean over the step's samples)."""
        if self.sums is None:
            self.names = names
            self.sums = torch.zeros(len(values), device=self.device, dtype=torch.float64)
        self.sums += values * len(targets)
        self.errors += (logits.argmax(1) != targets).sum()
        self.seen += len(targets)

    def _totals(self) -> list:
        width = 1 + len(self.names or [])
        sums = self.sums if self.sums is not None else torch.zeros(width, device=self.device, dtype=torch.float64)
        seen = torch.tensor(float(self.seen), device=self.device, dtype=torch.float64)
        return all_reduce_sum(torch.cat([sums, torch.stack([self.errors.double(), seen])])).tolist()

    def snapshot(self) -> dict:
        *sums, errors, seen = self._totals()
        return {"names": self.names, "sums": sums, "errors": int(errors), "seen": int(seen)}

    def means(self) -> dict:
        *sums, errors, seen = self._totals()
        return {"loss": sums[0] / seen, "train_er": 100.0 * errors / seen,
                "terms": {name: v / seen for name, v in zip(self.names, sums[1:])}}


class NonFiniteWatch:
    """The first step of an epoch whose loss is not finite, kept on the device with its loss
    terms and the teachers' largest |logit| (no host sync in the step); ``check``, at log points
    and by all processes together, raises ``NonFiniteLoss`` with those facts."""

    def __init__(self, device: torch.device):
        self.first = torch.full((), -1, device=device, dtype=torch.int64)
        self.values = None

    def watch(self, step: int, values: torch.Tensor):
        if self.values is None:
            self.values = torch.zeros_like(values)
        is_first = ~torch.isfinite(values[0]) & (self.first < 0)
        self.values = torch.where(is_first, values, self.values)
        self.first.masked_fill_(is_first, step)  # a Python scalar fill: no host-to-device copy

    def check(self, epoch: int, terms: list, teachers: list):
        # Decided by all ranks together: a rank that stopped alone would leave the others
        # waiting for it in the next gradient all-reduce.
        if all_reduce_sum((self.first >= 0).to(torch.int64)).item() == 0:
            return
        step, values = int(self.first.item()), self.values.tolist()
        raise NonFiniteLoss(epoch, step if step >= 0 else None, dict(zip(terms, values[1:1 + len(terms)])),
                            dict(zip(teachers, values[1 + len(terms):])))


def train_one_epoch(model, loader, optimizer, loss_fn, teachers: Teachers, epoch: int, *,
                    precision: str = "fp32", log_every: int = 50, lr_scale=None, first_step: int = 0,
                    snapshot: dict | None = None, save_every: int = 0, save=None) -> dict:
    """One pass over ``loader`` (from step ``first_step``, with the sums ``snapshot`` of the
    steps before it) with the loss ``loss_fn`` (a method, methods.Method); returns the mean
    loss, the training error and the mean of each loss term.

    Each process's loss is weighted by its share of the step's global batch
    (``loader.plan.loss_weight``), so that DDP's average of the processes' gradients is the
    gradient of the global batch's mean loss. ``lr_scale(step)``: the learning rate's factor in
    a step (warm-up). Every ``save_every`` steps ``save(step, snapshot)`` is called (a save
    inside the epoch). Sums stay on the device and are read every ``log_every`` steps, so a step
    never waits for the host; the first non-finite step is reported with its facts
    (``NonFiniteWatch``)."""
    model.train()
    device = next(model.parameters()).device
    wanted = loss_fn.references_at(epoch)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    sums, watch = EpochSums(device, snapshot), NonFiniteWatch(device)
    steps = len(loader)
    bar = progress(loader, desc=f"epoch {epoch}", total=steps, initial=first_step)
    for step, (x, y) in enumerate(bar, start=first_step):
        if lr_scale is not None:
            for group, lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = lr * lr_scale(step)
        teacher_logits = teachers(x, precision, wanted)
        with autocast(device, precision):
            logits = model(x)
        terms = loss_fn.terms(logits.float(), y, epoch=epoch, **teacher_logits)
        loss = loss_fn.total(terms)  # the method's loss, its terms kept for the log
        weight = loader.plan.loss_weight(step)
        optimizer.zero_grad(set_to_none=True)
        (loss if weight == 1 else loss * weight).backward()
        optimizer.step()

        # One vector per step: the loss, its terms, then each teacher's largest |logit|.
        values = torch.stack([loss.detach(), *(t.detach() for t in terms.values()),
                              *(z.abs().amax() for z in teacher_logits.values())])
        watch.watch(step, values)
        sums.add(list(terms), values[:1 + len(terms)], logits.detach(), y)
        last = step + 1 == steps
        saving = save is not None and save_every and (step + 1) % save_every == 0 and not last
        if (step + 1) % log_every == 0 or last or saving:
            watch.check(epoch, list(terms), [k.removesuffix("_logits") for k in teacher_logits])
            bar.set_postfix(loss=f"{sums.sums[0].item() / max(sums.seen, 1):.4f}")
        if saving:
            save(step, sums.snapshot())
    for group, lr in zip(optimizer.param_groups, base_lrs):
        group["lr"] = lr  # the schedule's own value, from which it takes its next step
    return sums.means()


@torch.inference_mode()
def predict(model, batches) -> torch.Tensor:
    """Plain fp32 logits of ``model`` over an iterable of (images, targets) batches, on the CPU:
    scoring is never autocast (NFR counts argmax flips, which rounding at near-ties moves). No
    batch (an empty shard: fewer rows than processes) gives a (0, 0) tensor."""
    model.eval()
    logits = [model(x).float().cpu() for x, _ in batches]
    return torch.cat(logits) if logits else torch.empty(0, 0)
