"""One training run, shared by the three scripts: data, model, teachers, the epoch loop,
per-epoch evaluation and logging, resumable state, and the final files."""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models import build_model
from utils import distributed as dist
from utils.checkpoint import atomic_save, load_model, model_checkpoint, unwrap
from utils.cli import identity
from utils.data import input_spec, load_dataset, num_old_classes
from utils.engine import (EnsembleMean, NonFiniteLoss, Teachers, fold_batchnorm, predict, progress,
                          train_one_epoch)
from utils.errors import UserError
from utils.features import cache_features, head_on
from utils.metrics import error_rate, flip_metrics

STATE_FILE = "state.pth"      # resumable state, rewritten after every epoch
LOG_FILE = "log.jsonl"        # one JSON record per epoch
# ELODI's ensemble: one vmapped computation on CUDA (one kernel per layer, not one per member
# and layer); a loop on the CPU, where the vmapped grouped convolutions ran slower
# (benchmarks/throughput.py --ensemble).
ENSEMBLE_BATCHED = {"cuda": True, "cpu": False}
LR_STEP_EPOCHS = 30           # --lr-schedule step: x0.1 every 30 epochs (the ImageNet recipe)
# --freeze-backbone without pretrained weights: every run draws the same random backbone (as
# every run would load the same pretrained one), so reference heads fit this run's features.
FROZEN_BACKBONE_SEED = 0


@dataclass
class Update:
    """What ``main.py`` adds to a plain training run: the method and its reference models."""
    loss_fn: object
    old_ckpt: str
    new_ckpt: str | None = None
    ensemble: list = field(default_factory=list)


