"""Command-line flags shared by the three scripts, YAML configs, and input validation."""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import torch

from models import ARCHS
from utils.data import DATASETS
from utils.errors import UserError

# Flags that do not change what a run computes: left out of the run's identity (its default
# folder name and the --resume check).
NOT_IDENTITY = {"config", "output_dir", "device", "workers", "resume", "log_every", "save",
                "eval_batch_size"}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of flag defaults; flags on the command line override it")
    p.add_argument("--dataset", default="cifar100", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--data-root", default="./data", metavar="DIR",
                   help="torchvision's CIFAR files (downloaded when absent) or folders train/<class>/*, test/<class>/*")
    p.add_argument("--arch", default="resnet18", help=f"one of {', '.join(ARCHS)}")
    p.add_argument("--embed-dim", type=int, default=None, help="linear embedding of this size before the classifier")
    p.add_argument("--old-fraction", type=float, default=0.5, help="the first round(F * C) classes are the old ones")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128, help="global batch size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--workers", type=int, default=4, help="data-loader processes (PIL pipeline only)")
    p.add_argument("--data-pipeline", default="tensor", choices=["tensor", "pil"],
                   help="tensor: data set on the device, batches augmented there; pil: the official per-image DataLoader")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"],
                   help="bf16 autocast on CUDA (ignored on the CPU); fp32 for bit-faithful runs")
    p.add_argument("--fast", action="store_true",
                   help="cuDNN autotuning (non-deterministic); the default is the official deterministic mode")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--log-every", type=int, default=50, help="read the loss from the device every N steps")
    p.add_argument("--output-dir", metavar="DIR", help="run folder (default: runs/<role>/<settings>-<hash>)")
    p.add_argument("--save", metavar="PATH", help="where the trained model's checkpoint goes")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --output-dir")
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse with the defaults of ``--config FILE`` (a YAML mapping of flag names) applied first."""
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        parser.set_defaults(**load_config(parser, pre.config))
    return parser.parse_args(argv)


def load_config(parser, path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read --config {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"--config {path} must be a YAML mapping of flag names to values")
    known = {a.dest for a in parser._actions}
    cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise UserError(f"--config {path} sets unknown flags: {', '.join(unknown)}")
    return cfg


def _require(ok: bool, message: str):
    if not ok:
        raise UserError(message)


def validate(args):
    """Reject values that would crash later or silently train nonsense."""
    _require(args.dataset in DATASETS, f"unknown data set {args.dataset!r}; choose one of: {', '.join(DATASETS)}")
    _require(args.arch in ARCHS, f"unknown architecture {args.arch!r}; choose one of: {', '.join(ARCHS)}")
    _require(args.epochs > 0, f"--epochs must be positive, got {args.epochs}")
    _require(args.batch_size > 0, f"--batch-size must be positive, got {args.batch_size}")
    _require(args.eval_batch_size > 0, f"--eval-batch-size must be positive, got {args.eval_batch_size}")
    _require(math.isfinite(args.lr) and args.lr > 0, f"--lr must be a positive finite number, got {args.lr}")
    _require(math.isfinite(args.momentum) and 0 <= args.momentum < 1, f"--momentum must lie in [0, 1), got {args.momentum}")
    _require(math.isfinite(args.weight_decay) and args.weight_decay >= 0,
             f"--weight-decay must be a non-negative finite number, got {args.weight_decay}")
    _require(0 < args.old_fraction < 1, f"--old-fraction must lie in (0, 1), got {args.old_fraction}")
    _require(args.embed_dim is None or args.embed_dim > 0, f"--embed-dim must be positive, got {args.embed_dim}")
    _require(args.log_every > 0, f"--log-every must be positive, got {args.log_every}")
    _require(args.workers >= 0, f"--workers must be >= 0, got {args.workers}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")


def identity(args) -> dict:
    """The settings that define what a run computes."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in NOT_IDENTITY}


def default_output_dir(role: str, args, name: str) -> Path:
    """runs/<role>/<readable name>-<hash of all settings>: distinct settings never share files."""
    digest = hashlib.sha1(json.dumps(identity(args), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return Path("runs") / role / f"{name}-{digest}"
