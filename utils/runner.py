"""One training run, shared by the three scripts, as a short sequence of named steps:

    load_data -> build_trained_model -> dataset.inputs -> load_references -> fit (scoring every epoch) -> write_outputs

Each step is a function with explicit inputs and outputs; ``run`` calls them in order. The
device and precision policy is utils/device.py, the scoring utils/evaluation.py, the resumable
state utils/state.py, the files utils/outputs.py.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from methods import get_method, method_class
from models import build_model as build_architecture
from models.zoo import ArchitectureError, WeightsUnavailable, fetch_command
from utils import distributed as dist
from utils.checkpoint import (
    atomic_save,
    load_model,
    model_checkpoint,
    old_model_setting,
    reference_record,
    remove_stale_temporaries,
)
from utils.data import (
    fetch_dataset,
    input_spec,
    load_dataset,
    num_old_classes,
    old_data_subset,
    validation_split,
)
from utils.device import folds_teachers, prefers_channels_last, setup_device
from utils.engine import NonFiniteLoss, Teachers, build_teachers, min_share, prepare_teacher, progress, train_one_epoch
from utils.errors import UserError, warn
from utils.evaluation import Scorer, Scores
from utils.external import load_external
from utils.features import cache_features, head_on
from utils.inputs import Dataset
from utils.outputs import (
    PREDICTIONS_FILE,
    RESULTS_FILE,
    check_writable,
    checkpoint_path,
    prepare_output_dir,
    results_record,
    write_json,
    write_predictions,
)
from utils.provenance import code_version
from utils.settings import flag
from utils.state import LOG_FILE, STATE_FILE, read_state, restore, save_state, seed_everything

LR_STEP_EPOCHS = 30           # --lr-schedule step: x0.1 every 30 epochs (the ImageNet recipe)
# --freeze-backbone without pretrained weights: every run draws the same random backbone (as
# every run would load the same pretrained one), so reference heads fit this run's features.
FROZEN_BACKBONE_SEED = 0
# A reference model whose logits reach this size on a training batch is the likely cause of a
# non-finite loss (eval-mode logits of a model trained for only a few steps can be huge).
HUGE_LOGIT = 1e3


@dataclass
class Mitigation:
    """What ``main.py`` adds to a plain training run: the negative-flip mitigation method and the
    checkpoints of its reference models."""
    method: dict       # name, hyperparameters, defaults and label (utils.cli.method_record)
    old_ckpt: str
    new_ckpt: str | None = None
    ensemble: list = field(default_factory=list)
    save_logits: bool = False
    ignored_flags: dict = field(default_factory=dict)  # flags of other methods given to this run
    # Reference models from outside ("old", "new"): plain state_dicts (utils/external.py)
    external: dict = field(default_factory=dict)


@dataclass
class RunData:
    """The data of one run: the splits its model trains and is scored on, and the class split."""
    dataset: Dataset
    num_classes: int     # C, all classes of the data set
    num_old: int         # C_old, the first classes
    classes: list        # the names of all C classes
    head_size: int       # the trained model's number of outputs: C_old for the old model, else C
    holdout: dict        # the record of the validation images it is trained without (validation_split)
    old_data: dict | None = None  # the old model's share of the training images (old_data_subset)


@dataclass
class References:
    """An update's reference models: the old one as scored (plain, unfolded) and the teachers
    as run during training."""
    old_model: nn.Module
    teachers: Teachers
    old_setting: dict    # what the old model was: its architecture and share of the training images
    records: dict = field(default_factory=dict)  # where each reference came from (results.json's "references")


def run(args, role: str, mitigation: Mitigation | None = None) -> dict:
    """Train a model for ``role`` ("old", "new" or "update") and write its files. Returns the
    final metrics. Under torchrun every rank runs this; rank 0 alone writes."""
    try:
        device = setup_device(args.device, args.fast)
        rank, world = dist.init(device, args.dist_timeout)
        out_dir = Path(args.output_dir)
        # Every input is checked and read before the first write (the output folder is created
        # after the reference models are loaded), so that a failing command leaves an existing
        # run folder and --save file exactly as they were.
        check_writable(out_dir, "--output-dir", folder=True)
        check_writable(checkpoint_path(args, out_dir), "--save", folder=False)
        state = read_state(out_dir, args, required=args.resume == "yes") if args.resume != "no" else None
        if args.resume == "auto" and finished(out_dir, checkpoint_path(args, out_dir), state, args.epochs):
            if dist.is_main():
                print(f"{out_dir} holds a finished run ({RESULTS_FILE}); nothing to do", flush=True)
            return json.loads((out_dir / RESULTS_FILE).read_text())
        data = load_data(args, role)
        model = build_trained_model(args, data.head_size, device, world)
        trainable = model.head() if args.freeze_backbone else model   # what the optimizer updates
        inputs = data.dataset.inputs(args, device, rank, world, min_share(trainable))
        if args.freeze_backbone:  # the head trains on the frozen backbone's features, cached once
            inputs = cache_features(inputs, model.backbone, args, device)
        refs = load_references(args, mitigation, data, model, device) if mitigation else None
        scorer = Scorer(inputs, role, data.num_old, device, refs.old_model if refs else None)
        if dist.is_main():
            prepare_output_dir(out_dir)
            for path in (*(out_dir / name for name in (STATE_FILE, LOG_FILE, RESULTS_FILE, PREDICTIONS_FILE)),
                         checkpoint_path(args, out_dir)):
                remove_stale_temporaries(path)  # of a save that a killed run left
        method = mitigation.method if mitigation else {"name": "No_Treatment", "hyperparameters": {}}  # plain CE
        loss_fn = get_method(method["name"], num_old=data.num_old, **method["hyperparameters"])
        scores = fit(args, role, model, trainable, inputs, loss_fn, refs.teachers if refs else Teachers(),
                     scorer, out_dir, device, world, state)
        if dist.is_main():
            write_outputs(args, role, out_dir, model, data, inputs.targets["test"], scores, mitigation,
                          run_setting(args, role, data, refs), refs.records if refs else None)
        dist.barrier()
        return scores.metrics
    finally:
        dist.shutdown()  # on errors too: no rank leaves with its process group open


def finished(out_dir: Path, checkpoint: Path, state: dict | None, epochs: int) -> bool:
    """Whether ``out_dir`` holds a finished run: its results.json (written last) and its model's
    checkpoint (without it the run has to be made again), and no saved state of an unfinished
    epoch."""
    return ((out_dir / RESULTS_FILE).is_file() and checkpoint.is_file()
            and (state is None or state["epoch"] == epochs - 1))


def load_data(args, role: str) -> RunData:
    """The data set, less the --val-fraction hold-out (chosen on the whole training set, so that
    every model of an experiment holds out the same images); the old model sees only the old
    classes and, with --old-data-fraction, only that share of their remaining training images."""
    # Only a download waits behind the first process; data already in place is read by every
    # process at once.
    dist.once_per_node(lambda: fetch_dataset(args.dataset, args.data_root))
    data = load_dataset(args.dataset, args.data_root, download=False, classes=getattr(args, "classes", None))
    classes, num_classes = list(data.classes), data.num_classes
    num_old = num_old_classes(num_classes, args.old_fraction)
    held, holdout = validation_split(data.train.targets, args.val_fraction, args.split_seed)
    index = torch.arange(len(data.train))  # the training samples' indices into the whole set
    if len(held):
        index = index[~torch.isin(index, held)]
        data = data.holdout(held)
    if role != "old":
        return RunData(data, num_classes, num_old, classes, num_classes, holdout)
    index = index[data.train.targets < num_old]
    data = data.classes_below(num_old)
    chosen, old_data = old_data_subset(data.train.targets, index, args.old_data_fraction, args.split_seed,
                                       classes=data.classes)
    if len(chosen) < len(data.train):
        data = data.train_subset(chosen)
    return RunData(data, num_classes, num_old, classes, num_old, holdout, old_data)


def build_trained_model(args, head_size: int, device: torch.device, world: int) -> nn.Module:
    """The model to train, seeded so that every run of the same command starts from the same
    weights; with --freeze-backbone, only its head is drawn from --seed."""
    def build(pretrained: bool):
        seed_everything(FROZEN_BACKBONE_SEED if args.freeze_backbone else args.seed)
        return build_architecture(args.arch, head_size, args.embed_dim, image_size=args.image_size,
                                  pretrained=pretrained)

    try:
        with dist.main_first():  # rank 0 downloads any pretrained weights, the others read its copy
            model = build(args.pretrained)
    except WeightsUnavailable as err:
        if not args.allow_random_weights:
            raise UserError(f"{err}; fetch them ahead of time on a machine with network access "
                            f"({fetch_command(args.arch)}) and copy $TORCH_HOME/hub/checkpoints here, "
                            "or pass --allow-random-weights to go on with a random backbone knowingly") from None
        warn(f"{err}; the backbone starts from RANDOM weights (--allow-random-weights)")
        model = build(pretrained=False)
    except ArchitectureError as err:
        raise UserError(f"--arch {args.arch}: {err}") from None
    if args.freeze_backbone:
        if model.weights is None:
            warn(f"--freeze-backbone without pretrained weights: the frozen {args.arch} backbone has RANDOM weights")
        seed_everything(args.seed)
        model.reset_head()
        model.backbone.requires_grad_(False)
    model = model.to(device)
    if world > 1 and device.type == "cuda" and args.sync_bn:
        # BatchNorm statistics over the global batch, as in one process (needs NCCL/CUDA).
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if prefers_channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def check_holdout(ckpt: dict, path: str, holdout: dict):
    """A reference model must not have seen this run's validation images: it was trained with the
    same --val-fraction and --split-seed (the same held-out images)."""
    if holdout["val_fraction"] == 0:
        return
    theirs = ckpt.get("split") or {"val_fraction": 0.0}
    if theirs == holdout:
        return
    flags = f"--val-fraction {holdout['val_fraction']:g} --split-seed {holdout['split_seed']}"
    seen = ("it was trained on the whole training set, these images included" if theirs["val_fraction"] == 0
            else f"it held out another split (--val-fraction {theirs['val_fraction']:g} --split-seed "
                 f"{theirs.get('split_seed')}), so it trained on some of these images")
    raise UserError(f"{path} cannot be scored against this run's validation split: {seen}; "
                    f"train it again with {flags}, or run without --val-fraction")


def load_references(args, mitigation: Mitigation, data: RunData, model: nn.Module,
                    device: torch.device) -> References:
    """The old model (scored as it is) and the teachers the method uses, prepared for training
    (utils.device.folds_teachers). With --freeze-backbone they run as heads on the cached features."""
    def load(path, role, classes, num_old=None):
        """The prepared reference model, its checkpoint (None for a plain state_dict) and its record."""
        if role in mitigation.external:  # a plain state_dict of a model trained elsewhere
            hint = f" (--old-fraction {args.old_fraction:g} of its {data.num_classes})"
            ref, record = load_external(path, role, mitigation.external[role], data.classes, classes,
                                        image_size=args.image_size, hint=hint)
            if data.holdout["val_fraction"]:
                warn(f"--{role}-ckpt {path} comes from outside: whether it saw this run's --val-fraction "
                     "images cannot be checked")
            ckpt = None
        else:
            ref, ckpt = load_model(path, role, num_classes=classes, num_old=num_old, dataset=args.dataset,
                                   inputs=input_spec(args), classes=data.classes)
            check_holdout(ckpt, path, data.holdout)
            record = reference_record(path, ckpt)
        ref = prepare_teacher(head_on(ref, model.backbone, path) if args.freeze_backbone else ref, device)
        return ref, ckpt, record

    uses = method_class(mitigation.method["name"]).references
    old, old_ckpt, old_record = load(mitigation.old_ckpt, "old", data.num_old, data.num_old)
    records = {"old": old_record}
    new = None
    if "new" in uses:
        new, _, records["new"] = load(mitigation.new_ckpt, "new", data.num_classes)
    members = []
    if "ensemble" in uses:
        loaded = [load(p, "ensemble", data.num_classes) for p in mitigation.ensemble]
        members, records["ensemble"] = [m for m, _, _ in loaded], [r for _, _, r in loaded]
    teachers = build_teachers(uses, folds_teachers(device, args.precision), old, new, members)
    return References(old, teachers, old_model_setting(old_ckpt, old_record), records)


def fit(args, role: str, model, trainable, inputs, loss_fn, teachers: Teachers, scorer: Scorer,
        out_dir: Path, device: torch.device, world: int, state: dict | None = None) -> Scores:
    """Train ``trainable`` (``model``, or its head on cached features; ``stepped``: it as the steps
    run it, under DDP and torch.compile) for the remaining epochs of --epochs, scoring it and
    saving the resumable state after each; returns the last epoch's scores."""
    # Only the trainable parameters: a frozen backbone gets neither updates nor weight decay.
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    if args.lr_schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=LR_STEP_EPOCHS, gamma=0.1)
    else:
        # Annealed over this run's own length (the official code fixes T_max = 100).
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    stepped = trainable
    if world > 1:
        stepped = torch.nn.parallel.DistributedDataParallel(
            trainable, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        stepped = torch.compile(stepped)
    start_epoch, history, in_epoch = 0, [], None
    if state is not None:
        start_epoch, history, in_epoch = restore(state, device, model, optimizer, scheduler)
    loader, scores = inputs.train_loader, None
    steps = len(loader)
    dropped = loader.plan.dropped
    if dropped and dist.is_main():
        print(f"note: the last {dropped} of the {loader.plan.n} training samples of every epoch (different "
              f"ones each epoch) are left out: {loader.plan.n} mod --batch-size {args.batch_size} leaves too few "
              f"for {world} process(es) x {loader.plan.min_share} sample(s) each", file=sys.stderr, flush=True)
    for epoch in progress(range(start_epoch, args.epochs), desc=role, unit="epoch"):
        t0 = time.time()
        # A state saved inside this epoch (--save-every-steps): its batches are a function of
        # (seed, epoch), so the epoch continues at the step after the saved one.
        first_step, snapshot = (in_epoch["step"] + 1, in_epoch["sums"]) if in_epoch else (0, None)
        in_epoch = None
        loader.set_epoch(epoch, first_step)

        def save_inside(step, sums, epoch=epoch):
            if dist.is_main():
                save_state(out_dir, args, device, model, optimizer, scheduler, epoch - 1, history,
                           in_epoch={"epoch": epoch, "step": step, "sums": sums})

        try:
            stats = train_one_epoch(stepped, loader, optimizer, loss_fn, teachers, epoch,
                                    precision=args.precision, log_every=args.log_every,
                                    lr_scale=warmup(args.warmup_epochs, epoch, steps), first_step=first_step,
                                    snapshot=snapshot, save_every=args.save_every_steps, save=save_inside)
        except NonFiniteLoss as err:
            raise UserError(non_finite_message(err, out_dir, history, args, len(loader), loss_fn,
                                               scorer.inputs.targets["test"])) from None
        lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trained with
        scheduler.step()
        scores = scorer(trainable)
        record = {"epoch": epoch, "lr": lr, **stats,
                  **({"dropped": dropped} if dropped else {}),
                  "metrics": scores.metrics, "seconds": round(time.time() - t0, 2)}
        history.append(record)
        if dist.is_main():
            save_state(out_dir, args, device, model, optimizer, scheduler, epoch, history)
            tqdm.write(summary_line(role, record, args.epochs))  # above the progress bars
    return scores if scores is not None else scorer(trainable)  # resumed after the last epoch


def warmup(epochs: float, epoch: int, steps: int):
    """--warmup-epochs: the learning rate's factor in each step of ``epoch`` (``steps`` a
    epoch), rising linearly from 1 / (epochs * steps) to 1 over the first ``epochs`` epochs;
    None where the epoch has no warm-up."""
    if epoch >= epochs:
        return None
    return lambda step: min(1.0, (epoch * steps + step + 1) / (epochs * steps))


def summary_line(role: str, record: dict, epochs: int) -> str:
    m = record["metrics"]
    parts = [f"[{role}] epoch {record['epoch'] + 1}/{epochs}", f"loss {record['loss']:.4f}"]
    parts += [f"{k} {m[k]:.2f}" for k in ("er_old", "er_all", "nfr", "rel_nfr") if k in m]
    return " | ".join(parts) + f" | {record['seconds']:.0f}s"


def non_finite_message(err: NonFiniteLoss, out_dir: Path, history: list, args, steps: int, loss_fn,
                       test_targets) -> str:
    """Where the loss broke down, the facts of the failing batch (each term's value, the
    reference models' largest |logit|), the last good checkpoint (epochs and steps counted from
    1, as in the progress lines) and advice that fits those facts."""
    where = f"step {err.step + 1}/{steps}" if err.step is not None else "on another process"
    message = f"the training loss became non-finite in epoch {err.epoch + 1}/{args.epochs}, {where}"
    if err.terms:
        message += f" (terms on that batch: {', '.join(f'{k} {v:.4g}' for k, v in err.terms.items())})"
    message += "; "
    if history:
        message += (f"the last good checkpoint is {out_dir / STATE_FILE} (after epoch "
                    f"{history[-1]['epoch'] + 1}/{args.epochs}); nothing was overwritten. ")
    else:
        message += "no epoch had finished, so this run has no good checkpoint yet. "
    huge = {k: v for k, v in err.teacher_max.items() if not abs(v) < HUGE_LOGIT}
    if huge:
        names = ", ".join(f"the {k} reference model's logits reach |z| = {v:.3g}" for k, v in huge.items())
        return message + (f"The teachers' logits blew up first: {names} on that batch. Reference models "
                          "trained for only a few steps have huge eval-mode logits (BatchNorm running "
                          "statistics of a few batches): train them longer, then start the run again")
    weights = [flag(w) for w in loss_fn.term_weights]
    message += f"Lower --lr{''.join(f' or {w}' for w in weights)}, or check the data and hyperparameters"
    num_classes = int(test_targets.max()) + 1 if len(test_targets) else 0
    if "--lm-weight" in weights and num_classes <= 20:
        # Logit matching averages over classes: with few classes each logit's pull is larger.
        message += (f" (the logit-matching terms average over the classes, so with {num_classes} classes "
                    "they are strong: on CIFAR-10 about --lm-weight 0.04 matches CIFAR-100's 0.4)")
    return message + ", and start the run again"


def experiment_setting(old_fraction: float, arch: str, old_setting: dict | None = None) -> dict:
    """The kind of experiment a run belongs to, so that tables never put runs of different kinds
    in one row: the share of classes that are old (1.0: a same-class update), the architectures
    (an architecture upgrade) and the old model's share of the training images (data growth;
    ``old_setting``: utils.checkpoint.old_model_setting)."""
    return {"old_fraction": old_fraction, "arch": arch, **(old_setting or {})}


def run_setting(args, role: str, data: RunData, refs: References | None) -> dict:
    """``experiment_setting`` of a training run: an old model is its own old model."""
    if role == "old":
        return experiment_setting(args.old_fraction, args.arch, {"old_arch": args.arch,
                                  "old_data_fraction": data.old_data["old_data_fraction"]})
    return experiment_setting(args.old_fraction, args.arch, refs.old_setting if refs else None)


def write_outputs(args, role: str, out_dir: Path, model, data: RunData, test_targets, scores: Scores,
                  mitigation: Mitigation | None, setting: dict, references: dict | None = None):
    """The final files, written only after the run succeeded: the model checkpoint (--save),
    results.json and, for an update, predictions.npz."""
    save_path = checkpoint_path(args, out_dir)
    config = {k: v for k, v in vars(args).items() if k != "command"}
    made_by = {"code": code_version(), "command": args.command}
    atomic_save(model_checkpoint(model, arch=args.arch, num_classes=data.head_size, embed_dim=args.embed_dim,
                                 dataset=args.dataset, num_old=data.num_old, role=role,
                                 epoch=args.epochs - 1, metrics=scores.metrics, config=config,
                                 inputs=input_spec(args), split=data.holdout, weights=model.weights,
                                 old_data=data.old_data, made_by=made_by, classes=data.classes[:data.head_size]),
                save_path)
    if mitigation is not None:
        write_predictions(out_dir / PREDICTIONS_FILE, test_targets, scores, data.num_old, mitigation.save_logits)
    write_json(out_dir / RESULTS_FILE,
               results_record(role, scores.metrics, save_path, data, model.weights, config, setting,
                              ignored_flags=mitigation.ignored_flags if mitigation else None,
                              method=mitigation.method if mitigation else None, made_by=made_by,
                              references=references))
