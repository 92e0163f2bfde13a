"""One training run, shared by the three scripts: data, model, teachers, the epoch loop,
per-epoch evaluation and logging, resumable state, and the final files."""
from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import build_model
from utils import distributed as dist
from utils.checkpoint import atomic_save, load_model, model_checkpoint, unwrap
from utils.cli import identity
from utils.data import Normalize, TrainLoader, eval_batches, load_dataset, num_old_classes
from utils.engine import EnsembleMean, Teachers, predict, train_one_epoch
from utils.errors import UserError
from utils.metrics import error_rate, flip_metrics

STATE_FILE = "state.pth"      # resumable state, rewritten after every epoch
LOG_FILE = "log.jsonl"        # one JSON record per epoch


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


def prepare_output_dir(path: Path):
    if path.exists() and not path.is_dir():
        raise UserError(f"--output-dir {path} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to --output-dir {path} ({err.strerror}); give a writable folder") from None


def write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(args, role: str, update: Update | None = None) -> dict:
    """Train a model for ``role`` ("old", "new" or "update") and write its files.
    Returns the final metrics."""
    device = setup_device(args)
    rank, world = dist.init(device)
    amp = args.precision == "bf16"
    out_dir = Path(args.output_dir)
    if dist.is_main():
        prepare_output_dir(out_dir)
    if args.resume and not (out_dir / STATE_FILE).is_file():
        raise UserError(f"--resume: no saved state in {out_dir}; start the run without --resume")

    # Data: the old model only ever sees the old classes.
    data = load_dataset(args.dataset, args.data_root)
    num_classes = data.num_classes
    num_old = num_old_classes(num_classes, args.old_fraction)
    train_set, test_set = data.train, data.test
    if role == "old":
        train_set, test_set = train_set.classes_below(num_old), test_set.classes_below(num_old)
    head = num_old if role == "old" else num_classes
    channels_last = device.type == "cuda"
    normalize = Normalize(channels_last=channels_last)
    train_set, test_set = train_set.to(device), test_set.to(device)
    if args.data_pipeline == "pil":
        from utils.pil_pipeline import pil_train_loader
        loader = pil_train_loader(train_set, args, device, normalize)
    else:
        loader = TrainLoader(train_set, args.batch_size, args.seed, normalize, rank=rank, world_size=world)
    test_shard = test_set if world == 1 else type(test_set)(test_set.images[rank::world], test_set.targets[rank::world])

    def test_logits(model):
        logits = predict(model, eval_batches(test_shard, args.eval_batch_size, normalize), amp)
        return dist.gather_rows(logits.to(device), len(test_set)).cpu()

    # Model: seeded, so that every run of the same command starts from the same weights.
    seed_everything(args.seed)
    model = build_model(args.arch, head, args.embed_dim).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    # Reference models: only those the method uses; the old model's test predictions once.
    teachers, old_test_pred = Teachers(), None
    if update is not None:
        refs = update.loss_fn.references
        old_model, _ = load_model(update.old_ckpt, "old", num_classes=num_old, dataset=args.dataset)
        old_model = prepare_teacher(old_model, device)
        old_test_pred = test_logits(old_model).argmax(1).numpy()
        if "old" in refs:
            teachers.old = old_model
        if "new" in refs:
            teachers.new = prepare_teacher(load_model(update.new_ckpt, "new", num_classes=num_classes,
                                                      dataset=args.dataset)[0], device)
        if "ensemble" in refs:
            members = [load_model(p, "ensemble", num_classes=num_classes, dataset=args.dataset)[0]
                       for p in update.ensemble]
            teachers.new = prepare_teacher(EnsembleMean(members), device)
    loss_fn = update.loss_fn if update is not None else plain_cross_entropy

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    # Annealed over this run's own length (the official code fixes T_max = 100).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        train_model = torch.compile(train_model)

    start_epoch, history = 0, []
    if args.resume:
        start_epoch, history = resume(out_dir, args, model, optimizer, scheduler)

    def evaluate():
        pred = test_logits(model).argmax(1).numpy()
        targets = test_set.targets.cpu().numpy()
        if update is not None:
            return flip_metrics(targets, old_test_pred, pred, num_old), pred
        metrics = {"er_old": error_rate(pred[targets < num_old], targets[targets < num_old])}
        if role == "new":
            metrics["er_all"] = error_rate(pred, targets)
        return metrics, pred

    metrics, pred = (history[-1]["metrics"], None) if history else ({}, None)
    for epoch in range(start_epoch, args.epochs):
        t0 = time.time()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        stats = train_one_epoch(train_model, loader, optimizer, loss_fn, teachers, epoch,
                                amp=amp, log_every=args.log_every)
        scheduler.step()
        metrics, pred = evaluate()
        record = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], **stats,
                  "metrics": metrics, "seconds": round(time.time() - t0, 2)}
        history.append(record)
        if dist.is_main():
            save_state(out_dir, args, model, optimizer, scheduler, epoch, history)
            print(summary_line(role, record, args.epochs), flush=True)

    if pred is None:  # resumed after the last epoch: recompute the final predictions
        metrics, pred = evaluate()
    if dist.is_main():
        finish(out_dir, args, role, model, head, num_old, metrics, test_set, pred, old_test_pred)
    dist.barrier()
    return metrics


def plain_cross_entropy(logits, targets, epoch=0):
    """The loss of the old and new reference models."""
    return torch.nn.functional.cross_entropy(logits, targets)


def prepare_teacher(model, device):
    """Inference-only copy on the device; channels-last on CUDA."""
    model = model.to(device).eval().requires_grad_(False)
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


def resume(out_dir: Path, args, model, optimizer, scheduler):
    """Restore the state saved after the last finished epoch; returns (next epoch, history)."""
    path = out_dir / STATE_FILE
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
    unwrap(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state["epoch"] + 1, state["history"]


def finish(out_dir: Path, args, role, model, head, num_old, metrics, test_set, pred, old_test_pred):
    """Final files, written only after the run succeeded: the model checkpoint (--save),
    results.json and, for an update, predictions.npz."""
    save_path = Path(args.save) if args.save else out_dir / "checkpoint.pth"
    atomic_save(model_checkpoint(model, arch=args.arch, num_classes=head, embed_dim=args.embed_dim,
                                 dataset=args.dataset, num_old=num_old, role=role,
                                 epoch=args.epochs - 1, metrics=metrics, config=vars(args)), save_path)
    if old_test_pred is not None:
        np.savez(out_dir / "predictions.npz", targets=test_set.targets.cpu().numpy().astype(np.int64),
                 old_pred=old_test_pred.astype(np.int64), pred=pred.astype(np.int64))
    write_json(out_dir / "results.json", {"role": role, **metrics, "checkpoint": str(save_path),
                                          "config": vars(args)})
