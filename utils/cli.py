"""Command-line flags shared by the three scripts, YAML configs, and input validation."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch
import yaml

from methods import (
    HyperparameterError,
    all_hyperparameters,
    check_hyperparameters,
    declared_defaults,
    get_method,
    method_class,
    method_defaults,
    method_label,
    method_names,
    option,
)
from models import ARCHS
from models.zoo import TORCHVISION, arch_problem, vit_patch
from utils.device import PRECISIONS
from utils.errors import UserError, warn
from utils.image_files import DATASETS
from utils.settings import flag, run_settings

# Defaults that depend on the data set or the architecture, used where neither the command line
# nor --config sets the flag (a method's hyperparameters have their own: Method.dataset_defaults).
# ImageNet: the standard ResNet recipe (SGD lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 every
# 30 epochs, 90 epochs, batch 128) with the paper's 128-d embedding.
# A user's image folders (--dataset folder): the general recipe below (SGD lr 0.1, momentum 0.9,
# weight decay 5e-4, cosine over 100 epochs, batch 128, no embedding) at 224 pixels; none of
# ImageNet's (FOLDER_RECIPE: the text of --help; docs/own-model.md).
DATASET_DEFAULTS = {
    "imagenet": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "step",
                 "epochs": 90, "batch_size": 128, "embed_dim": 128, "image_size": 224},
    "folder": {"image_size": 224},
}
ARCH_DEFAULTS = {"vit_b_32": {"image_size": 224}}
FOLDER_RECIPE = ("folder: a user's images, DIR/train/<class>/ and DIR/val/<class>/ (or test/), any format "
                 "torchvision reads, classes in --classes order; its recipe: --image-size 224, random "
                 "resized crop and horizontal flip for training, resize to 256/224 of the size and centre "
                 "crop for scoring, ImageNet normalisation, and the general defaults (SGD lr 0.1, momentum "
                 "0.9, weight decay 5e-4, cosine over 100 epochs, batch 128, no embedding, MPT's b 4)")


def arch_defaults(arch: str) -> dict:
    """The defaults an architecture implies: a ViT's 224-pixel input."""
    return ARCH_DEFAULTS.get(arch) or ({"image_size": 224} if vit_patch(arch) else {})


