"""Score a trained model against an old model on a data set, without training (like DeiT's
``--eval``): writes the same results.json and predictions.npz as main.py into --output-dir.

    python -m tools.evaluate --old-ckpt OLD.pth --ckpt MODEL.pth --output-dir DIR
        [--data-root DIR] [--dataset NAME] [--device cpu|cuda] [--save-logits] ...
        [--old-arch ARCH --old-classes FILE]   (OLD.pth a plain state_dict trained elsewhere)
        [--arch ARCH --ckpt-classes FILE]      (MODEL.pth a plain state_dict trained elsewhere)

MODEL may be an updated model (main.py), a new reference model or an ELODI ensemble member
(train_new_model.py). The data set, class split, validation split and input settings default to
those MODEL was trained with (its checkpoint's settings); a flag given here overrides them.
Predictions are plain fp32, as every score of this repository.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from utils.checkpoint import load_model, old_model_setting, read_checkpoint, reference_record
from utils.cli import base_parser, validate
from utils.data import input_spec
from utils.device import setup_device
from utils.engine import prepare_teacher
from utils.errors import UserError, exit_on_user_error
from utils.evaluation import Scorer
from utils.external import External, load_external
from utils.outputs import prepare_output_dir, results_record, write_json, write_predictions
from utils.provenance import code_version
from utils.runner import experiment_setting, load_data

# The settings that decide which images are scored and how they are fed: taken from MODEL's
# checkpoint unless given on the command line.
DATA_SETTINGS = ("dataset", "data_root", "classes", "old_fraction", "val_fraction", "split_seed", "image_size",
                 "pretrained", "data_pipeline")


def build_parser():
    shared = base_parser(__doc__)  # the scripts' data and device flags, with their help
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-ckpt", required=True,
                   help="the old model's checkpoint (train_old_model.py), or with --old-arch and --old-classes a "
                        "plain state_dict of a model trained elsewhere")
    p.add_argument("--old-arch", metavar="ARCH", default=argparse.SUPPRESS,
                   help="--old-ckpt is a plain state_dict of this architecture")
    p.add_argument("--old-classes", metavar="FILE", default=argparse.SUPPRESS,
                   help="the class names of the plain --old-ckpt's head rows, one a line in row order")
    p.add_argument("--ckpt", required=True,
                   help="the model to score: updated, new reference or ensemble member, or with --arch and "
                        "--ckpt-classes a plain state_dict of a model trained elsewhere")
    p.add_argument("--arch", metavar="ARCH", default=argparse.SUPPRESS,
                   help="--ckpt is a plain state_dict of this architecture (e.g. torchvision:resnet18); the data "
                        "settings then come from this command's flags alone")
    p.add_argument("--ckpt-classes", metavar="FILE", default=argparse.SUPPRESS,
                   help="the class names of the plain --ckpt's head rows, one a line in row order (every class)")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="where results.json and predictions.npz go")
    p.add_argument("--save-logits", action="store_true", help="store the test logits for more than 100 classes too")
    wanted = {*DATA_SETTINGS, "device", "workers", "eval_batch_size"}
    for action in shared._actions:
        if action.dest in wanted:
            kwargs = {"help": action.help, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_true"
            else:
                kwargs.update(type=action.type, choices=action.choices, metavar=action.metavar)
            p.add_argument(*action.option_strings, **kwargs)
    return p, shared


def settings(argv) -> tuple[SimpleNamespace, dict]:
    """(The flags of this command over MODEL's own settings over the scripts' defaults, the flags
    given on the command line)."""
    parser, shared = build_parser()
    given = vars(parser.parse_args(argv))
    if ("arch" in given) != ("ckpt_classes" in given):
        raise UserError("a plain state_dict to score needs both --arch and --ckpt-classes")
    # A plain state_dict (--arch) records no settings: the data flags are this command's.
    trained = {} if "arch" in given else read_checkpoint(given["ckpt"], "trained").get("config") or {}
    args = vars(shared.parse_args([]))
    args.update({k: trained[k] for k in DATA_SETTINGS if k in trained})
    args.update(old_arch=None, old_classes=None)
    args.update(given)
    return SimpleNamespace(**args), given


@exit_on_user_error
def main(argv=None) -> dict:
    command = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args, given = settings(argv)
    validate(args)
    device = setup_device(args.device)
    data = load_data(args, "update")
    inputs = data.dataset.inputs(args, device)
    load = dict(dataset=args.dataset, inputs=input_spec(args), classes=data.classes)
    if args.old_arch:  # a plain state_dict of an old model trained elsewhere
        old, old_record = load_external(args.old_ckpt, "old", External(args.old_arch, args.old_classes),
                                        data.classes, data.num_old, image_size=args.image_size,
                                        hint=f" (--old-fraction {args.old_fraction:g} of its {data.num_classes})")
        old_setting = old_model_setting(None, old_record)
    else:
        old, old_ckpt = load_model(args.old_ckpt, "old", num_classes=data.num_old, num_old=data.num_old, **load)
        old_setting, old_record = old_model_setting(old_ckpt), reference_record(args.old_ckpt, old_ckpt)
    if "arch" in given:  # a plain state_dict of a model trained elsewhere
        model, record = load_external(args.ckpt, "scored", External(args.arch, args.ckpt_classes), data.classes,
                                      data.num_classes, image_size=args.image_size)
        ckpt = {"arch": args.arch, "role": None, "config": {"arch": args.arch}, "weights": None, "source": record}
    else:
        header = read_checkpoint(args.ckpt, "trained")
        model, ckpt = load_model(args.ckpt, header.get("role", "update"), num_classes=data.num_classes,
                                 num_old=data.num_old, **load)
    with torch.no_grad():
        scores = Scorer(inputs, "update", data.num_old, device, prepare_teacher(old, device))(
            prepare_teacher(model, device))
    out_dir = Path(args.output_dir)
    prepare_output_dir(out_dir)
    write_predictions(out_dir / "predictions.npz", inputs.targets["test"], scores, data.num_old, args.save_logits)
    # The settings MODEL was trained with (seed, lr, epochs...: the row of tools.tables it
    # belongs to), not this command's defaults; this command's own flags are recorded apart.
    config = {"old_ckpt": args.old_ckpt, **{k: getattr(args, k) for k in DATA_SETTINGS},
              **(ckpt.get("config") or {})}
    write_json(out_dir / "results.json", {
        **results_record("update", scores.metrics, args.ckpt, data, ckpt.get("weights"), config,
                         setting=experiment_setting(args.old_fraction, ckpt["arch"], old_setting),
                         device=args.device, references={"old": old_record},
                         made_by={"code": code_version(), "command": ["tools.evaluate", *command]}),
        "evaluated": {"role": ckpt.get("role"), "old_checkpoint": args.old_ckpt, "flags": given,
                      "trained_by": {k: ckpt.get(k) for k in ("code", "command")},
                      **({"source": ckpt["source"]} if "source" in ckpt else {})}})
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'predictions.npz'}")
    return scores.metrics


if __name__ == "__main__":
    main()
