"""Run labels from a run's settings (results.json's "config"), without importing torch.

    <method>[-b<b>][-<hyperparameter><value> ...][-<setting>=<value> ...]-seed<seed>

e.g. ``MPT_KL-b4-seed42``: the method; b for the methods that take it, always (a sweep over b is
read by it); the method's other hyperparameters where they differ from its defaults (with the
data set's, as main.py sets them: ImageNet's b is 1.5); any other training setting in which the
runs at hand differ (``arch=resnet50``); the seed. The label without its seed names the run's
group: runs that differ only in the seed.

The methods' hyperparameters are their constructors' keyword arguments (methods/registry.py).
They are read here from the source of methods/ and utils/cli.py (``ast``), not imported: importing
the methods loads torch (seconds and about a GB) for a few numbers. tests/tools/test_flips.py
checks that they equal the registry's.
"""
from __future__ import annotations

import ast
import json
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
METHODS_DIR = REPO / "methods"
CLI = REPO / "utils" / "cli.py"
# Settings that say where files are, not what a run computes: a different old model shows in the
# old predictions, which every comparison checks.
LOCATIONS = {"data_root", "old_ckpt", "new_ckpt", "ensemble_dir"}


def _keywords(function: ast.FunctionDef) -> dict:
    """A constructor's keyword arguments but self and num_old, with their literal defaults."""
    args = function.args.args[1:]
    defaults = [None] * (len(args) - len(function.args.defaults)) + list(function.args.defaults)
    pairs = list(zip(args, defaults)) + list(zip(function.args.kwonlyargs, function.args.kw_defaults))
    return {a.arg: ast.literal_eval(d) for a, d in pairs if a.arg != "num_old" and d is not None}


@lru_cache(maxsize=None)
def declared_hyperparameters() -> dict[str, dict]:
    """{method: {hyperparameter: default}} of every ``@register("Name")`` class in methods/, the
    keywords of its own or its nearest base's ``__init__``."""
    classes = {}  # class name: (base names, keywords of its own __init__ or None, registered name)
    for path in sorted(METHODS_DIR.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            init = next((f for f in node.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
            registered = [d.args[0].value for d in node.decorator_list
                          if isinstance(d, ast.Call) and getattr(d.func, "id", None) == "register"]
            classes[node.name] = ([b.id for b in node.bases if isinstance(b, ast.Name)],
                                  _keywords(init) if init else None, registered[0] if registered else None)

    def keywords(name: str) -> dict:
        bases, own, _ = classes[name]
        if own is not None:
            return own
        return next((keywords(b) for b in bases if b in classes), {})

    return {registered: keywords(name) for name, (_, _, registered) in classes.items() if registered}


def _module_constant(path: Path, name: str):
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{path} defines no {name}")


@lru_cache(maxsize=None)
def dataset_defaults() -> dict:
    """utils/cli.py's DATASET_DEFAULTS: the flags whose default depends on the data set."""
    return _module_constant(CLI, "DATASET_DEFAULTS")


@lru_cache(maxsize=None)
def not_identity() -> frozenset:
    """utils/cli.py's NOT_IDENTITY: the flags that do not change what a run computes."""
    return frozenset(_module_constant(CLI, "NOT_IDENTITY"))


def method_defaults(method: str | None, dataset: str | None) -> dict:
    """The method's hyperparameters as main.py sets them when not given ({} if unknown)."""
    declared = declared_hyperparameters().get(method, {})
    by_dataset = dataset_defaults().get(dataset, {})
    return {k: by_dataset.get(k, v) for k, v in declared.items()}


def update_kind(results: dict) -> dict:
    """The kind of update a run belongs to, from results.json: {"old_fraction": the share of
    classes that are old (1.0: same classes), "old_data_fraction": the old model's share of the
    training images (below 1: data growth)}. Runs older than results.json's "setting" were all
    class-incremental, the old model trained on every image of its classes."""
    setting = results.get("setting") or {}
    config = results.get("config") or {}
    return {"old_fraction": float(setting.get("old_fraction", config.get("old_fraction", 0.5))),
            "old_data_fraction": float(setting.get("old_data_fraction", 1.0))}


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_part(method: str | None, config: dict, with_b: bool = True) -> list[str]:
    """The method and its hyperparameters as they enter the label: b always where the method takes
    it (unless not ``with_b``), the others where they differ from the method's defaults."""
    parts = [method or "?"]
    for name, default in method_defaults(method, config.get("dataset")).items():
        if name in config and ((name == "b" and with_b) or (name != "b" and config[name] != default)):
            parts.append(f"{name}{_value(config[name])}")
    return parts


def differing_settings(configs: list[dict]) -> list[str]:
    """The settings, other than the seed, the method, the methods' hyperparameters (each method's
    label shows its own) and those that do not change a run's result, in which ``configs``
    differ."""
    hyperparameters = set().union(*map(set, declared_hyperparameters().values()))
    skip = {"seed", "method"} | hyperparameters | not_identity() | LOCATIONS
    keys = sorted(set().union(*map(set, configs)) - skip)
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


class RunName(NamedTuple):
    label: str   # the run: MPT_KL-b4-seed42
    group: str   # its group, the label without the seed: MPT_KL-b4
    curve: str   # the group without b: the runs of one line of a sweep over b, MPT_KL


def labels(methods: list[str | None], configs: list[dict]) -> list[RunName]:
    """The names of the runs with these methods and configs; labels that would still coincide (a
    run given twice) get "#2", "#3" ..."""
    settings = differing_settings(configs)
    out, seen = [], {}
    for method, config in zip(methods, configs):
        other = [f"{k}={_value(config[k])}" for k in settings if k in config]
        group = "-".join(method_part(method, config) + other)
        curve = "-".join(method_part(method, config, with_b=False) + other)
        label = group + (f"-seed{config['seed']}" if config.get("seed") is not None else "")
        seen[label] = seen.get(label, 0) + 1
        out.append(RunName(label + (f"#{seen[label]}" if seen[label] > 1 else ""), group, curve))
    return out