# --workers' default never exceeds this: past it, more processes feed a GPU no faster.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Loader workers per training process: the CPUs this process may use (its affinity, e.g. a
    SLURM allocation), shared among the training processes of its node (torchrun's
    LOCAL_WORLD_SIZE), one kept for each training process itself; at least 1, at most
    MAX_DEFAULT_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_DEFAULT_WORKERS, per_process - 1))


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default in its help, but None (unset: the help text says what applies)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=_HelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of flag defaults; flags on the command line override it")
    p.add_argument("--dataset", default="cifar100", help=f"one of {', '.join(DATASETS)}; {FOLDER_RECIPE}")
    p.add_argument("--data-root", default="./data", metavar="DIR",
                   help="torchvision's CIFAR files (downloaded when absent) or folders train/<class>/*, "
                        "test/<class>/*; imagenet: folders train/<wnid>/*.JPEG, val/<wnid>/*.JPEG; folder: "
                        "train/<class>/*, val/<class>/* (or test/)")
    p.add_argument("--classes", metavar="FILE",
                   help="--dataset folder: the class names, one a line, in the order that gives their indices, "
                        "the old classes first (default: the sorted folder names)")
    p.add_argument("--arch", default="resnet18",
                   help=f"one of {', '.join(ARCHS)}, or {TORCHVISION}NAME: any torchvision classification model "
                        "(torchvision.models.get_model), its classifier replaced by a head of the run's classes")
    p.add_argument("--embed-dim", type=int, default=None,
                   help="linear embedding of this size before the classifier (imagenet: 128)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size in pixels: CIFAR images are resized to it, ImageNet and folder crops cut "
                        "at it (default: CIFAR's own 32; 224 for imagenet, folder and the ViTs)")
    p.add_argument("--pretrained", action="store_true",
                   help="start the backbone from torchvision's ImageNet-1k weights (the inputs then get "
                        "ImageNet's normalisation); an error where they cannot be loaded")
    p.add_argument("--allow-random-weights", action="store_true",
                   help="with --pretrained: go on with a RANDOM backbone where the weights cannot be loaded "
                        "(recorded as weights: null in results.json and the checkpoint)")
    p.add_argument("--freeze-backbone", action="store_true",
                   help="train only the classifier, on the frozen backbone's features of the unaugmented "
                        "images, computed once")
    p.add_argument("--old-fraction", type=float, default=0.5, help="the first round(F * C) classes are the old ones")
    p.add_argument("--epochs", type=int, default=100, help="(imagenet: 90)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4, help="(imagenet: 1e-4)")
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "step"],
                   help="cosine annealing over --epochs, or x0.1 every 30 epochs (imagenet: step)")
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                   help="hold out F of every class of the training set (chosen with --split-seed) and "
                        "report the metrics on it under \"val\" in log.jsonl and results.json; the "
                        "reference models must have been trained with the same F and --split-seed")
    p.add_argument("--split-seed", type=int, default=42,
                   help="chooses the --val-fraction hold-out; independent of --seed, so that runs over "
                        "several seeds, and the reference models, share one split")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="data-loader processes per training process (PIL pipeline and image folders); the "
                        "default is the CPUs this process may use shared among the node's training processes, "
                        f"one left for each of them, at most {MAX_DEFAULT_WORKERS}; on this machine")
    p.add_argument("--data-pipeline", default="tensor", choices=["tensor", "pil"],
                   help="tensor: data set on the device, batches augmented there; pil: the official per-image "
                        "DataLoader")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32: the official numerics (PyTorch's default TF32 settings); bf16: autocast of "
                        "the training forward passes (CUDA or CPU). Scoring is always fp32")
    p.add_argument("--fast", action="store_true",
                   help="cuDNN autotuning (non-deterministic); the default is the official deterministic mode")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="with several GPUs, BatchNorm normalises by each GPU's own share of the batch (faster; "
                        "timm's and DeiT's default) instead of the global batch's statistics (SyncBatchNorm: "
                        "one-GPU numerics, the default)")
    p.add_argument("--warmup-epochs", type=float, default=0.0, metavar="K",
                   help="raise the learning rate linearly, step by step, from 0 to its schedule's value over "
                        "the first K epochs (for a larger global batch with a scaled --lr)")
    p.add_argument("--dist-timeout", type=float, default=30.0, metavar="MINUTES",
                   help="under torchrun: how long a process waits for the others (start-up, a slow rank) "
                        "before the job fails")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--log-every", type=int, default=50, help="read the loss from the device every N steps")
    p.add_argument("--output-dir", metavar="DIR", help="run folder (default: runs/<role>/<settings>-<hash>)")
    p.add_argument("--save", metavar="PATH", help="where the trained model's checkpoint goes")
    p.add_argument("--save-every-steps", type=int, default=0, metavar="N",
                   help="also save the resumable state every N steps inside an epoch (0: after each epoch only), "
                        "so that a preempted run loses at most N steps")
    p.add_argument("--resume", nargs="?", const="yes", default="no", choices=["no", "yes", "auto"],
                   metavar="auto",
                   help="--resume: continue the run saved in --output-dir (an error where none is); "
                        "--resume auto: continue it where one is saved, start afresh where none is, and "
                        "exit 0 at once where the run has finished (a requeued job repeats its command)")
    return p


def add_method_flags(parser: argparse.ArgumentParser):
    """One flag per hyperparameter of the registered methods (see methods/registry.py), with the
    method's help text; its type is its default's. Every such flag's parsed default is None: not
    given, so that a flag given to a method that does not take it can be told (``take_method_flags``
    fills in the defaults)."""

    users: dict[str, list[str]] = {}
    for name in method_names():
        for param in declared_defaults(name):
            users.setdefault(param, []).append(name)
    known = {a.dest for a in parser._actions}
    group = parser.add_argument_group("method hyperparameters", "each flag reaches only the methods in its brackets")
    for param, names in users.items():
        if param in known:
            raise TypeError(f"hyperparameter {param!r} of {', '.join(names)} clashes with the script's "
                            f"own flag {flag(param)}; rename it")
        defaults = [declared_defaults(n)[param] for n in names]
        # The flag's type: its defaults' (an Option's own where a default is None: off).
        types = {type(d) if d is not None else option(n, param).type for n, d in zip(names, defaults)}
        types = {float} if types == {int, float} else types
        if len(types) > 1 or not types <= {int, float, str, bool}:
            raise TypeError(f"hyperparameter {param!r} of {', '.join(names)} needs defaults of one type, a "
                            "number, a string or a bool (the flag's type; a default None names its type in "
                            f"its Option), not {', '.join(sorted(getattr(t, '__name__', str(t)) for t in types))}")
        help_text = next((o.help for o in (option(n, param) for n in names) if o.help), "").replace("%", "%%")
        help_text += f" [{', '.join(names)}]"
        shown = defaults[0] if all(d == defaults[0] for d in defaults) else "each method's own"
        shown = "off" if shown is None else shown
        help_text += f" (default: {shown}"
        by_dataset = {dataset: d[param] for n in names for dataset, d in method_class(n).dataset_defaults.items()
                      if param in d}
        help_text += "".join(f"; {dataset}: {value}" for dataset, value in by_dataset.items())
        (flag_type,) = types
        if flag_type is bool:  # --tau-squared / --no-tau-squared
            group.add_argument(flag(param), action=argparse.BooleanOptionalAction, default=None,
                               help=help_text + ")")
        else:
            group.add_argument(flag(param), type=flag_type, default=None, help=help_text + ")")


