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
    (one kernel and one pass over the activations fewer per layer). The logits agree up to
    rounding, so this is for teachers in the non-bit-faithful (bf16) mode only."""
    return fuse(model.eval())


def prepare_teacher(model: nn.Module, device: torch.device, fast: bool = False) -> nn.Module:
    """An inference-only copy on ``device`` (channels-last where that is faster); with ``fast``,
    BatchNorm folded into the convolutions (``utils.device.fast_teachers`` says where)."""
    model = model.eval().requires_grad_(False)
    if fast:
        model = fold_batchnorm(model)
    model = model.to(device)
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


def build_teachers(uses, device: torch.device, fast: bool, old: nn.Module | None = None,
                   new: nn.Module | None = None, members=()) -> Teachers:
    """The teachers of a method that ``uses`` some of {"old", "new", "ensemble"}, from reference
    models already prepared with ``prepare_teacher(model, device)``: with ``fast``, folded copies
    and the ensemble as one vmapped computation (``utils.device.fast_teachers`` says where)."""
    def fit(model):
        return prepare_teacher(model, device, fast) if fast else model  # folding copies
    teachers = Teachers()
    if "old" in uses:
        teachers.old = fit(old)
    if "new" in uses:
        teachers.new = fit(new)
    if "ensemble" in uses:
        teachers.new = EnsembleMean([fit(m) for m in members], batched=fast)
    return teachers


def progress(iterable, **kwargs):
    """tqdm on rank 0 only, and quiet when stderr is not a terminal (logs, CI, batch jobs)."""
    return tqdm(iterable, disable=not (sys.stderr.isatty() and is_main()), leave=False, dynamic_ncols=True,
                **kwargs)


def min_share(net: nn.Module) -> int:
    """The fewest samples a process may train on in one step (``utils.inputs.BatchPlan``): 2 where
    a BatchNorm normalises by the process's own batch statistics (one sample has no variance;
    at 1x1 pixels BatchNorm refuses it), 1 otherwise (SyncBatchNorm's are the global batch's)."""
    per_process = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
                      for m in net.modules())
    return 2 if per_process else 1


def train_one_epoch(model, loader, optimizer, loss_fn, teachers: Teachers, epoch: int, *,
                    precision: str = "fp32", log_every: int = 50) -> dict:
    """One pass over ``loader`` with the loss ``loss_fn`` (a method, methods.Method); returns the
    mean loss, the training error and the mean of each loss term. Each process's loss is weighted
    by its share of the step's global batch (``loader.plan.loss_weight``), so that DDP's average of
    the processes' gradients is the gradient of the global batch's mean loss. Everything is summed
    on the device and read every ``log_every`` steps, so a step never waits for the host. The
    first non-finite step keeps its terms and the teachers'
    largest |logit| on the device, for the error's advice."""
    model.train()
    device = next(model.parameters()).device
    wanted = loss_fn.references_at(epoch)
    names, sums, bad_values = None, None, None
    errors = torch.zeros((), device=device, dtype=torch.int64)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    seen = 0
    bar = progress(loader, desc=f"epoch {epoch}", total=len(loader))
    for step, (x, y) in enumerate(bar):
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
        if names is None:
            names = list(terms)
            sums = torch.zeros(1 + len(names), device=device, dtype=torch.float64)
            bad_values = torch.zeros_like(values)
        is_first_bad = ~torch.isfinite(values[0]) & (first_bad < 0)
        bad_values = torch.where(is_first_bad, values, bad_values)
        # A Python scalar fill: no host-to-device copy (and so no sync) in the step.
        first_bad.masked_fill_(is_first_bad, step)
        sums += values[:1 + len(names)] * len(y)
        errors += (logits.detach().argmax(1) != y).sum()
        seen += len(y)
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            # Decided by all ranks together: a rank that stopped alone would leave the others
            # waiting for it in the next gradient all-reduce.
            if all_reduce_sum((first_bad >= 0).to(torch.int64)).item() > 0:
                bad_step = int(first_bad.item())
                bad = bad_values.tolist()
                teacher_names = [k.removesuffix("_logits") for k in teacher_logits]
                raise NonFiniteLoss(epoch, bad_step if bad_step >= 0 else None,
                                    dict(zip(names, bad[1:1 + len(names)])),
                                    dict(zip(teacher_names, bad[1 + len(names):])))
            bar.set_postfix(loss=f"{sums[0].item() / seen:.4f}")
    totals = all_reduce_sum(torch.cat([sums, torch.stack([errors.double(),
                                       torch.tensor(float(seen), device=device, dtype=torch.float64)])]))
    *term_sums, error_total, seen_total = totals.tolist()
    return {"loss": term_sums[0] / seen_total, "train_er": 100.0 * error_total / seen_total,
            "terms": {name: v / seen_total for name, v in zip(names, term_sums[1:])}}


@torch.inference_mode()
def predict(model, batches) -> torch.Tensor:
    """Plain fp32 logits of ``model`` over an iterable of (images, targets) batches, on the CPU:
    scoring is never autocast (NFR counts argmax flips, which rounding at near-ties moves)."""
    model.eval()
    return torch.cat([model(x).float().cpu() for x, _ in batches])
