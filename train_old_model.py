"""Train the old model: the first --old-fraction of the classes (the data set's own order)."""
from utils.cli import base_parser, default_output_dir, parse, validate
from utils.errors import exit_on_user_error
from utils.runner import run


def build_parser():
    p = base_parser(__doc__)
    p.set_defaults(save="checkpoint/ckpt_old.pth")
    return p


@exit_on_user_error
def main(argv=None):
    args = parse(build_parser(), argv, section="old")
    validate(args)
    args.output_dir = args.output_dir or str(default_output_dir("old", args, f"{args.dataset}-{args.arch}-seed{args.seed}"))
    return run(args, "old")


if __name__ == "__main__":
    main()