def setup_device(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cuda.matmul.allow_tf32 = args.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = args.precision != "fp32"
    torch.backends.cudnn.deterministic = not args.fast
    torch.backends.cudnn.benchmark = args.fast
    return device


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_writable(path: Path, flag: str, folder: bool):
    """Fail, writing nothing, when the folder (``folder``) or file that ``flag`` names cannot be
    created or replaced: it is of the other kind, or its nearest existing folder is a file or
    read-only."""
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{flag} {path} is a {'file' if folder else 'folder'}; "
                        f"give {'a folder' if folder else 'a file path'}")
    start = (path if folder else path.parent).absolute()
    existing = next(p for p in (start, *start.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{flag} {path} cannot be created: {existing} is a file; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path} cannot be written: {existing} is read-only; give a writable path")


def prepare_output_dir(path: Path):
    if path.exists() and not path.is_dir():
        raise UserError(f"--output-dir {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: concurrent runs may probe too
            pass
    except OSError as err:
        raise UserError(f"cannot write to --output-dir {path} ({err.strerror}); give a writable folder") from None


def write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(args, role: str, update: Update | None = None) -> dict:
    """Train a model for ``role`` ("old", "new" or "update") and write its files.
    Returns the final metrics. Under torchrun every rank runs this; rank 0 alone writes."""
    try:
        return _run(args, role, update)
    finally:
        dist.shutdown()  # on errors too: no rank leaves with its process group open


def _run(args, role: str, update: Update | None) -> dict:
    device = setup_device(args)
    rank, world = dist.init(device)
    amp = args.precision == "bf16"
    out_dir = Path(args.output_dir)
    # Every input is checked and read before the first write (the output folder is created
    # after the reference models are loaded), so that a failing command leaves an existing run
    # folder and --save file exactly as they were.
    check_writable(out_dir, "--output-dir", folder=True)
    check_writable(final_checkpoint_path(args, out_dir), "--save", folder=False)
    state = read_state(out_dir, args) if args.resume else None

    # Data: the old model only ever sees the old classes. --val-fraction: a seeded, stratified
    # part of the training set is held out and scored like the test set, so that
    # hyperparameters such as b can be chosen without looking at the test set.
    data = load_dataset(args.dataset, args.data_root)
    num_classes = data.num_classes
    num_old = num_old_classes(num_classes, args.old_fraction)
    if role == "old":
        data = data.classes_below(num_old)
    if args.val_fraction > 0:
        data = data.holdout(args.val_fraction, args.seed)
    head = num_old if role == "old" else num_classes
    inputs = data.inputs(args, device, rank, world)  # this rank's train batches and eval shards

    # Model: seeded, so that every run of the same command starts from the same weights.
    seed_everything(FROZEN_BACKBONE_SEED if args.freeze_backbone else args.seed)
    with dist.main_first():  # rank 0 downloads any pretrained weights, the others read its copy
        model = build_model(args.arch, head, args.embed_dim, image_size=args.image_size,
                            pretrained=args.pretrained)
    if args.freeze_backbone:
        if not args.pretrained and dist.is_main():
            print(f"warning: --freeze-backbone without --pretrained: the frozen {args.arch} backbone "
                  "has RANDOM weights", file=sys.stderr, flush=True)
        seed_everything(args.seed)
        model.reset_head()
        model.backbone.requires_grad_(False)
    model = model.to(device)
    if world > 1 and device.type == "cuda":
        # BatchNorm statistics over the global batch, as in one process (needs NCCL/CUDA).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # ``net`` is what the inputs are fed to: the model, or with a frozen backbone its head,
    # trained on the backbone's features computed once (see utils/features.py).
    net = model
    if args.freeze_backbone:
        inputs = cache_features(inputs, model.backbone, args, device, amp)
        net = model.head()

    def eval_logits(model, split="test"):
        logits = predict(model, inputs.eval_batches(split), amp)
        return dist.gather_rows(logits.to(device), len(inputs.targets[split])).cpu()

    # Reference models: only those the method uses; the old model's predictions once.
    # Folding BatchNorm changes the logits by rounding only: done where bf16 already does.
    teachers, old_test_pred, old_val_pred = Teachers(), None, None
    fold_bn = device.type == "cuda" and amp

    def reference(path, role, classes):
        """A reference model from its checkpoint, fed what this run feeds ``net``."""
        ref = load_model(path, role, num_classes=classes, dataset=args.dataset, inputs=input_spec(args))[0]
        if args.freeze_backbone:
            ref = head_on(ref, model.backbone, path)
        return prepare_teacher(ref, device, fold_bn)

    if update is not None:
        refs = update.loss_fn.references
        old_model = reference(update.old_ckpt, "old", num_old)
        old_test_pred = eval_logits(old_model).argmax(1).numpy()
        if "val" in inputs.targets:
            old_val_pred = eval_logits(old_model, "val").argmax(1).numpy()
        if "old" in refs:
            teachers.old = old_model
        if "new" in refs:
            teachers.new = reference(update.new_ckpt, "new", num_classes)
        if "ensemble" in refs:
            members = [reference(p, "ensemble", num_classes) for p in update.ensemble]
            teachers.new = EnsembleMean(members, batched=ENSEMBLE_BATCHED[device.type])
    loss_fn = update.loss_fn if update is not None else plain_cross_entropy
    if getattr(loss_fn, "num_old", 0) is None:  # methods without teachers cannot infer C_old
        loss_fn.num_old = num_old
    if dist.is_main():
        prepare_output_dir(out_dir)

    # Only the trainable parameters: a frozen backbone gets neither updates nor weight decay.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    if args.lr_schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=LR_STEP_EPOCHS, gamma=0.1)
    else:
        # Annealed over this run's own length (the official code fixes T_max = 100).
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    loader = inputs.train_loader
    train_model = net
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)

    start_epoch, history = 0, []
    if state is not None:
        start_epoch, history = restore(state, model, optimizer, scheduler)
        state = None  # free its copy of the weights

    def score(split, pred, old_pred):
        targets = inputs.targets[split].numpy()
        if update is not None:
            return flip_metrics(targets, old_pred, pred, num_old)
        metrics = {"er_old": error_rate(pred[targets < num_old], targets[targets < num_old])}
        if role == "new":
            metrics["er_all"] = error_rate(pred, targets)
        return metrics

    def evaluate():
        """The test metrics, with the validation ones (same keys) nested under "val"; and the
        test predictions."""
        dist.broadcast_buffers(net)  # every rank scores its shard with rank 0's model
        pred = eval_logits(net).argmax(1).numpy()
        metrics = score("test", pred, old_test_pred)
        if "val" in inputs.targets:
            metrics["val"] = score("val", eval_logits(net, "val").argmax(1).numpy(), old_val_pred)
        return metrics, pred

    metrics, pred = (history[-1]["metrics"], None) if history else ({}, None)
    epochs = progress(range(start_epoch, args.epochs), desc=role, unit="epoch")
    for epoch in epochs:
        t0 = time.time()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        try:
            stats = train_one_epoch(train_model, loader, optimizer, loss_fn, teachers, epoch,
                                    amp=amp, log_every=args.log_every)
        except NonFiniteLoss as err:
            raise UserError(non_finite_message(err, out_dir, history, args.epochs, len(loader),
                                               getattr(loss_fn, "term_weight_flags", ()))) from None
        scheduler.step()
        metrics, pred = evaluate()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats,
                  "metrics": metrics, "seconds": round(time.time() - t0, 2)}
        history.append(record)
        if dist.is_main():
            save_state(out_dir, args, model, optimizer, scheduler, epoch, history)
            tqdm.write(summary_line(role, record, args.epochs))  # above the progress bars

    if pred is None:  # resumed after the last epoch: recompute the final predictions
        metrics, pred = evaluate()
    if dist.is_main():
        finish(out_dir, args, role, model, head, num_old, metrics, inputs.targets["test"], pred, old_test_pred)
    dist.barrier()
    return metrics


