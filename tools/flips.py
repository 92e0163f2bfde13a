"""Where the negative flips of updates are, how sure their rates are, and how they vary over seeds,
from the run folders' results.json and predictions.npz (numpy, scipy and matplotlib; no torch).

    python -m tools.flips RUN [RUN ...] --out DIR [--baseline RUN] [--data-root DIR]
        [--resamples 10000] [--confidence 0.95] [--seed 0]

Each RUN is a run folder with results.json and predictions.npz (main.py, tools.evaluate), or a
folder that holds a predictions.npz alone (utils.outputs.save_predictions: predictions made
elsewhere). A run gets a label from what its results.json records (tools/run_labels.py), e.g.
MPT_KL-b4-seed42; runs that differ only in the seed form a group (MPT_KL-b4). A folder of
predictions alone is labelled by the folder's name and is a group of its own (it has no settings,
no seed). Written to DIR:

    flips.json   "runs": per run its label, group, the code that made it ("code": commit and
                 whether the tree was dirty, null where unknown) and its command, NFR, Rel-NFR,
                 ER(Y_old), ER(Y_all) with percentile bootstrap intervals over the test samples
                 (NFR, Rel-NFR, ER(Y_old): the old-class samples; ER(Y_all): all of them) and the
                 number of resamples in which Rel-NFR is undefined ("rel_nfr_undefined_resamples",
                 left out of its interval), per-class NFR and PFR, the negative flips as
                 [true class, updated prediction, count] triples ("flip_to"), the share of them
                 that land in new classes and, where margins were saved, a margin summary.
                 "groups": per group its runs, the mean and sample sd over them of NFR, Rel-NFR,
                 ER(Y_old), ER(Y_all), the share into new classes and the per-class NFR, the
                 t-interval of the mean over the seeds of NFR, Rel-NFR, ER(Y_old) and ER(Y_all)
                 ("nfr_mean_ci" ...: mean +- t(n-1) sd / sqrt(n); null for one run), and the number
                 of samples that flip in every run of the group.
                 "group_comparisons": between groups of at least 2 runs, the difference of mean
                 NFR with Welch's t, degrees of freedom, interval and p-value over the seeds, and
                 that p-value adjusted by Holm's method over the comparisons reported: the
                 comparison of two methods (or settings), each seed a replicate.
                 "pairs": per pair of runs of the same old model on the same test set (every pair,
                 or each run against --baseline), whether both are runs of one group ("same_group":
                 two seeds of one method and setting), the NFR difference with a paired bootstrap
                 interval and an exact McNemar test on the samples' negative flips, with its
                 p-value adjusted by Holm's method within its family ("p_holm": the pairs within a
                 group, and the pairs across groups, each family on its own). A pair is compared
                 over the test samples: it tells whether two trained models differ, not whether
                 two methods do (that is the group comparisons' question). Undefined values are null.
    flips.md     the same as Markdown tables: the groups, the comparisons of groups over seeds,
                 the runs, then the pairs of runs over the test samples; a line on the code that
                 made the runs, and a Code column where they differ in it (see tools/run_labels.py)
    flips.csv    one row per old-class test sample (of the runs that share the first run's, or the
                 baseline's, test set and old model): its test-set index, its image file (with
                 --data-root, for an image-folder data set), true class, the old model's
                 prediction and margin, each run's prediction and margin, and "flips", the number
                 of those runs in which it flips
    figures      per_class_nfr.png (per group, mean and sd over seeds); up to 30 classes one flip
                 matrix per run, flip_matrix_<label>.png, all on one colour scale, above that
                 top_confusions.png; flip_split.png (old -> old versus old -> new flips per run);
                 margins.png where margins were saved (a line per group: its seeds' mean count
                 per bin); nfr_vs_b.png where groups of one method
                 differ only in b (a group of one run drawn without an error bar; a _nobias
                 ablation is its method at b = 0);
                 flipped_samples.png with --data-root (test images that flip, stratified over the
                 true classes: each class's most flipped in turn)

Only updates have flips: runs whose results.json says "role": "old" or "new" are skipped with a
warning (one without a role counts as an update). C_old comes from results.json's "num_old", the
predictions' "num_old", the width of the old model's logits, or else round(--old-fraction x C).
C comes from the class names, results.json's "num_classes", the data set, the logits' width, or
else the largest class seen + 1.

Margins z_y - max_{j != y} z_j come from predictions.npz's "margin" / "old_margin" (fp32, written
by main.py and tools.evaluate) or else from its float16 logits, where rounding makes near ties
exact (0); a margin whose sign contradicts the stored prediction (predictions not made from those
logits) counts as a tie, 0: the stored prediction is what the flips count.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.stats import binom, ttest_ind
from scipy.stats import t as student_t

from tools import flip_figures
from tools.run_labels import code_marks, labels, run_code, run_method
from utils.errors import UserError, exit_on_user_error, warn
from utils.image_files import DATASETS, TestImages
from utils.metrics import (
    bootstrap_rates,
    flip_indicators,
    flip_metrics,
    margins,
    margins_agreeing_with,
    nfr_and_rel_nfr,
    percentile_interval,
)

REPORTED = ("nfr", "rel_nfr", "er_old", "er_all")
# The metrics whose mean over a group's seeds gets a t-interval.
GROUP_INTERVALS = ("nfr", "rel_nfr", "er_old", "er_all")
TOP_FLIPS = 5


# ---------------------------------------------------------------------------------------------
# Statistics: numpy in, numbers out
# ---------------------------------------------------------------------------------------------
def mcnemar_p(a, b) -> float:
    """Exact two-sided McNemar p-value for paired binary outcomes ``a`` and ``b`` of the same
    samples: under the null, each of the n01 + n10 discordant samples goes either way with
    probability 1/2. 1 when no sample is discordant."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
    if n01 + n10 == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(n01, n10), n01 + n10, 0.5)))


