"""Run labels and provenance marks from what a run's results.json records, without importing torch.

    <method>[-b<b>][-<hyperparameter><value> ...][-<setting>=<value> ...]-seed<seed>

e.g. ``MPT_KL-b4-seed42``. The method part is results.json's ``"method"`` record (written by
main.py, utils/cli.py ``method_record``): its ``"label"``, the method's name with b always where
the method takes it (a sweep over b is read by it) and its other hyperparameters where they differ
from the defaults it records (those of the method on the run's data set: ImageNet's b is 1.5).
Then any other training setting in which the runs at hand differ (``arch=resnet50``), and the
seed. The label without its seed names the run's group: runs that differ only in the seed.

Records older than the ``"method"`` record name the method from ``config["method"]``; b is shown
where the config has one and the method's name says that it takes it (MPT's variants other than
the ``_nobias`` ones); any other hyperparameter that differs between the runs shows as a differing
setting (``lm_weight=0.04``).

Provenance: results.json's ``"code"`` ({"commit": 40 hex digits, "dirty": whether tracked files
differed from it}, or null where the code was not a git checkout; absent in older records).
``code_marks`` names the commits of a set of runs with letters and marks the runs of a changed
(dirty) tree ("*") or of unknown code ("?"), for the tables and the flip analysis to show where
the runs were not all made by the same code state; a footnote says what the marks mean, or the
state that all the runs share.
"""
from __future__ import annotations

import json
from typing import NamedTuple

from utils.settings import NOT_IDENTITY

# Settings that say where files are, not what a run computes: a different old model shows in the
# old predictions, which every comparison checks.
LOCATIONS = {"data_root", "old_ckpt", "new_ckpt", "ensemble_dir"}


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


NO_BIAS = "_nobias"


def sweep_point(method: str | None, b: float | None) -> tuple[str, float] | None:
    """Where a run lies in a sweep over the margin bias: (the method whose curve it is on, b), or
    None for a method without b. An ablation without the bias is its method's point at b = 0
    (cross-entropy with a bias of 0 is plain cross-entropy): MPT_KL_nobias is MPT_KL at b = 0."""
    if b is not None:
        return method, b
    if method and method.endswith(NO_BIAS):
        return method.removesuffix(NO_BIAS), 0.0
    return None


def name_takes_b(method: str | None) -> bool:
    """For records without a "method" record: whether the method's name says that it takes the
    margin bias b (MPT_KL, MPT_LM, MPT_nodistillation; not the _nobias ablations)."""
    return bool(method) and method.startswith("MPT") and not method.endswith(NO_BIAS)


class MethodRecord(NamedTuple):
    name: str | None         # the method, None where the record names none
    hyperparameters: dict    # as run ({} where unknown)
    defaults: dict           # the method's defaults on the run's data set ({} where unknown)
    recorded: bool           # from results.json's "method" record (False: read from the config)

    @property
    def b(self) -> float | None:
        """The margin bias the run trained with, None for a method that takes none."""
        value = self.hyperparameters.get("b")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def sweep(self) -> tuple[str, float] | None:
        """The run's point in a sweep over b (``sweep_point``)."""
        return sweep_point(self.name, self.b)

    def parts(self, with_b: bool = True) -> list[str]:
        """The method and its hyperparameters as they enter a label: b always where the method
        takes it (unless not ``with_b``), the others where they differ from the defaults."""
        return [self.name or "?"] + [f"{k}{_value(v)}" for k, v in self.hyperparameters.items()
                                     if (k == "b" and with_b) or (k != "b" and v != self.defaults.get(k))]


def run_method(results: dict) -> MethodRecord:
    """The method of an update's results.json: its "method" record, or for older records the
    config's method with b where the name says it takes it (see the module's docstring)."""
    record = results.get("method")
    if isinstance(record, dict) and record.get("name"):
        return MethodRecord(record["name"], dict(record.get("hyperparameters") or {}),
                            dict(record.get("defaults") or {}), True)
    config = results.get("config") or {}
    # A results.json of other code may name the method at its top level (a string).
    name = config.get("method", record if isinstance(record, str) else None)
    b = {"b": config["b"]} if name_takes_b(name) and config.get("b") is not None else {}
    return MethodRecord(name, b, {}, False)


def differing_settings(configs: list[dict]) -> list[str]:
    """The settings, other than the seed, the method, b and those that do not change a run's
    result, in which ``configs`` differ: two configs that hold a setting hold different values.
    A setting some configs lack (another method's hyperparameter in a record older than its
    "method", a flag newer than a record) tells nothing apart."""
    skip = {"seed", "method", "b"} | set(NOT_IDENTITY) | LOCATIONS
    keys = sorted(set().union(*map(set, configs)) - skip)
    return [k for k in keys if len({json.dumps(c[k], sort_keys=True) for c in configs if k in c}) > 1]