def take_method_flags(args) -> dict:
    """Fill in ``args.method``'s hyperparameters left unset (the data set's default, else the
    method's own) and take the flags of the other methods off ``args``: they change nothing, so
    they are no part of the run's settings. Returns those flags with their values
    ({"--b": 2.0}), after a one-line warning naming them."""
    own = method_defaults(args.method, args.dataset)
    ignored = {}
    for param in all_hyperparameters():
        value = vars(args).pop(param, None)
        if param in own:
            setattr(args, param, own[param] if value is None else value)
        elif value is not None:
            ignored[flag(param)] = value
    if ignored:
        warn(f"--method {args.method} takes no {', '.join(ignored)}: ignored (not recorded in the run's "
             "settings, only under ignored_flags in results.json)")
    return ignored


def method_record(args) -> dict:
    """The update's method as results.json records it and the runner builds it: its name, its
    hyperparameters as ``take_method_flags`` left them on ``args`` (checked: a value out of range
    names its flag), their defaults on this data set and its label (``methods.method_label``), so
    that tables and run labels read them instead of the code."""
    values = {param: getattr(args, param) for param in declared_defaults(args.method)}
    try:
        check_hyperparameters(args.method, values)
    except HyperparameterError as err:
        raise UserError(f"{flag(err.param)} {err.problem}, got {err.value}") from None
    defaults = method_defaults(args.method, args.dataset)
    return {"name": args.method, "hyperparameters": values, "defaults": defaults,
            "label": method_label(args.method, values, defaults)}


def method_from_args(args, num_old: int | None = None):
    """The loss of ``args.method`` with its hyperparameters as ``take_method_flags`` left them."""
    record = method_record(args)
    return get_method(record["name"], num_old=num_old, **record["hyperparameters"])


def update_parser(description: str) -> argparse.ArgumentParser:
    """main.py's flags: the shared ones, the method and its reference models, and one flag per
    hyperparameter of the methods in methods/ (``add_method_flags``)."""
    p = base_parser(description)
    p.add_argument("--method", default="MPT_KL", help=f"one of {', '.join(method_names())}")
    p.add_argument("--old-ckpt", default="checkpoint/ckpt_old.pth",
                   help="old model (train_old_model.py), or with --old-arch and --old-classes a plain state_dict "
                        "of a model trained elsewhere")
    p.add_argument("--old-arch", metavar="ARCH",
                   help="--old-ckpt is a plain state_dict (torchvision's keys) of this architecture, e.g. "
                        f"{TORCHVISION}resnet18")
    p.add_argument("--old-classes", metavar="FILE",
                   help="the class names of the plain --old-ckpt's head rows, one a line in row order; they "
                        "must be this run's first (old) classes, in any order")
    p.add_argument("--new-ckpt", default="checkpoint/ckpt_new.pth",
                   help="new reference model (train_new_model.py), or with --new-arch and --new-classes a plain "
                        "state_dict of a model trained elsewhere")
    p.add_argument("--new-arch", metavar="ARCH", help="--new-ckpt is a plain state_dict of this architecture")
    p.add_argument("--new-classes", metavar="FILE",
                   help="the class names of the plain --new-ckpt's head rows, one a line in row order: every "
                        "class of the run, in any order")
    p.add_argument("--ensemble-dir", default="checkpoint/ensemble_models",
                   help="ELODI members ckpt_0.pth, ckpt_1.pth, ...")
    p.add_argument("--ensemble-size", type=int, default=8)
    p.add_argument("--save-logits", action="store_true",
                   help="store the test logits in predictions.npz for more than 100 classes too (up to 100 "
                        "they always are)")
    add_method_flags(p)  # --b, --alpha, ...: the hyperparameters of the methods in methods/
    return p


