"""Finished runs read back from their results.json files and grouped into the paper's tables.

A table is one experiment: data set, old architecture -> new architecture, and the kind of update
(the share of classes that are old, 1.0 for a same-class update; the old model's share of the
training images, below 1.0 for data growth), so that runs of different kinds never share a row;
its rows are the
reference models and the methods, one row per method and, for the methods that use the margin
bias b, one row per value of b. Runs whose method hyperparameters (--lm-weight, --tau, ...) or
--data-pipeline differ from their defaults (the method's declared ones, see methods/registry.py,
with the data set's from utils/cli.py) get rows of their own, labelled with them. The runs of a
row (usually several seeds) are averaged.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from methods import all_hyperparameters, hyperparameters, method_defaults
from tools.run_labels import Code, run_code, run_method, update_kind
from utils.checkpoint import read_checkpoint
from utils.cli import base_parser
from utils.errors import UserError, warn
from utils.settings import NOT_IDENTITY, flag

METRICS = ("er_old", "er_all", "nfr", "rel_nfr")
REFERENCES = {"old": "Old model", "new": "New model"}
# The paper's order: the reference models, the baselines (no treatment, PCT, ELODI), MPT's
# ablations (no distillation, no margin bias) and last the full method, so that each MPT row
# adds one component to the rows above it. Methods not listed here follow, by name.
ROW_ORDER = ["Old model", "New model", "No_Treatment", "PCT_Naive", "PCT_KL", "PCT_LM", "ELODI",
             "ELODI_topk", "MPT_nodistillation", "MPT_KL_nobias", "MPT_LM_nobias", "MPT_KL", "MPT_LM"]
UNKNOWN = "?"


def uses_b(method: str | None) -> bool:
    """Whether --b changes what ``method`` trains (MPT's margin-calibrated variants)."""
    try:
        return "b" in hyperparameters(method)
    except KeyError:  # the reference models, or a method this version does not know
        return False


@lru_cache(maxsize=None)
def pipeline_default() -> str:
    return base_parser("").get_default("data_pipeline")


def unused_flags(method: str) -> set:
    """The method hyperparameters (main.py's flags, as config keys) that do not reach
    ``method``'s loss."""
    try:
        used = hyperparameters(method)
    except KeyError:
        return set()
    return set(all_hyperparameters()) - used


def method_settings(results: dict) -> tuple[str, dict, dict]:
    """An update's method, its hyperparameters as run and their defaults on its data set: from
    results.json's "method" record, or for an older record the config's values of the method's
    hyperparameters and the registry's defaults (none for a method this version does not know)."""
    config = results["config"]
    record = run_method(results)
    if record.recorded:
        return record.name, record.hyperparameters, record.defaults
    method = config.get("method", UNKNOWN)
    try:
        defaults = method_defaults(method, config["dataset"])
    except KeyError:
        defaults = {}
    return method, {k: config[k] for k in defaults if k in config}, defaults


def settings(values: dict, defaults: dict, config: dict) -> tuple:
    """(flag, value) pairs, other than b, where an update run departs from main.py's defaults in
    a way that changes its result: the method's own hyperparameters (``values`` against
    ``defaults``) and the data pipeline."""
    own = tuple((k, v) for k, v in values.items() if k != "b" and v != defaults.get(k))
    pipeline = config.get("data_pipeline", pipeline_default())
    return own + ((("data_pipeline", pipeline),) if pipeline != pipeline_default() else ())


class TableKey(NamedTuple):
    dataset: str
    old_arch: str
    new_arch: str
    old_fraction: float = 0.5       # --old-fraction: 1.0 for a same-class update
    old_data_fraction: float = 1.0  # the old model's --old-data-fraction: below 1 for data growth
    old_subset: str = ""            # which images that share was (a hash; "" where not recorded)

    def title(self) -> str:
        kind = ("same classes" if self.old_fraction == 1 else
                "" if self.old_fraction == 0.5 else f"old classes {self.old_fraction:.0%}")
        data = f"old model on {self.old_data_fraction:.0%} of the images" if self.old_data_fraction < 1 else ""
        if data and self.old_subset:
            data += f" (subset {self.old_subset[:8]})"
        return ", ".join(p for p in (f"{self.dataset}: {self.old_arch} -> {self.new_arch}", kind, data) if p)


@dataclass
class Run:
    path: Path              # the run folder
    role: str               # "old", "new" or "update"
    dataset: str
    arch: str               # the architecture of this run's model
    old_arch: str           # the old model's architecture (UNKNOWN when it cannot be found)
    old_fraction: float     # --old-fraction
    old_data_fraction: float | None  # the old model's share of the images (None: a new model, any)
    method: str             # the method, or "Old model" / "New model"
    b: float | None         # only for the methods that use b
    settings: tuple         # non-default hyperparameters, see settings()
    seed: int | None
    results: dict           # results.json
    b_default: float | None = None  # the method's default b on the run's data set
    old_subset: str = ""    # the old model's share of the images by hash (old_subset_of)

    @property
    def code(self) -> Code:
        """The code that made the run (results.json's "code"; unknown where absent)."""
        return run_code(self.results)

    def metrics(self, split: str = "test") -> dict:
        """The test metrics, or the validation ones (``split="val"``; {} without --val-fraction)."""
        return self.results if split == "test" else self.results.get("val", {})


@dataclass
class Row:
    method: str
    b: float | None
    settings: tuple
    runs: list

    @property
    def label(self) -> str:
        """The method, with b where it is not the default and any other non-default setting."""
        show_b = self.b is not None and self.b != self.runs[0].b_default
        return self._name([f"b={self.b:g}"] if show_b else [])

    @property
    def curve(self) -> str:
        """The label without b: the rows of one curve of a sweep over b."""
        return self._name([])

    def _name(self, parts: list) -> str:
        parts = parts + [f"{flag}={value:g}" if isinstance(value, float) else f"{flag}={value}"
                         for flag, value in self.settings]
        return f"{self.method} ({', '.join(parts)})" if parts else self.method

    def stat(self, metric: str, split: str = "test") -> tuple[float, float, int]:
        """(mean, sample standard deviation, number of values) of ``metric`` over the runs that
        report a finite value (Rel-NFR is NaN when undefined); NaN where there are too few."""
        values = [v for v in (r.metrics(split).get(metric) for r in self.runs)
                  if isinstance(v, (int, float)) and math.isfinite(v)]
        mean = statistics.fmean(values) if values else math.nan
        std = statistics.stdev(values) if len(values) > 1 else math.nan
        return mean, std, len(values)


def results_files(folders) -> list[Path]:
    """The results.json files under ``folders``, through symbolic links too (a sweep may link
    runs made elsewhere), each file once however many paths lead to it."""
    files, seen_files, seen_dirs = [], set(), set()
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise UserError(f"{folder} is not a folder; give folders that hold run folders")
        for root, dirs, names in os.walk(folder, followlinks=True):
            real = os.path.realpath(root)
            if real in seen_dirs:  # a link cycle, or a folder already walked through another path
                dirs.clear()
                continue
            seen_dirs.add(real)
            dirs.sort()
            if "results.json" in names and (real_file := os.path.join(real, "results.json")) not in seen_files:
                seen_files.add(real_file)
                files.append(Path(root) / "results.json")
    return files


def find_runs(folders) -> list[Run]:
    """Every run whose results.json lies somewhere under ``folders``."""
    files = results_files(folders)
    records = []
    for f in files:
        try:
            r = json.loads(f.read_text())
            if r.get("role") not in ("old", "new", "update") or not {"dataset", "arch"} <= set(r["config"]):
                raise ValueError("not a results.json of this repository")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            warn(f"skipping {f}: {err}")
            continue
        records.append((f.parent, r))
    if not records:
        raise UserError(f"no results.json under {', '.join(map(str, folders))}; "
                        "give the folders that hold finished runs")
    # The old model of an update is known by its checkpoint path: an old run among these, or
    # else the checkpoint itself.
    old_archs = {_resolve(r["checkpoint"]): r["config"]["arch"]
                 for _, r in records if r["role"] == "old" and "checkpoint" in r}
    return [_make_run(path, r, old_archs) for path, r in records]


def _make_run(path: Path, r: dict, old_archs: dict) -> Run:
    cfg, role = r["config"], r["role"]
    b = b_default = None
    extra = ()
    if role == "update":
        ckpt = _resolve(cfg["old_ckpt"]) if cfg.get("old_ckpt") else None
        old_arch = ((r.get("setting") or {}).get("old_arch") or old_archs.get(ckpt)
                    or (_checkpoint_arch(ckpt) if ckpt else UNKNOWN))
        method, values, defaults = method_settings(r)
        if values.get("b") is not None:
            b, b_default = float(values["b"]), defaults.get("b")
        extra = settings(values, defaults, cfg)
    else:
        old_arch = cfg["arch"] if role == "old" else UNKNOWN
        method = REFERENCES[role]
    kind = update_kind(r)
    old_fraction = kind["old_fraction"]
    old_data_fraction = None if role == "new" else kind["old_data_fraction"]
    return Run(path, role, cfg["dataset"], cfg["arch"], old_arch, old_fraction, old_data_fraction, method, b,
               extra, cfg.get("seed"), r, b_default, old_subset_of(r))


def old_subset_of(results: dict) -> str:
    """The hash of the training images an old model saw where it saw a share of them (its own
    results.json's "old_data", an update's "references"), so that updates from old models of
    different subsets never share a table; "" where not recorded (all images, older records)."""
    old_data = results.get("old_data") if results["role"] == "old" else (
        ((results.get("references") or {}).get("old") or {}).get("old_data"))
    return (old_data or {}).get("subset_sha256", "")


def _resolve(path: str) -> str:
    return str(Path(path).expanduser().resolve())


@lru_cache(maxsize=None)
def _checkpoint_arch(path: str) -> str:
    try:
        return read_checkpoint(path, "old")["arch"]
    except UserError as err:
        warn(f"old model architecture unknown, shown as {UNKNOWN!r}: {err}")
        return UNKNOWN


def group(runs: list[Run]) -> dict[TableKey, list[Row]]:
    """The tables, each with its rows in the paper's order (then by b)."""
    updates = [r for r in runs if r.role == "update"]
    keys = {TableKey(r.dataset, r.old_arch, r.arch, r.old_fraction, r.old_data_fraction, r.old_subset)
            for r in updates}
    # Reference models of an experiment without updates still get a table.
    for experiment in {(r.dataset, r.old_fraction) for r in runs} - {(r.dataset, r.old_fraction) for r in updates}:
        olds = {(r.arch, r.old_data_fraction, r.old_subset) for r in runs
                if (r.dataset, r.old_fraction) == experiment and r.role == "old"} or {(UNKNOWN, 1.0, "")}
        news = {r.arch for r in runs if (r.dataset, r.old_fraction) == experiment and r.role == "new"} or {UNKNOWN}
        keys |= {TableKey(experiment[0], o, n, experiment[1], data, subset) for o, data, subset in olds
                 for n in news}

    def belongs(run: Run, key: TableKey) -> bool:
        if (run.dataset, run.old_fraction) != (key.dataset, key.old_fraction):
            return False
        if run.role == "new":  # a new model trains on everything, whatever the old model saw
            return run.arch == key.new_arch
        if run.old_data_fraction != key.old_data_fraction:
            return False
        if run.role == "old":  # in the tables of its own subset, and of updates that do not record one
            return run.arch == key.old_arch and key.old_subset in ("", run.old_subset)
        return (run.old_arch, run.arch, run.old_subset) == (key.old_arch, key.new_arch, key.old_subset)

    tables = {}
    for key in sorted(keys):
        rows: dict[tuple, Row] = {}
        for run in runs:
            if belongs(run, key):
                row_key = (run.method, run.b, run.settings)
                rows.setdefault(row_key, Row(run.method, run.b, run.settings, [])).runs.append(run)
        tables[key] = sorted(rows.values(), key=_row_order)
        for row in tables[key]:
            _warn_if_mixed(key, row)
    return tables


def _row_order(row: Row):
    known = row.method in ROW_ORDER
    return (ROW_ORDER.index(row.method) if known else len(ROW_ORDER), "" if known else row.method,
            len(row.settings), str(row.settings), -math.inf if row.b is None else row.b)


def _warn_if_mixed(key: TableKey, row: Row):
    """Averaging runs that differ in more than the seed would be misleading: say so."""
    ignored = NOT_IDENTITY | {"seed"} | unused_flags(row.method)
    configs = [r.results["config"] for r in row.runs]
    differ = sorted(k for k in set().union(*configs) - ignored
                    if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)
    if differ:
        flags = ", ".join(map(flag, differ))
        warn(f"{key.title()}, row {row.label}: its {len(row.runs)} runs differ in {flags}, not only "
             "in --seed; they are averaged anyway")