class RunName(NamedTuple):
    label: str   # the run: MPT_KL-b4-seed42
    group: str   # its group, the label without the seed: MPT_KL-b4
    curve: str   # the group without b: the runs of one line of a sweep over b, MPT_KL (also of
                 # MPT_KL_nobias, its point at b = 0: sweep_point)


def labels(records: list[dict], fixed: list[str | None] | None = None) -> list[RunName]:
    """The names of the runs of these results.json records (their config with the kind of update,
    ``update_kind``, is what differs between them). A run with a ``fixed`` name (a folder that
    holds predictions alone) is named by it, its own group and curve, and takes no part in
    choosing the settings shown. Labels that would still coincide (a run given twice) get "#2",
    "#3" ..."""
    fixed = fixed or [None] * len(records)
    configs = [{**(r.get("config") or {}), **update_kind(r)} for r in records]
    settings = differing_settings([c for c, name in zip(configs, fixed) if name is None] or [{}])
    out, seen = [], {}
    for record, config, name in zip(records, configs, fixed):
        if name is not None:
            group = curve = label = name
        else:
            method = run_method(record)
            # the run's own hyperparameters are in its method part already
            other = [f"{k}={_value(config[k])}" for k in settings
                     if k in config and k not in method.hyperparameters]
            group = record["method"]["label"] if method.recorded and record["method"].get("label") else \
                "-".join(method.parts())
            group = "-".join([group, *other])
            curve_parts = method.parts(with_b=False)
            if method.sweep:  # the _nobias ablations lie on their method's curve
                curve_parts[0] = method.sweep[0]
            curve = "-".join(curve_parts + other)
            label = group + (f"-seed{config['seed']}" if config.get("seed") is not None else "")
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label += f"#{seen[label]}"
            if name is not None:   # a run of its own: its group is itself
                group = curve = label
        out.append(RunName(label, group, curve))
    return out


# ---------------------------------------------------------------------------------------------
# Provenance
# ---------------------------------------------------------------------------------------------
UNKNOWN_CODE = "?"
DIRTY = "*"
SHORT_COMMIT = 12


class Code(NamedTuple):
    commit: str | None   # 40 hex digits, None where unknown
    dirty: bool          # made by a working tree whose tracked files differed from the commit


def run_code(results: dict | None) -> Code:
    """The code that made a run, from results.json's "code" (null or absent: unknown)."""
    code = (results or {}).get("code")
    if isinstance(code, dict) and isinstance(code.get("commit"), str) and code["commit"]:
        return Code(code["commit"], bool(code.get("dirty")))
    return Code(None, False)


class CodeMarks(NamedTuple):
    letters: dict        # {commit: "a", ...}, in the order first seen
    shown: bool          # whether runs need marks: not all made by the same code state

    def mark(self, codes) -> str:
        """The cell of a row (or run) of these ``codes``: the letters of its commits, each with
        "*" where a run of it was dirty, and "?" where the code of a run is unknown."""
        out = []
        for commit, letter in self.letters.items():
            mine = [c for c in codes if c.commit == commit]
            if mine:
                out.append(letter + (DIRTY if any(c.dirty for c in mine) else ""))
        if any(c.commit is None for c in codes):
            out.append(UNKNOWN_CODE)
        return ", ".join(out)

    def footnote(self, codes) -> str:
        """One line on the code of ``codes``: what the letters and marks mean where they are
        shown, else the code state that every run shares."""
        codes = list(codes)
        if not codes:
            return ""
        unknown = ("code not recorded (a results.json older than its \"code\", or a run made outside a git "
                   "checkout)")
        if not self.shown:
            commit, dirty = codes[0]
            if commit is None:
                return f"Code: {unknown}, for every run."
            return (f"Code: every run made by commit {commit[:SHORT_COMMIT]}"
                    + (", from a working tree with changes to its tracked files (dirty): the runs' code "
                       "may differ" if dirty else "") + ".")
        parts = [f"{letter} = commit {commit[:SHORT_COMMIT]}" for commit, letter in self.letters.items()]
        if any(c.dirty for c in codes):
            parts.append(f"{DIRTY} = from a working tree with changes to that commit's tracked files (dirty)")
        if any(c.commit is None for c in codes):
            parts.append(f"{UNKNOWN_CODE} = {unknown}")
        return "Code: " + "; ".join(parts) + "."


def code_marks(codes) -> CodeMarks:
    """Letters for the commits of ``codes`` (``run_code`` of each run) and whether the runs need
    marks: they differ in commit, in being dirty or in being known (all runs of one state get a
    footnote alone: a column of one mark would tell nothing more)."""
    codes = list(codes)
    letters = {}
    for c in codes:
        if c.commit is not None and c.commit not in letters:
            letters[c.commit] = _letter(len(letters))
    return CodeMarks(letters, len(set(codes)) > 1)


def _letter(i: int) -> str:
    """a, b, ..., z, aa, ab, ..."""
    word = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        word = chr(ord("a") + r) + word
    return word
