"""Reference models from outside this repository: a plain ``state_dict`` of a torchvision model
trained elsewhere (``torch.save(model.state_dict(), FILE)``), its classifier's rows in its own
class order.

    main.py --old-ckpt FILE --old-arch ARCH --old-classes NAMES   (and --new-ckpt/-arch/-classes)

``NAMES`` lists the class of each head row, one a line. The rows are put in the run's class
order (``--classes``; the old model's classes must be the run's first ones), the keys mapped
onto this repository's models (``models.zoo.from_torchvision_state_dict``), and the model is then
run exactly as the plain torchvision model would be, on the inputs the run feeds (see
docs/own-model.md for the preprocessing). ``reference_record`` says where each reference came
from, for results.json.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import build_model
from models.zoo import TORCHVISION, from_torchvision_state_dict
from utils.checkpoint import FORMAT, file_digest
from utils.errors import UserError, listing
from utils.image_files import class_list

# A file written by a wrapper: DataParallel / DistributedDataParallel ("module.") or torch.compile
# ("_orig_mod.") prefix every key.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


# The flags that name a model from outside, by role: the old and new reference models of main.py,
# and the model tools.evaluate scores.
FLAGS = {"old": ("--old-ckpt", "--old-arch", "--old-classes"),
         "new": ("--new-ckpt", "--new-arch", "--new-classes"),
         "scored": ("--ckpt", "--arch", "--ckpt-classes")}
NAMES = {"old": "old model", "new": "new reference model", "scored": "scored model"}


@dataclass
class External:
    """A reference model from outside: its architecture and the file naming its head rows."""
    arch: str
    classes: str


def read_state_dict(path, role: str) -> dict:
    """The tensors of a plain ``state_dict`` file, read with ``weights_only`` (a file from
    elsewhere runs no code); one wrapped as {"state_dict": ...} or {"model": ...}, or with the
    keys of a DataParallel or compiled model, is unwrapped."""
    path = Path(path)
    flag, arch_flag, classes_flag = FLAGS[role]
    if not path.is_file():
        raise UserError(f"{flag} {path} not found; give the state_dict file of the {NAMES[role]}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{flag} {path} is not a plain state_dict ({first}); save the model's weights alone with "
                        "torch.save(model.state_dict(), FILE)") from None
    if isinstance(state, dict) and state.get("format") == FORMAT:
        raise UserError(f"{flag} {path} is a checkpoint of this repository, which names its own architecture "
                        f"and classes: give it without {arch_flag} and {classes_flag}")
    if isinstance(state, dict) and not _tensors(state):
        inner = [k for k in ("state_dict", "model") if isinstance(state.get(k), dict) and _tensors(state[k])]
        if inner:
            state = state[inner[0]]
    if not isinstance(state, dict) or not state or not _tensors(state):
        raise UserError(f"{flag} {path} holds no state_dict (a mapping of parameter names to tensors); save the "
                        "model's weights with torch.save(model.state_dict(), FILE)")
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _tensors(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def head_order(names: list, run_classes: list, rows: int, role: str, classes_file, hint: str = "") -> list:
    """For each of the run's first ``rows`` classes, the head row of the external model that holds
    it (``names``: the class of each row). A name the data does not hold, or a class set other
    than the run's first ``rows`` classes, is refused in one line (``hint``: how the run decides
    its number of old classes)."""
    flag = f"{FLAGS[role][2]} {classes_file}"
    unknown = [n for n in names if n not in run_classes]
    if unknown:
        raise UserError(f"{flag} names {len(unknown)} class(es) that the data does not hold: "
                        f"{listing(unknown)}; the data's classes are "
                        f"{listing(run_classes, 20)}")
    expected = run_classes[:rows]
    if role != "old":
        missing = [c for c in expected if c not in names]
        if missing:
            raise UserError(f"{flag} names {len(names)} classes but the {NAMES[role]} must know all "
                            f"{len(run_classes)} classes of the run; it lacks {', '.join(missing[:10])}")
        return [names.index(c) for c in expected]
    if len(names) != rows:
        raise UserError(f"{flag} names {len(names)} classes but this run has {rows} old classes{hint}; the old "
                        f"model's head must have one row for each old class (--old-fraction "
                        f"{len(names) / len(run_classes):.6g} makes the first {len(names)} of the "
                        f"{len(run_classes)} classes old)")
    later = [n for n in names if n not in expected]
    if later:
        raise UserError(f"the old model's classes must be this run's first {rows} classes "
                        f"({listing(expected)}), in any order, but "
                        f"{', '.join(later[:10])} of {flag} come later in the run's class order; list the old "
                        "model's classes first in --classes")
    return [names.index(c) for c in expected]


def load_external(path, role: str, source: External, run_classes: list, rows: int,
                  image_size: int | None = None, hint: str = "") -> tuple[nn.Module, dict]:
    """The model of ``role`` ("old", "new" or "scored": a key of FLAGS) from the plain state_dict
    at ``path``, its head rows in the run's class order (its first ``rows`` classes), in eval mode;
    and its record for results.json (``reference_record``)."""
    ckpt_flag, _, classes_flag = FLAGS[role]
    names = class_list(source.classes, classes_flag)
    order = head_order(names, list(run_classes), rows, role, source.classes, hint)
    state = read_state_dict(path, role)
    try:
        model = build_model(source.arch, rows, None, image_size=image_size)
    except (AssertionError, ValueError) as err:  # e.g. a ViT at an --image-size that is no multiple of its patch
        raise UserError(f"{FLAGS[role][1]} {source.arch} cannot be built for this run's inputs "
                        f"(--image-size {image_size}): {err}") from None
    mapped = from_torchvision_state_dict(model, state)
    weight = mapped.get("fc.weight")
    if weight is not None and weight.ndim == 2 and len(weight) != len(names):
        raise UserError(f"{ckpt_flag} {path} has a classifier of {len(weight)} rows ({model.torchvision_head}.weight) "
                        f"but {classes_flag} {source.classes} names {len(names)} classes: one name a row")
    index = torch.tensor(order)
    for key in ("fc.weight", "fc.bias"):
        if key in mapped and len(mapped[key]) == len(names):
            mapped[key] = mapped[key][index]
    _check_keys(model, mapped, path, role, source.arch)
    model.load_state_dict(mapped)
    record = {"source": "state_dict", "path": str(path), "sha256": file_digest(path), "arch": source.arch,
              "classes_file": str(source.classes), "head_classes": names}
    if role == "old":
        record["old_data"] = None  # the images it was trained on are unknown here: its file identifies it
    return model.eval().requires_grad_(False), record


def _check_keys(model: nn.Module, mapped: dict, path, role: str, arch: str):
    """One line naming what does not fit, where the state_dict is not one of ``arch``."""
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    plain = {"backbone.": "", "fc.": model.torchvision_head + ".", "embed.": "embed."}

    def file_key(key):  # a key as the file names it
        return next((plain[p] + key[len(p):] for p in plain if key.startswith(p)), key)

    def named(keys):
        return ", ".join(map(file_key, keys[:3]))

    shapes = [f"{file_key(k)} {tuple(mapped[k].shape)} for {tuple(own[k].shape)}" for k in own
              if k in mapped and mapped[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return

    parts = [f"{len(missing)} missing (e.g. {named(missing)})" if missing else "",
             f"{len(unexpected)} unexpected (e.g. {named(unexpected)})" if unexpected else "",
             f"{len(shapes)} of another shape (e.g. {', '.join(shapes[:2])})" if shapes else ""]
    name = arch[len(TORCHVISION):] if arch.startswith(TORCHVISION) else arch
    ckpt_flag, arch_flag, _ = FLAGS[role]
    raise UserError(f"{ckpt_flag} {path} does not fit {arch_flag} {arch}: keys {'; '.join(p for p in parts if p)}; "
                    f"give the state_dict of torchvision's {name} with only its classifier resized "
                    f"({model.torchvision_head} = nn.Linear(in_features, number of classes))")
