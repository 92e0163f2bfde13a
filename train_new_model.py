"""Train the new reference model on all classes; with --seed S --save PATH, an ELODI ensemble member."""
from utils.cli import base_parser, default_output_dir, parse, validate
from utils.errors import exit_on_user_error
from utils.runner import run


def build_parser():
    p = base_parser(__doc__)
    p.set_defaults(save="checkpoint/ckpt_new.pth")
    return p


@exit_on_user_error
def main(argv=None):
    args = parse(build_parser(), argv, section="new")
    validate(args)
    name = f"{args.dataset}-{args.arch}-seed{args.seed}"
    args.output_dir = args.output_dir or str(default_output_dir("new", args, name))
    return run(args, "new")


if __name__ == "__main__":
    main()