def plain_cross_entropy(logits, targets, epoch=0):
    """The loss of the old and new reference models."""
    return torch.nn.functional.cross_entropy(logits, targets)


def prepare_teacher(model, device, fold_bn: bool = False):
    """Inference-only copy on the device; channels-last on CUDA; with ``fold_bn``, BatchNorm
    folded into the convolutions."""
    model = model.eval().requires_grad_(False)
    if fold_bn:
        model = fold_batchnorm(model)
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def summary_line(role: str, record: dict, epochs: int) -> str:
    m = record["metrics"]
    parts = [f"[{role}] epoch {record['epoch'] + 1}/{epochs}", f"loss {record['loss']:.4f}"]
    parts += [f"{k} {m[k]:.2f}" for k in ("er_old", "er_all", "nfr", "rel_nfr") if k in m]
    return " | ".join(parts) + f" | {record['seconds']:.0f}s"


def save_state(out_dir: Path, args, model, optimizer, scheduler, epoch: int, history: list):
    """The resumable state after ``epoch``, written atomically, and the log rewritten from it."""
    atomic_save({"config": identity(args), "epoch": epoch, "model": unwrap(model).state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": rng_state(), "history": history}, out_dir / STATE_FILE)
    write_log(out_dir, history)


def write_log(out_dir: Path, history: list):
    tmp = out_dir / f".{LOG_FILE}.tmp"
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(tmp, out_dir / LOG_FILE)


def non_finite_message(err: NonFiniteLoss, out_dir: Path, history: list, epochs: int, steps: int,
                       weight_flags=()) -> str:
    """Where the loss broke down, which checkpoint is the last good one (epochs and steps
    counted from 1, as in the progress lines) and which flags to lower."""
    where = f"step {err.step + 1}/{steps}" if err.step is not None else "on another process"
    message = f"the training loss became non-finite in epoch {err.epoch + 1}/{epochs}, {where}; "
    if history:
        message += (f"the last good checkpoint is {out_dir / STATE_FILE} (after epoch "
                    f"{history[-1]['epoch'] + 1}/{epochs}); ")
    else:
        message += "no epoch had finished, so this run has no good checkpoint yet; "
    lower = "--lr" if not weight_flags else f"--lr or {' / '.join(weight_flags)}"
    message += f"nothing was overwritten. Lower {lower} or check the data and hyperparameters, "
    if "--lm-weight" in weight_flags:
        # Logit matching averages over classes: with few classes each logit's pull is larger.
        message += ("(the logit-matching terms average over the classes, so with few classes they "
                    "are stronger: on CIFAR-10 use about --lm-weight 0.04), ")
    return message + "and start the run again"


def read_state(out_dir: Path, args) -> dict:
    """The state saved after the last finished epoch, for --resume, once its settings are
    checked against the command's."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise UserError(f"--resume: no saved state in {out_dir}; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise UserError(f"--resume: {path} is unreadable ({type(err).__name__}); "
                        "delete it to start the run again") from None
    saved, current = state["config"], identity(args)
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise UserError(f"--resume: {out_dir} was run with other settings ({diffs}); "
                        "repeat the original command, or use another --output-dir")
    return state


def restore(state: dict, model, optimizer, scheduler):
    """Continue from a state of ``read_state``; returns (next epoch, history)."""
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["history"]


def final_checkpoint_path(args, out_dir: Path) -> Path:
    return Path(args.save) if args.save else out_dir / "checkpoint.pth"


def finish(out_dir: Path, args, role, model, head, num_old, metrics, test_targets, pred, old_test_pred):
    """Final files, written only after the run succeeded: the model checkpoint (--save),
    results.json and, for an update, predictions.npz."""
    save_path = final_checkpoint_path(args, out_dir)
    atomic_save(model_checkpoint(model, arch=args.arch, num_classes=head, embed_dim=args.embed_dim,
                                 dataset=args.dataset, num_old=num_old, role=role,
                                 epoch=args.epochs - 1, metrics=metrics, config=vars(args),
                                 inputs=input_spec(args)), save_path)
    if old_test_pred is not None:
        tmp = out_dir / ".predictions.npz.tmp"  # then renamed, like every final file
        with open(tmp, "wb") as f:
            np.savez(f, targets=test_targets.numpy().astype(np.int64),
                     old_pred=old_test_pred.astype(np.int64), pred=pred.astype(np.int64))
        os.replace(tmp, out_dir / "predictions.npz")
    write_json(out_dir / "results.json", {"role": role, **metrics, "checkpoint": str(save_path),
                                          "config": vars(args)})
