"""Train an updated model on all classes with a negative-flip mitigation method, evaluating
ER, NFR and Rel-NFR against the old model every epoch."""
from pathlib import Path

from methods import method_class
from utils.cli import (
    default_output_dir,
    method_record,
    parse,
    take_method_flags,
    update_parser,
    validate,
)
from utils.errors import UserError, exit_on_user_error
from utils.external import External
from utils.runner import Mitigation, run


def build_parser():
    return update_parser(__doc__)


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
    ignored_flags = take_method_flags(args)
    method = method_record(args)   # checked here; the runner builds it, knowing the old classes
    ensemble = ensemble_members(args) if "ensemble" in method_class(args.method).references else []
    b = getattr(args, "b", None)  # only the methods that take b have it
    name = f"{args.dataset}-{args.arch}-{args.method}{'' if b is None else f'-b{b:g}'}-seed{args.seed}"
    args.output_dir = args.output_dir or str(default_output_dir("update", args, name))
    # Reference models from outside: plain state_dicts, their head rows named by --*-classes.
    external = {role: External(getattr(args, f"{role}_arch"), getattr(args, f"{role}_classes"))
                for role in ("old", "new") if getattr(args, f"{role}_arch")}
    return run(args, "update", Mitigation(method, args.old_ckpt, args.new_ckpt, ensemble, args.save_logits,
                                          ignored_flags, external))


if __name__ == "__main__":
    main()
