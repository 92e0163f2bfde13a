"""Train the old model: the first --old-fraction of the classes (the data set's own order)."""
from utils.cli import base_parser, default_output_dir, parse, validate
from utils.errors import exit_on_user_error
from utils.runner import run


def build_parser():
    p = base_parser(__doc__)
    p.set_defaults(save="checkpoint/ckpt_old.pth")
    p.add_argument("--old-data-fraction", type=float, default=1.0, metavar="F",
                   help="train on F of every old class's training images (a data-growth update: the new "
                        "models train on all), chosen per class with --split-seed and recorded: a class of n "
                        "images keeps n - round((1 - F) * n) of them, and a fraction that keeps none of some "
                        "class is refused")
    return p


def old_model_name(args) -> str:
    data = "" if args.old_data_fraction == 1 else f"-data{args.old_data_fraction:g}"
    classes = "" if args.old_fraction == 0.5 else f"-old{args.old_fraction:g}"
    return f"{args.dataset}-{args.arch}{classes}{data}-seed{args.seed}"


@exit_on_user_error
def main(argv=None):
    args = parse(build_parser(), argv, section="old")
    validate(args)
    args.output_dir = args.output_dir or str(default_output_dir("old", args, old_model_name(args)))
    return run(args, "old")


if __name__ == "__main__":
    main()