# A config's sections: the flags under one of these keys apply to that script only.
CONFIG_SECTIONS = {"old": "train_old_model.py", "new": "train_new_model.py", "update": "main.py"}


def parse(parser: argparse.ArgumentParser, argv=None, section: str | None = None) -> argparse.Namespace:
    """Parse with, in order of precedence: the command line, ``--config FILE`` (see
    ``load_config``), the defaults of the chosen data set and architecture (DATASET_DEFAULTS,
    ARCH_DEFAULTS), the parser's own. ``section`` is the calling script's config section (a key
    of CONFIG_SECTIONS)."""
    pre, _ = parser.parse_known_args(argv)
    config = load_config(parser, pre.config, section) if pre.config else {}
    parser.set_defaults(**config)
    pre, _ = parser.parse_known_args(argv)  # the data set and architecture, wherever they were set
    known = {a.dest for a in parser._actions}
    implied = {**DATASET_DEFAULTS.get(pre.dataset, {}), **arch_defaults(pre.arch)}
    parser.set_defaults(**{k: v for k, v in implied.items() if k in known and k not in config})
    args = parser.parse_args(argv)
    # The command as typed (recorded in results.json, never part of the run's identity).
    args.command = [CONFIG_SECTIONS.get(section, parser.prog), *(sys.argv[1:] if argv is None else map(str, argv))]
    return args


def load_config(parser, path, section: str | None = None) -> dict:
    """Flag defaults from a YAML mapping of flag names (``-`` or ``_``) to values.

    Top-level keys are shared: every script reads them, so they must be flags of every script.
    The mapping under ``old:``, ``new:`` or ``update:`` is read only by train_old_model.py,
    train_new_model.py or main.py (``section``) and overrides the shared keys; this is where
    main.py-only flags such as ``method`` and ``b`` go, and where the old and new models of a
    cross-architecture experiment get their own ``arch``. A script checks only its own section,
    so one file describes a whole experiment and a typo still fails in the script that reads it."""
    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as err:
        raise UserError(f"cannot read --config {path} ({err.strerror}); give an existing YAML file") from None
    except yaml.YAMLError as err:
        # YAML's own message spans several lines (with a drawing of the spot): keep one line.
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"--config {path} is not valid YAML ({getattr(err, 'problem', None) or err}"
                        f"{where}); fix the file") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--config {path} must be a YAML mapping of flag names to values")
    sections = {name: cfg.pop(name) or {} for name in CONFIG_SECTIONS if name in cfg}
    for name, values in sections.items():
        if not isinstance(values, dict):
            raise UserError(f"--config {path}: section {name}: must be a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    shared = _config_flags(cfg, actions, path, "")
    own = _config_flags(sections.get(section, {}), actions, path, f"{section}: ")
    return {**shared, **own}


def _config_flags(values: dict, actions: dict, path, where: str) -> dict:
    """Check the keys of one level of a config against the parser and convert the values as
    the command line would (so that ``epochs: 1.5`` fails here and not mid-run)."""
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        hint = "" if where else (f"; flags of one script only go under its section "
                                 f"({', '.join(f'{k}: for {v}' for k, v in CONFIG_SECTIONS.items())})")
        raise UserError(f"--config {path} sets unknown flags: {where}{', '.join(unknown)}{hint}")
    return {k: _config_value(actions[k], v, f"--config {path}: {where}{k}") for k, v in values.items()}


def _config_value(action, value, where: str):
    if action.nargs == 0:  # on/off switches such as --fast
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, (bool, list, dict)):
        raise UserError(f"{where} must be a single value, got {value!r}")
    try:
        value = (action.type or str)(str(value))
    except (TypeError, ValueError):
        raise UserError(f"{where}: invalid value {value!r}") from None
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def _require(ok: bool, message: str):
    if not ok:
        raise UserError(message)