def holm(p_values) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes the largest of
    (m - j + 1) p_(j) over j <= i, capped at 1. Rejecting where the adjusted p is below alpha
    keeps the chance of any false rejection among the m tests below alpha."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    adjusted = np.empty(len(p))
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted.tolist()


class Welch(NamedTuple):
    diff: float                 # mean(a) - mean(b)
    ci: tuple[float, float]     # Welch's interval of the difference
    t: float                    # Welch's t statistic
    df: float                   # its Welch-Satterthwaite degrees of freedom
    p: float                    # two-sided p-value


def welch(a, b, confidence: float) -> Welch:
    """mean(a) - mean(b) with Welch's t, degrees of freedom, interval and two-sided p-value
    (scipy's ttest_ind with unequal variances; each value one seed's). NaN but the difference
    where neither sample varies: Welch has no degrees of freedom there."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(a.mean() - b.mean())
    if a.var() == 0 and b.var() == 0:
        return Welch(diff, (math.nan, math.nan), math.nan, math.nan, math.nan)
    with warnings.catch_warnings():  # scipy's precision warning for nearly equal values
        warnings.simplefilter("ignore", RuntimeWarning)
        test = ttest_ind(a, b, equal_var=False)
        interval = test.confidence_interval(confidence)
    return Welch(diff, (float(interval.low), float(interval.high)), float(test.statistic), float(test.df),
                 float(test.pvalue))


def t_interval(values, confidence: float) -> tuple[float, float]:
    """The t-interval of the mean of ``values`` (one per seed): mean +- t_(n-1) sd / sqrt(n)
    (scipy's t.interval), over the defined values; NaN for fewer than 2, the mean itself where
    they do not vary."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(values) < 2:
        return (math.nan, math.nan)
    mean, sem = float(values.mean()), float(values.std(ddof=1)) / math.sqrt(len(values))
    if sem == 0:
        return (mean, mean)
    low, high = student_t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return (float(low), float(high))


def per_class_counts(targets, old_pred, pred, num_old: int) -> dict:
    """For each old class 0..C_old-1: its test samples ("n") and its negative and positive
    flips, as integer arrays of length C_old."""
    flips = flip_indicators(targets, old_pred, pred, num_old)
    count = lambda mask: np.bincount(flips.targets[mask], minlength=num_old)[:num_old]  # noqa: E731
    return {"n": count(np.ones(len(flips.targets), bool)), "negative": count(flips.negative),
            "positive": count(flips.positive)}


def flip_matrix(targets, old_pred, pred, num_old: int, num_classes: int) -> np.ndarray:
    """C_old x C counts of negative flips: row the true (old) class, column the updated model's
    prediction. Where the flips go tells whether the update confuses old classes with each other
    or pulls them into the new ones."""
    targets, old_pred, pred = (np.asarray(a).astype(np.int64) for a in (targets, old_pred, pred))
    negative = (targets < num_old) & (old_pred == targets) & (pred != targets)
    matrix = np.zeros((num_old, num_classes), dtype=np.int64)
    np.add.at(matrix, (targets[negative], pred[negative]), 1)
    return matrix


def margin_summary(old_correct, margin, old_margin=None) -> dict:
    """Over the old-class samples: the medians of the old model's margins (None without them) and
    the updated model's, and the percent of the samples the old model got right whose updated
    margin is below zero."""
    return {
        "old_model_median": float(np.median(old_margin)) if old_margin is not None and len(margin) else math.nan,
        "median": float(np.median(margin)) if len(margin) else math.nan,
        "share_below_zero_of_old_correct":
            100.0 * float(np.mean(margin[old_correct] < 0)) if old_correct.any() else math.nan,
    }


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------
def load_run(run: str, with_margins: bool = True) -> dict | None:
    """results.json and the predictions of a run folder (with its old-class samples' margins
    where predictions.npz allows, unless not ``with_margins``); None (with a warning) if it is not
    an update. A folder with a predictions.npz and no results.json is a run known by its
    predictions alone ("name": the folder's name; results and config empty). Logits are read only
    to compute margins, a chunk at a time, and not kept."""
    folder = Path(run)
    results_file, npz_file = folder / "results.json", folder / "predictions.npz"
    name = None
    if results_file.is_file():
        try:
            results = json.loads(results_file.read_text())
        except ValueError as err:
            raise UserError(f"{results_file} is not valid JSON ({err}); is the run finished?") from None
    elif npz_file.is_file():
        results, name = {}, folder.resolve().name
    else:
        raise UserError(f"no results.json or predictions.npz in {folder}; give finished run folders (or "
                        "folders of predictions.npz files)")
    # A results.json without a role (written by other code) counts as an update's.
    if results.get("role", "update") != "update":
        warn(f"skipping {folder}: a {results['role']!r} run, not an update; it has no flips")
        return None
    if not npz_file.is_file():
        raise UserError(f"no predictions.npz in {folder}; only runs of this version of main.py save "
                        "their test predictions")
    try:
        with np.load(npz_file, allow_pickle=False) as npz:
            run_data = _read_predictions(npz, npz_file, results, with_margins)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{npz_file} cannot be read ({err}); is the run finished?") from None
    return {"run": run, "results": results, "config": results.get("config") or {}, "name": name, **run_data}


def _read_predictions(npz, npz_file: Path, results: dict, with_margins: bool) -> dict:
    missing = [k for k in ("targets", "old_pred", "pred") if k not in npz.files]
    if missing:
        raise UserError(f"{npz_file} lacks {', '.join(missing)}; it is not a predictions file of main.py")
    arrays = {k: npz[k].astype(np.int64) for k in ("targets", "old_pred", "pred")}
    n = len(arrays["targets"])
    for key in npz.files:
        shape = _shape(npz, key)
        if shape and shape[0] != n:
            raise UserError(f"{npz_file}: {key} has {shape[0]} rows for {n} targets")
    num_classes = class_count(results, npz, arrays)
    num_old = old_class_count(results, npz, num_classes)
    targets = arrays["targets"]
    old = targets < num_old
    margin = old_margin = None
    if with_margins and "margin" in npz.files:
        margin = npz["margin"][old].astype(np.float32)
        old_margin = npz["old_margin"][old].astype(np.float32) if "old_margin" in npz.files else None
    elif with_margins and "logits" in npz.files:
        margin = margins_agreeing_with(arrays["pred"][old], targets[old], margins(npz["logits"][old], targets[old]))
        if "old_logits" in npz.files:
            old_margin = margins_agreeing_with(arrays["old_pred"][old], targets[old],
                                               margins(npz["old_logits"][old][:, :num_old], targets[old]))
    return {"arrays": arrays, "num_old": num_old, "classes": results.get("classes"), "margin": margin,
            "old_margin": old_margin,
            "num_classes": max(num_classes, int(arrays["pred"].max(initial=-1)) + 1)}


def _shape(npz, key: str) -> tuple:
    """The shape of an array in an .npz, from its header: the data is not read."""
    with npz.zip.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        return read_header(f)[0]


def class_count(results: dict, npz, arrays: dict) -> int:
    """C: the class names' count, results.json's, the data set's, the logits' width, else the
    largest target + 1."""
    if results.get("classes"):
        return len(results["classes"])
    if results.get("num_classes"):
        return int(results["num_classes"])
    dataset = (results.get("config") or {}).get("dataset")
    if DATASETS.get(dataset):
        return DATASETS[dataset]
    if "logits" in npz.files:
        return int(_shape(npz, "logits")[1])
    return int(arrays["targets"].max(initial=-1)) + 1


def old_class_count(results: dict, npz, num_classes: int) -> int:
    """C_old, from the first source that has it (see the module's docstring)."""
    if results.get("num_old") is not None:
        return int(results["num_old"])
    if "num_old" in npz.files:
        return int(npz["num_old"])
    if "old_logits" in npz.files:
        return int(_shape(npz, "old_logits")[1])
    fraction = (results.get("config") or {}).get("old_fraction", 0.5)
    return int(round(float(fraction) * num_classes))


def same_samples(a: dict, b: dict) -> bool:
    """Whether two runs were scored on the same test samples against the same old predictions."""
    return (a["num_old"] == b["num_old"] and np.array_equal(a["arrays"]["targets"], b["arrays"]["targets"])
            and np.array_equal(a["arrays"]["old_pred"], b["arrays"]["old_pred"]))


# ---------------------------------------------------------------------------------------------
# The analysis
# ---------------------------------------------------------------------------------------------
def resampled(runs: list[dict], flips: list, resamples: int, seed: int) -> list[dict]:
    """Per run, the rates (percent) of its indicators in each bootstrap resample: "negative",
    "old_correct", "new_correct" over its old-class samples and "error" over all its test
    samples. Runs with as many samples share the resamples (the same draws for the same seed),
    so that the difference of two runs' columns is a paired bootstrap; all the runs of one size
    are resampled in one pass."""
    out = [{} for _ in runs]
    columns = {}  # number of samples: [(run index, name, indicator)]
    for i, (run, f) in enumerate(zip(runs, flips)):
        a = run["arrays"]
        for name, indicator in (("negative", f.negative), ("old_correct", f.old_correct),
                                ("new_correct", f.new_correct)):
            columns.setdefault(len(f.targets), []).append((i, name, indicator))
        columns.setdefault(len(a["targets"]), []).append((i, "error", a["pred"] != a["targets"]))
    for entries in columns.values():
        rates = bootstrap_rates(np.stack([c for _, _, c in entries], axis=1), resamples, seed)
        for j, (i, name, _) in enumerate(entries):
            out[i][name] = rates[:, j]
    return out


def analyse(run: dict, flips, rates: dict, confidence: float) -> dict:
    """The flips.json entry of one run (``rates``: its resampled rates, see ``resampled``)."""
    a, num_old = run["arrays"], run["num_old"]
    targets, old_pred, pred = a["targets"], a["old_pred"], a["pred"]
    metrics = flip_metrics(targets, old_pred, pred, num_old)
    for key in REPORTED:  # a different value means a different C_old or other predictions
        saved = run["results"].get(key)
        if isinstance(saved, (int, float)) and not _same(saved, metrics[key]):
            warn(f"{run['run']}: {key} is {metrics[key]:.4f} from predictions.npz with C_old = {num_old} "
                 f"but {saved:.4f} in results.json")
    resampled_nfr = nfr_and_rel_nfr(rates["negative"], rates["old_correct"], rates["new_correct"])
    nfr_ci, rel_nfr_ci = percentile_interval(resampled_nfr, confidence)
    # Rel-NFR is undefined in a resample where the old model is never right or the updated model
    # never wrong; its interval leaves those out, and says how many there were.
    undefined = int(np.isnan(resampled_nfr[:, 1]).sum()) if len(flips.targets) else 0
    code = run_code(run["results"])
    counts = per_class_counts(targets, old_pred, pred, num_old)
    matrix = flip_matrix(targets, old_pred, pred, num_old, run["num_classes"])
    rows, cols = np.nonzero(matrix)
    entry = {
        "label": run["label"],
        "group": run["group"],
        "run": run["run"],
        "method": run["method"],
        "seed": run["config"].get("seed"),
        "code": None if code.commit is None else code._asdict(),
        "command": run["results"].get("command"),
        "num_old": num_old,
        "n_old": len(flips.targets),
        **{k: metrics[k] for k in REPORTED},
        "pfr": metrics["pfr"],
        "er_old_model": metrics["er_old_model"],
        "nfr_ci": list(nfr_ci),
        "rel_nfr_ci": list(rel_nfr_ci),
        "rel_nfr_undefined_resamples": undefined,
        "er_old_ci": list(percentile_interval(100.0 - rates["new_correct"], confidence)),
        "er_all_ci": list(percentile_interval(rates["error"], confidence)),
        # Undefined (NaN) in a same-class update: there is no new class to flip into.
        "flips_to_new_classes": (_percent(matrix[:, num_old:].sum(), matrix.sum())
                                 if num_old < run["num_classes"] else math.nan),
        "per_class": {"name": [class_name(run, c) for c in range(num_old)], "n": counts["n"].tolist(),
                      "nfr": [_percent(neg, n) for n, neg in zip(counts["n"], counts["negative"])],
                      "pfr": [_percent(pos, n) for n, pos in zip(counts["n"], counts["positive"])]},
        "flip_to": [[int(r), int(c), int(matrix[r, c])] for r, c in zip(rows, cols)],
    }
    if run["margin"] is not None:
        entry["margin"] = margin_summary(flips.old_correct, run["margin"], run["old_margin"])
    return entry


def pairs(runs: list[dict], flips: list, rates: list[dict], confidence: float, baseline: int | None) -> list[dict]:
    """Every pair (a, b), a before b, of runs on the same samples and old predictions, or each
    run (a) against the baseline (b) only; with Holm's adjustment within each family of the pairs
    reported: those of two runs of one group ("same_group") and those of two groups."""
    if baseline is None:
        candidates = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
    else:
        candidates = [(i, baseline) for i in range(len(runs)) if i != baseline]
    out = []
    for i, j in candidates:
        if not same_samples(runs[i], runs[j]):
            if np.array_equal(runs[i]["arrays"]["targets"], runs[j]["arrays"]["targets"]) and \
                    np.array_equal(runs[i]["arrays"]["old_pred"], runs[j]["arrays"]["old_pred"]):
                warn(f"{runs[i]['label']} and {runs[j]['label']} share predictions but not C_old "
                     f"({runs[i]['num_old']} vs {runs[j]['num_old']}); not compared")
            continue
        a, b = flips[i].negative, flips[j].negative
        diff = rates[i]["negative"] - rates[j]["negative"]  # the same resamples: paired
        out.append({"a": runs[i]["label"], "b": runs[j]["label"], "same_group": runs[i]["group"] == runs[j]["group"],
                    "nfr_diff": 100.0 * (float(np.mean(a)) - float(np.mean(b))) if len(a) else math.nan,
                    "nfr_diff_ci": list(percentile_interval(diff, confidence)),
                    "n01": int(np.sum(a & ~b)), "n10": int(np.sum(~a & b)), "mcnemar_p": mcnemar_p(a, b)})
    for family in (True, False):  # the pairs within a group and those across groups: Holm in each
        members = [p for p in out if p["same_group"] is family]
        for pair, adjusted in zip(members, holm([p["mcnemar_p"] for p in members])):
            pair["p_holm"] = adjusted
    return out


def groups(runs: list[dict], entries: list[dict], flips: list, confidence: float) -> list[dict]:
    """The runs that differ only in the seed, in the order of their first run, with the mean and
    sample sd of their metrics and the t-interval of the mean (``t_interval``)."""
    members = {}
    for i, run in enumerate(runs):
        members.setdefault(run["group"], []).append(i)
    out = []
    for label, idx in members.items():
        group = {"label": label, "runs": [runs[i]["label"] for i in idx], "n": len(idx)}
        for key in ("nfr", "rel_nfr", "er_old", "er_all", "flips_to_new_classes"):
            group[f"{key}_mean"], group[f"{key}_sd"] = _mean_sd([entries[i][key] for i in idx])
        for key in GROUP_INTERVALS:  # the uncertainty of the mean over the seeds
            group[f"{key}_mean_ci"] = list(t_interval([entries[i][key] for i in idx], confidence))
        per_class = [entries[i]["per_class"]["nfr"] for i in idx]
        if len({len(p) for p in per_class}) == 1:
            values = np.array(per_class, dtype=float)
            group["per_class_nfr_mean"], group["per_class_nfr_sd"] = (
                list(v) for v in zip(*(_mean_sd(values[:, c]) for c in range(values.shape[1]))))
        # Samples that flip whatever the seed: only defined on one test set and old model.
        shared = all(same_samples(runs[idx[0]], runs[i]) for i in idx)
        group["flip_in_every_run"] = (int(np.logical_and.reduce([flips[i].negative for i in idx]).sum())
                                      if shared else None)
        group["method"], group["b"] = entries[idx[0]]["method"], runs[idx[0]]["b"]
        group["commits"] = sorted({entries[i]["code"]["commit"] for i in idx if entries[i]["code"]})
        group["curve"] = runs[idx[0]]["curve"]
        out.append(group)
    return out


def group_comparisons(group_list: list[dict], entries: list[dict], confidence: float,
                      baseline: str | None) -> list[dict]:
    """Welch's difference of mean NFR between groups of at least 2 runs (every pair, or each
    against the baseline's group): t, degrees of freedom, interval and p-value, with Holm's
    adjustment over the comparisons reported."""
    nfr = {e["label"]: e["nfr"] for e in entries}
    seeded = [g for g in group_list if g["n"] >= 2]
    if baseline is None:
        candidates = [(a, b) for i, a in enumerate(seeded) for b in seeded[i + 1:]]
    else:
        base = next((g for g in seeded if g["label"] == baseline), None)
        candidates = [(g, base) for g in seeded if base is not None and g is not base]
    out = []
    for a, b in candidates:
        w = welch([nfr[r] for r in a["runs"]], [nfr[r] for r in b["runs"]], confidence)
        out.append({"a": a["label"], "b": b["label"], "n_a": a["n"], "n_b": b["n"], "nfr_diff": w.diff,
                    "nfr_diff_ci": list(w.ci), "welch_t": w.t, "welch_df": w.df, "welch_p": w.p})
    tested = [c for c in out if not math.isnan(c["welch_p"])]
    for comparison, adjusted in zip(tested, holm([c["welch_p"] for c in tested])):
        comparison["p_holm"] = adjusted
    for comparison in out:
        comparison.setdefault("p_holm", math.nan)
    return out


def _mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation of the defined values (NaN where too few)."""
    values = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    mean = float(values.mean()) if len(values) else math.nan
    return mean, float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


def _percent(count, n) -> float:
    return 100.0 * float(count) / float(n) if n else math.nan


def json_safe(value):
    """NaN and infinities as null (JSON has neither), numpy scalars as Python numbers."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compact_json(value, indent: str = "") -> str:
    """JSON with one key per line but each list of numbers (or of short lists of numbers, as the
    flip triples) on one line: thousands of classes stay thousands of numbers, not lines."""
    if isinstance(value, dict):
        inner = indent + " "
        items = [f"{inner}{json.dumps(k)}: {compact_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}" if items else "{}"
    if isinstance(value, list) and any(isinstance(v, dict) for v in value):
        inner = indent + " "
        return "[\n" + ",\n".join(inner + compact_json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, allow_nan=False, separators=(",", ":") if isinstance(value, list) else None)


# ---------------------------------------------------------------------------------------------
# Markdown and the per-sample table
# ---------------------------------------------------------------------------------------------
def class_name(run: dict, c: int) -> str:
    names = run["classes"]
    return str(names[c]) if names and c < len(names) else str(c)


def top_flips(run: dict, triples, k: int = TOP_FLIPS) -> list[str]:
    """The k most frequent (true class -> updated prediction) negative flips, "cat -> dog: 37"."""
    ranked = sorted(triples, key=lambda t: (-t[2], t[0], t[1]))[:k]
    return [f"{class_name(run, r)} -> {class_name(run, c)}: {n}" for r, c, n in ranked]


def _num(x, digits=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p_value(p) -> str:
    # Small p-values in scientific notation: "0.0000" would hide how small they are.
    return f"{p:.1e}" if p is not None and p < 1e-3 else _num(p, 4)


def _ci(value, interval) -> str:
    return f"{_num(value)} [{_num(interval[0])}, {_num(interval[1])}]"


def _mean_sd_cell(group: dict, key: str) -> str:
    mean, sd = group[f"{key}_mean"], group[f"{key}_sd"]
    return _num(mean) if sd is None or (isinstance(sd, float) and math.isnan(sd)) else f"{_num(mean)} ± {_num(sd)}"


def _table(header: list[str], rows, labels: int = 1) -> list[str]:
    """A Markdown table: the first ``labels`` columns left-aligned, the numbers right-aligned."""
    align = ["---"] * labels + ["---:"] * (len(header) - labels)
    return [f"| {' | '.join(map(str, cells))} |" for cells in (header, align, *rows)]


def _group_cell(group: dict, key: str) -> str:
    """Mean ± sd over the group's seeds and the t-interval of the mean; the value for one run."""
    cell = _mean_sd_cell(group, key)
    interval = group.get(f"{key}_mean_ci")
    if interval and interval[0] is not None and not (isinstance(interval[0], float) and math.isnan(interval[0])):
        cell += f" [{_num(interval[0])}, {_num(interval[1])}]"
    return cell


def markdown(report: dict, runs: list[dict], confidence: float, resamples: int, csv_runs: list[str]) -> str:
    level = f"{100 * confidence:g}%"
    entries, group_list = report["runs"], report["groups"]
    codes = {e["label"]: run_code({"code": e["code"]}) for e in entries}
    marks = code_marks(codes.values())
    code_column = ["Code"] if marks.shown else []

    def code_cell(labels):
        return [marks.mark([codes[label] for label in labels])] if marks.shown else []

    out = [f"### Groups (runs that differ only in the seed: mean ± sample sd over them, and the {level} "
           "t-interval of the mean over the seeds)", ""]
    out += _table(["Group", "Runs", "NFR", "Rel-NFR", "ER(Y_old)", "ER(Y_all)", "Flips into new classes (%)",
                   "Samples flipping in every run", *code_column],
                  ([g["label"], g["n"], *(_group_cell(g, k) for k in ("nfr", "rel_nfr", "er_old", "er_all")),
                    _mean_sd_cell(g, "flips_to_new_classes"),
                    "–" if g["flip_in_every_run"] is None else g["flip_in_every_run"], *code_cell(g["runs"])]
                   for g in group_list))
    out += ["", marks.footnote(list(codes.values()))]
    out += ["", f"### Comparisons of groups over seeds (each seed one replicate: whether two methods or "
                f"settings differ; NFR(a) - NFR(b) of the means, Welch's t-test and {level} interval, "
                "Holm over the comparisons)", ""]
    if report["group_comparisons"]:
        out += _table(["a", "b", "Runs a / b", "NFR(a) - NFR(b)", "Welch t", "Welch df", "Welch p", "Holm p"],
                      ([c["a"], c["b"], f"{c['n_a']} / {c['n_b']}", _ci(c["nfr_diff"], c["nfr_diff_ci"]),
                        _num(c["welch_t"]), _num(c["welch_df"]), _p_value(c["welch_p"]), _p_value(c["p_holm"])]
                       for c in report["group_comparisons"]), labels=2)
    else:
        out.append("None: a comparison over seeds needs two groups of at least 2 runs each (with "
                   "--baseline, the baseline's group among them).")
    out += ["", f"### Runs ({level} percentile bootstrap intervals over the test samples, {resamples} resamples)", ""]
    out += _table(["Run", "C_old", "Old-class samples", "NFR", "Rel-NFR", "ER(Y_old)", "ER(Y_all)", "PFR",
                   "Flips into new classes (%)", *code_column],
                  ([e["label"], e["num_old"], e["n_old"], _ci(e["nfr"], e["nfr_ci"]),
                    _ci(e["rel_nfr"], e["rel_nfr_ci"]), _ci(e["er_old"], e["er_old_ci"]),
                    _ci(e["er_all"], e["er_all_ci"]), _num(e["pfr"]),
                    _num(e["flips_to_new_classes"]), *code_cell([e["label"]])] for e in entries))
    undefined = [f"{e['label']} {e['rel_nfr_undefined_resamples']} of {resamples}" for e in entries
                 if e["rel_nfr_undefined_resamples"]]
    out += ["", "Resamples in which Rel-NFR is undefined (the old model never right or the updated model never "
                "wrong; left out of its interval): " + ("; ".join(undefined) or "none") + "."]
    out += ["", f"### Pairs of runs over the test samples (whether two trained models differ, not whether two "
                f"methods do; same test set and old model; paired {level} bootstrap interval, exact McNemar test)", ""]
    if not report["pairs"]:
        out.append("No two runs share the test set and the old model's predictions.")
    for family, heading in ((True, "Two seeds of one group (how far retraining alone moves the flips)"),
                            (False, "Runs of two groups")):
        members = [p for p in report["pairs"] if p["same_group"] is family]
        if not members:
            continue
        out += [f"#### {heading}: Holm over these {len(members)} pairs", ""]
        out += _table(["a", "b", "NFR(a) - NFR(b)", "a only / b only flips", "McNemar p", "Holm p"],
                      ([p["a"], p["b"], _ci(p["nfr_diff"], p["nfr_diff_ci"]), f"{p['n01']} / {p['n10']}",
                        _p_value(p["mcnemar_p"]), _p_value(p["p_holm"])] for p in members), labels=2)
        out.append("")
    if out[-1] == "":
        out.pop()
    out += ["", f"### Most frequent negative flips (true class -> updated prediction, top {TOP_FLIPS})", ""]
    for e, run in zip(entries, runs):
        flips = top_flips(run, e["flip_to"])
        out.append(f"- {e['label']}: " + ("; ".join(flips) if flips else "no negative flips"))
    with_margin = [e for e in entries if "margin" in e]
    if with_margin:
        out += ["", "### Margins z_y - max_{j != y} z_j (old-class samples)", ""]
        out += _table(["Run", "Old model median", "Updated median", "Below zero, of the old model's correct (%)"],
                      ([e["label"], *(_num(e["margin"][k]) for k in ("old_model_median", "median",
                                                                     "share_below_zero_of_old_correct"))]
                       for e in with_margin))
    out += ["", f"flips.csv: the old-class test samples of {', '.join(csv_runs)}.", ""]
    return "\n".join(out)


def sample_table(runs: list[dict], flips: list, reference: int) -> tuple[list[int], dict]:
    """The runs on the reference run's samples, and per old-class sample of them: its test-set
    "index", "target", "old_pred", "old_margin" (or None), each run's "pred" and "margin" (lists,
    in the runs' order) and "flips", in how many of those runs it flips."""
    ref = runs[reference]
    shared = [i for i, run in enumerate(runs) if same_samples(ref, run)]
    targets = ref["arrays"]["targets"]
    old = targets < ref["num_old"]
    table = {"index": np.flatnonzero(old), "target": targets[old], "old_pred": ref["arrays"]["old_pred"][old],
             "old_margin": next((runs[i]["old_margin"] for i in shared if runs[i]["old_margin"] is not None), None),
             "pred": [runs[i]["arrays"]["pred"][old] for i in shared],
             "margin": [runs[i]["margin"] for i in shared],
             "flips": np.sum([flips[i].negative for i in shared], axis=0, dtype=np.int64)}
    return shared, table


def write_csv(path: Path, runs: list[dict], shared: list[int], table: dict, images: TestImages | None):
    ref = runs[shared[0]]
    names = lambda classes: [class_name(ref, c) for c in classes]  # noqa: E731
    columns = {"index": table["index"].tolist()}
    if images is not None and images.paths is not None:
        columns["path"] = [images.paths[i] for i in table["index"]]
    columns.update({"true": table["target"].tolist(), "true_name": names(table["target"]),
                    "old_pred": table["old_pred"].tolist()})
    if table["old_margin"] is not None:
        columns["old_margin"] = _margins_text(table["old_margin"])
    for i, pred, margin in zip(shared, table["pred"], table["margin"]):
        columns[f"pred[{runs[i]['label']}]"] = pred.tolist()
        if margin is not None:
            columns[f"margin[{runs[i]['label']}]"] = _margins_text(margin)
    columns["flips"] = table["flips"].tolist()
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values()))


def _margins_text(values) -> list[str]:
    return ["" if math.isnan(v) else f"{v:.4g}" for v in np.asarray(values, dtype=float)]


def test_images(run: dict, data_root: str) -> TestImages | None:
    """The run's test images under ``data_root``, checked against its targets; None (with a
    warning) when they do not match."""
    dataset = run["config"].get("dataset")
    if dataset is None:
        warn(f"{run['label']} records no data set (a folder of predictions alone), nor does any run of its "
             "test samples: no images shown")
        return None
    images = TestImages(dataset, data_root)
    targets = run["arrays"]["targets"]
    if len(images) != len(targets) or not np.array_equal(images.targets, targets):
        warn(f"the {len(images)} {dataset} test images under {data_root} are not the {len(targets)} "
             f"that {run['label']} was scored on (other classes or order); no images shown")
        return None
    return images


# ---------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.flips", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of updates (main.py --output-dir)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="write flips.json, flips.md, flips.csv and the figures here")
    p.add_argument("--baseline", metavar="RUN", help="compare each run with this one only (a run folder "
                   "as given, or its label); its group is the baseline of the comparisons over seeds")
    p.add_argument("--data-root", metavar="DIR", help="the runs' data set (image folders or torchvision's "
                   "CIFAR files): image paths in flips.csv and flipped_samples.png")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    return p


def find_baseline(runs: list[dict], given: str) -> int:
    for i, run in enumerate(runs):
        if given in (run["run"], run["label"]) or Path(given).resolve() == Path(run["run"]).resolve():
            return i
    raise UserError(f"--baseline {given} is none of the runs given (their folders or labels: "
                    f"{', '.join(r['label'] for r in runs)})")


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.resamples < 1:
        raise UserError(f"--resamples must be positive, got {args.resamples}")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must lie in (0, 1), got {args.confidence}")
    runs = [r for r in map(load_run, args.runs) if r is not None]
    if not runs:
        raise UserError(f"none of {', '.join(args.runs)} is an update run; flips need an old and an updated model")
    # results.json's "setting" (the kind of update: old fraction, the old model's share of the
    # images, architectures) names runs apart too where it differs; a folder of predictions alone
    # is named by the folder
    names = labels([r["results"] for r in runs], [r["name"] for r in runs])
    for run, name in zip(runs, names):
        run["label"], run["group"], run["curve"] = name.label, name.group, name.curve
        method = run_method(run["results"])
        run["method"], run["b"] = method.name, method.sweep[1] if method.sweep else None
    baseline = find_baseline(runs, args.baseline) if args.baseline else None
    images = None
    if args.data_root:  # the reference run's test images, named by a run of them that records its data set
        ref = runs[baseline or 0]
        known = [r for r in runs if r["config"].get("dataset") and same_samples(ref, r)]
        images = test_images(known[0] if known else ref, args.data_root)

    flips = [flip_indicators(r["arrays"]["targets"], r["arrays"]["old_pred"], r["arrays"]["pred"], r["num_old"])
             for r in runs]
    rates = resampled(runs, flips, args.resamples, args.seed)
    entries = [analyse(r, f, q, args.confidence) for r, f, q in zip(runs, flips, rates)]
    group_list = groups(runs, entries, flips, args.confidence)
    report = json_safe({
        "runs": entries, "groups": group_list,
        "group_comparisons": group_comparisons(group_list, entries, args.confidence,
                                               None if baseline is None else runs[baseline]["group"]),
        "pairs": pairs(runs, flips, rates, args.confidence, baseline)})
    shared, table = sample_table(runs, flips, baseline or 0)
    if len(shared) < len(runs):
        warn(f"flips.csv holds the {len(shared)} runs on the test set and old model of {runs[shared[0]]['label']}; "
             f"{', '.join(r['label'] for i, r in enumerate(runs) if i not in shared)} left out")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flips.json").write_text(compact_json(report) + "\n")
    (out / "flips.md").write_text(markdown(report, runs, args.confidence, args.resamples,
                                           [runs[i]["label"] for i in shared]))
    write_csv(out / "flips.csv", runs, shared, table, images)
    flip_figures.draw_all(report, runs, shared, table, images, out)
    print(f"wrote flips.json, flips.md, flips.csv and the figures to {out}")
    return report


if __name__ == "__main__":
    main()
