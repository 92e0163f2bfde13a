"""Score a trained model against an old model on a data set, without training (like DeiT's
``--eval``): writes the same results.json and predictions.npz as main.py into --output-dir.

    python -m tools.evaluate --old-ckpt OLD.pth --ckpt MODEL.pth --output-dir DIR
        [--data-root DIR] [--dataset NAME] [--device cpu|cuda] [--save-logits] ...

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

from utils.checkpoint import load_model, old_model_setting, read_checkpoint
from utils.cli import base_parser, validate
from utils.data import input_spec
from utils.device import setup_device
from utils.engine import prepare_teacher
from utils.errors import exit_on_user_error
from utils.evaluation import Scorer
from utils.outputs import prepare_output_dir, results_record, write_json, write_predictions
from utils.provenance import code_version
from utils.runner import load_data

# The settings that decide which images are scored and how they are fed: taken from MODEL's
# checkpoint unless given on the command line.
DATA_SETTINGS = ("dataset", "data_root", "old_fraction", "val_fraction", "split_seed", "image_size",
                 "pretrained", "data_pipeline")


def build_parser():
    shared = base_parser(__doc__)  # the scripts' data and device flags, with their help
    p = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--old-ckpt", required=True, help="the old model's checkpoint (train_old_model.py)")
    p.add_argument("--ckpt", required=True, help="the model to score: updated, new reference or ensemble member")
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
    trained = read_checkpoint(given["ckpt"], "trained").get("config") or {}
    args = vars(shared.parse_args([]))
    args.update({k: trained[k] for k in DATA_SETTINGS if k in trained})
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
    header = read_checkpoint(args.ckpt, "trained")
    load = dict(dataset=args.dataset, inputs=input_spec(args))
    old, old_ckpt = load_model(args.old_ckpt, "old", num_classes=data.num_old, num_old=data.num_old, **load)
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
                         setting={"old_fraction": args.old_fraction, "arch": ckpt["arch"],
                                  **old_model_setting(old_ckpt)}, device=args.device,
                         made_by={"code": code_version(), "command": ["tools.evaluate", *command]}),
        "evaluated": {"role": ckpt.get("role"), "old_checkpoint": args.old_ckpt, "flags": given,
                      "trained_by": {k: ckpt.get(k) for k in ("code", "command")}}})
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'predictions.npz'}")
    return scores.metrics


if __name__ == "__main__":
    main()