def validate(args):
    """Reject values that would crash later or silently train nonsense."""
    _require(args.dataset in DATASETS, f"unknown data set {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    _require(arch_problem(args.arch) is None, str(arch_problem(args.arch)))
    for role in ("old", "new"):  # main.py's reference models from outside (utils/external.py)
        arch, classes = getattr(args, f"{role}_arch", None), getattr(args, f"{role}_classes", None)
        _require((arch is None) == (classes is None),
                 f"a {role} model from outside (a plain state_dict) needs both --{role}-arch and --{role}-classes")
        _require(arch is None or arch_problem(arch) is None, f"--{role}-arch: {arch_problem(arch or '')}")
    _require(getattr(args, "classes", None) is None or args.dataset == "folder",
             f"--classes orders the classes of image folders: give it with --dataset folder, not {args.dataset}")
    _require(args.epochs > 0, f"--epochs must be positive, got {args.epochs}")
    _require(args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}")
    _require(args.eval_batch_size > 0, f"--eval-batch-size must be positive, got {args.eval_batch_size}")
    _require(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive finite number, got {args.lr}")
    _require(math.isfinite(args.momentum) and 0 <= args.momentum < 1,
             f"--momentum must lie in [0, 1), got {args.momentum}")
    _require(math.isfinite(args.weight_decay) and args.weight_decay >= 0,
             f"--weight-decay must be a non-negative finite number, got {args.weight_decay}")
    _require(math.isfinite(args.val_fraction) and 0 <= args.val_fraction < 1,
             f"--val-fraction must lie in [0, 1), got {args.val_fraction}")
    _require(args.embed_dim is None or args.embed_dim > 0, f"--embed-dim must be positive, got {args.embed_dim}")
    _require(args.image_size is None or args.image_size > 0, f"--image-size must be positive, got {args.image_size}")
    if vit_patch(args.arch):
        patch = vit_patch(args.arch)
        _require(args.image_size is not None and args.image_size % patch == 0,
                 f"--arch {args.arch} needs an --image-size that is a multiple of its {patch}-pixel "
                 f"patches, got {args.image_size}")
    if args.arch.startswith("vit"):
        _require(not args.pretrained or args.image_size == 224,
                 f"the pretrained {args.arch} weights are for --image-size 224, got {args.image_size}")
    _require(args.data_pipeline == "tensor"
             or (args.dataset not in ("imagenet", "folder") and args.image_size is None and not args.pretrained),
             "--data-pipeline pil is the official 32-pixel CIFAR pipeline: it takes no --image-size or "
             "--pretrained, and imagenet and folder always read their folders through DataLoaders")
    _require(math.isfinite(args.old_fraction) and 0 < args.old_fraction <= 1,
             f"--old-fraction must lie in (0, 1], got {args.old_fraction}")
    if hasattr(args, "old_data_fraction"):  # train_old_model.py's flag
        _require(math.isfinite(args.old_data_fraction) and 0 < args.old_data_fraction <= 1,
                 f"--old-data-fraction must lie in (0, 1], got {args.old_data_fraction}")
    _require(args.log_every > 0, f"--log-every must be positive, got {args.log_every}")
    _require(args.workers >= 0, f"--workers must be >= 0, got {args.workers}")
    _require(args.save_every_steps >= 0, f"--save-every-steps must be >= 0, got {args.save_every_steps}")
    _require(math.isfinite(args.warmup_epochs) and 0 <= args.warmup_epochs <= args.epochs,
             f"--warmup-epochs must lie in [0, --epochs {args.epochs}], got {args.warmup_epochs}")
    _require(math.isfinite(args.dist_timeout) and args.dist_timeout > 0,
             f"--dist-timeout must be a positive number of minutes, got {args.dist_timeout}")
    if "method" in vars(args):  # main.py's own flags
        _require(args.method in method_names(),
                 f"unknown method {args.method!r}; choose one of: {', '.join(method_names())}")
        _require(args.ensemble_size > 0, f"--ensemble-size must be positive, got {args.ensemble_size}")
        equivalent = method_class(args.method).same_classes_equivalent
        _require(not (args.old_fraction == 1 and equivalent),
                 f"{args.method} acts on the new classes only, and with --old-fraction 1.0 every class is old: "
                 f"it would train exactly as {equivalent}; use --method {equivalent}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")


def default_output_dir(role: str, args, name: str) -> Path:
    """runs/<role>/<readable name>-<hash of all settings>: distinct settings never share files."""
    digest = hashlib.sha1(json.dumps(run_settings(args), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / role / f"{name.replace(':', '-')}-{digest}"  # torchvision:NAME: no colon in a path
