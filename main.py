"""Train an updated model on all classes with a negative-flip mitigation method, evaluating
ER, NFR and Rel-NFR against the old model every epoch."""
import math
from pathlib import Path

from methods import get_method, hyperparameters, method_names
from utils.cli import base_parser, default_output_dir, parse, validate
from utils.errors import UserError, exit_on_user_error
from utils.runner import Update, run


def build_parser():
    p = base_parser(__doc__)
    p.add_argument("--method", default="MPT_KL", help=f"one of {', '.join(method_names())}")
    p.add_argument("--b", type=float, default=4.0, help="MPT margin bias on the new-class logits (training only; imagenet: 1.5)")
    p.add_argument("--old-ckpt", default="checkpoint/ckpt_old.pth", help="old model (train_old_model.py)")
    p.add_argument("--new-ckpt", default="checkpoint/ckpt_new.pth", help="new reference model (train_new_model.py)")
    p.add_argument("--ensemble-dir", default="checkpoint/ensemble_models", help="ELODI members ckpt_0.pth, ckpt_1.pth, ...")
    p.add_argument("--ensemble-size", type=int, default=8)
    p.add_argument("--topk", type=int, default=10, help="ELODI_topk: logits kept per reference")
    p.add_argument("--alpha", type=float, default=1.0, help="focal distillation: weight of every sample")
    p.add_argument("--beta", type=float, default=5.0, help="focal distillation: extra weight where the reference is right")
    p.add_argument("--tau", type=float, default=5.0, help="KL distillation temperature")
    p.add_argument("--lm-weight", type=float, default=0.4, help="weight of each logit-matching distillation term")
    p.add_argument("--elodi-old-weight", type=float, default=0.6)
    p.add_argument("--elodi-ensemble-weight", type=float, default=0.4)
    p.add_argument("--elodi-warmup", type=int, default=6, help="ELODI terms start at this 0-based epoch")
    return p


# Keyword argument of the method classes -> main.py flag (as an attribute of the parsed args).
METHOD_FLAGS = {"b": "b", "alpha": "alpha", "beta": "beta", "tau": "tau", "lm_weight": "lm_weight",
                "topk": "topk", "old_weight": "elodi_old_weight",
                "ensemble_weight": "elodi_ensemble_weight", "warmup_epochs": "elodi_warmup"}


def method_flags(method: str) -> list:
    """The flags whose values reach ``method``'s loss."""
    return [flag for param, flag in METHOD_FLAGS.items() if param in hyperparameters(method)]


def validate_method(args):
    if args.method not in method_names():
        raise UserError(f"unknown method {args.method!r}; choose one of: {', '.join(method_names())}")
    for flag in ("b", "alpha", "beta", "tau", "lm_weight", "elodi_old_weight", "elodi_ensemble_weight"):
        value = getattr(args, flag)
        if not math.isfinite(value):
            raise UserError(f"--{flag.replace('_', '-')} must be finite, got {value}")
    for flag in ("alpha", "beta", "lm_weight", "elodi_old_weight", "elodi_ensemble_weight", "elodi_warmup"):
        if getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    for flag in ("tau", "ensemble_size", "topk"):
        if getattr(args, flag) <= 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")


def ensemble_members(args) -> list:
    paths = [Path(args.ensemble_dir) / f"ckpt_{i}.pth" for i in range(args.ensemble_size)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"ELODI needs {args.ensemble_size} ensemble members but {', '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} missing; train each with "
                        f"train_new_model.py --seed I --save {args.ensemble_dir}/ckpt_I.pth")
    return [str(p) for p in paths]


@exit_on_user_error
def main(argv=None):
    args = parse(build_parser(), argv, section="update")
    validate(args)
    validate_method(args)
    loss_fn = get_method(args.method, **{p: getattr(args, flag) for p, flag in METHOD_FLAGS.items()})
    ensemble = ensemble_members(args) if "ensemble" in loss_fn.references else []
    name = f"{args.dataset}-{args.arch}-{args.method}-b{args.b:g}-seed{args.seed}"
    args.output_dir = args.output_dir or str(default_output_dir("update", args, name))
    return run(args, "update", Update(loss_fn, args.old_ckpt, args.new_ckpt, ensemble))


if __name__ == "__main__":
    main()
