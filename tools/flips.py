"""Where the negative flips of updates are, and how sure their rates are, from the run folders'
predictions.npz (needs matplotlib for the figures).

    python -m tools.flips RUN [RUN ...] --out DIR [--resamples 10000] [--confidence 0.95] [--seed 0]

writes to DIR:
    flips.json          per run: NFR, Rel-NFR, ER(Y_old), ER(Y_all) with percentile bootstrap
                        intervals over the test samples (NFR, Rel-NFR: the old-class samples;
                        ER(Y_all): all of them), per-class NFR and PFR, the flip matrix (true class
                        x the updated model's prediction, negative flips only) and, where the run
                        saved logits, its margins; per pair of runs of the same old model on the
                        same test set: the NFR difference with a paired bootstrap interval and an
                        exact McNemar test on the samples' negative flips. Undefined values are null.
    flips.md            the same as Markdown tables, with each run's most frequent flips
    per_class_nfr.png   per-class NFR of every run, side by side
    flip_matrix_<i>.png the flip matrix of run i
    margins.png         margin histograms (z_y - max_{j != y} z_j, old-class samples) of the old
                        model and the runs, where logits were saved

Only updates have flips: runs whose results.json says "role": "old" or "new" are skipped with a
warning (one without a role counts as an update). The number of old classes C_old comes from
results.json's "num_old", the predictions' "num_old", the width of the old model's logits, or else
round(--old-fraction x the number of classes).
"""
from __future__ import annotations

import argparse
import json
import math
import zipfile
from pathlib import Path

import numpy as np
from scipy.stats import binom

from tools.plots import pyplot
from tools.results import warn
from utils.data import DATASETS
from utils.errors import UserError, exit_on_user_error
from utils.metrics import bootstrap, flip_indicators, flip_intervals, flip_metrics, percentile_interval, rate

REPORTED = ("nfr", "rel_nfr", "er_old", "er_all")
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


def paired_difference_interval(a, b, resamples=10000, confidence=0.95, seed=0):
    """Bootstrap interval of rate(a) - rate(b) (points) for indicators of the same samples: both
    are resampled with the same indices, so what the two share cancels out."""
    return percentile_interval(bootstrap(lambda x, y: rate(x) - rate(y), a, b, resamples=resamples, seed=seed),
                               confidence)


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


def margins(logits, targets) -> np.ndarray:
    """gamma = z_y - max_{j != y} z_j per sample: positive when the sample is classified right,
    the larger the safer from flipping."""
    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))
    targets = np.asarray(targets, dtype=np.int64)
    own = z[rows, targets]
    others = z.copy()
    others[rows, targets] = -np.inf
    return own - others.max(axis=1)


def margin_summary(targets, old_pred, num_old: int, logits, old_logits=None) -> tuple[dict, dict]:
    """({"old_model_median", "median", "share_below_zero_of_old_correct"}, the margins) over the
    old-class samples: medians of the old model's margins (its C_old logits; None without them)
    and the updated model's, and the percent of the samples the old model got right whose
    updated-model margin is below zero."""
    targets = np.asarray(targets, dtype=np.int64)
    old = targets < num_old
    y = targets[old]
    gamma = margins(np.asarray(logits)[old], y)
    old_gamma = margins(np.asarray(old_logits)[old][:, :num_old], y) if old_logits is not None else None
    old_correct = np.asarray(old_pred)[old] == y
    summary = {
        "old_model_median": float(np.median(old_gamma)) if old_gamma is not None and len(y) else math.nan,
        "median": float(np.median(gamma)) if len(y) else math.nan,
        "share_below_zero_of_old_correct":
            100.0 * float(np.mean(gamma[old_correct] < 0)) if old_correct.any() else math.nan,
    }
    return summary, {"old": old_gamma, "new": gamma}


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------
def load_run(run: str) -> dict | None:
    """results.json and predictions.npz of a run folder; None (with a warning) if it is not an
    update."""
    folder = Path(run)
    results_file, npz_file = folder / "results.json", folder / "predictions.npz"
    if not results_file.is_file():
        raise UserError(f"no results.json in {folder}; give finished run folders")
    try:
        results = json.loads(results_file.read_text())
    except ValueError as err:
        raise UserError(f"{results_file} is not valid JSON ({err}); is the run finished?") from None
    # A results.json without a role (written by other code) counts as an update's.
    if results.get("role", "update") != "update":
        warn(f"skipping {folder}: a {results['role']!r} run, not an update; it has no flips")
        return None
    if not npz_file.is_file():
        raise UserError(f"no predictions.npz in {folder}; only runs of this version of main.py save "
                        "their test predictions")
    try:
        with np.load(npz_file, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"{npz_file} cannot be read ({err}); is the run finished?") from None
    missing = [k for k in ("targets", "old_pred", "pred") if k not in arrays]
    if missing:
        raise UserError(f"{npz_file} lacks {', '.join(missing)}; it is not a predictions file of main.py")
    n = len(arrays["targets"])
    for key in ("old_pred", "pred", "logits", "old_logits"):
        if key in arrays and len(arrays[key]) != n:
            raise UserError(f"{npz_file}: {key} has {len(arrays[key])} rows for {n} targets")
    config = results.get("config") or {}
    num_classes = class_count(results, arrays)
    num_old = old_class_count(results, arrays, num_classes)
    return {"run": run, "results": results, "config": config, "arrays": arrays,
            "num_classes": max(num_classes, int(arrays["pred"].max(initial=-1)) + 1), "num_old": num_old,
            "classes": results.get("classes")}


def class_count(results: dict, arrays: dict) -> int:
    """C: the class names' count, the data set's, the logits' width, else the largest target + 1."""
    if results.get("classes"):
        return len(results["classes"])
    dataset = (results.get("config") or {}).get("dataset")
    if DATASETS.get(dataset):
        return DATASETS[dataset]
    if "logits" in arrays:
        return int(arrays["logits"].shape[1])
    return int(arrays["targets"].max(initial=-1)) + 1


def old_class_count(results: dict, arrays: dict, num_classes: int) -> int:
    """C_old, from the first source that has it (see the module's docstring)."""
    if results.get("num_old") is not None:
        return int(results["num_old"])
    if "num_old" in arrays:
        return int(arrays["num_old"])
    if "old_logits" in arrays:
        return int(arrays["old_logits"].shape[1])
    fraction = (results.get("config") or {}).get("old_fraction", 0.5)
    return int(round(float(fraction) * num_classes))


def analyse(run: dict, resamples: int, confidence: float, seed: int) -> dict:
    """The flips.json entry of one run."""
    a, num_old = run["arrays"], run["num_old"]
    targets, old_pred, pred = a["targets"], a["old_pred"], a["pred"]
    metrics = flip_metrics(targets, old_pred, pred, num_old)
    for key in REPORTED:  # a different value means a different C_old or other predictions
        saved = run["results"].get(key)
        if isinstance(saved, (int, float)) and not _same(saved, metrics[key]):
            warn(f"{run['run']}: {key} is {metrics[key]:.4f} from predictions.npz with C_old = {num_old} "
                 f"but {saved:.4f} in results.json")
    flips = flip_indicators(targets, old_pred, pred, num_old)
    intervals = flip_intervals(flips, resamples, confidence, seed)
    er_all_ci = percentile_interval(bootstrap(lambda p, t: rate(p != t), pred, targets,
                                              resamples=resamples, seed=seed), confidence)
    counts = per_class_counts(targets, old_pred, pred, num_old)
    names = run["classes"]
    entry = {
        "run": run["run"],
        "method": run["config"].get("method", run["results"].get("method")),
        "num_old": num_old,
        "n_old": len(flips.targets),
        **{k: metrics[k] for k in REPORTED},
        "pfr": metrics["pfr"],
        "er_old_model": metrics["er_old_model"],
        "nfr_ci": list(intervals["nfr"]),
        "rel_nfr_ci": list(intervals["rel_nfr"]),
        "er_all_ci": list(er_all_ci),
        "per_class": [{"class": c, "name": names[c] if names and c < len(names) else None,
                       "n": int(n), "nfr": _percent(neg, n), "pfr": _percent(pos, n)}
                      for c, (n, neg, pos) in enumerate(zip(counts["n"], counts["negative"], counts["positive"]))],
        "flip_to": flip_matrix(targets, old_pred, pred, num_old, run["num_classes"]).tolist(),
    }
    if "logits" in a:
        entry["margin"], run["margins"] = margin_summary(targets, old_pred, num_old, a["logits"],
                                                         a.get("old_logits"))
    return entry


def pairs(runs: list[dict], entries: list[dict], resamples: int, confidence: float, seed: int) -> list[dict]:
    """Every pair (a < b) of ``runs`` (their flips.json ``entries`` alongside) scored on the same
    test samples against the same old model's predictions."""
    out = []
    for i, ra in enumerate(runs):
        for j in range(i + 1, len(runs)):
            rb = runs[j]
            if not (np.array_equal(ra["arrays"]["targets"], rb["arrays"]["targets"])
                    and np.array_equal(ra["arrays"]["old_pred"], rb["arrays"]["old_pred"])):
                continue
            if ra["num_old"] != rb["num_old"]:
                warn(f"{ra['run']} and {rb['run']} share predictions but not C_old "
                     f"({ra['num_old']} vs {rb['num_old']}); not compared")
                continue
            fa, fb = (flip_indicators(r["arrays"]["targets"], r["arrays"]["old_pred"], r["arrays"]["pred"],
                                      r["num_old"]) for r in (ra, rb))
            out.append({"a": i, "b": j, "nfr_diff": entries[i]["nfr"] - entries[j]["nfr"],
                        "nfr_diff_ci": list(paired_difference_interval(fa.negative, fb.negative, resamples,
                                                                       confidence, seed)),
                        "n01": int(np.sum(fa.negative & ~fb.negative)),
                        "n10": int(np.sum(~fa.negative & fb.negative)),
                        "mcnemar_p": mcnemar_p(fa.negative, fb.negative)})
    return out


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


# ---------------------------------------------------------------------------------------------
# Markdown and figures
# ---------------------------------------------------------------------------------------------
def class_name(run: dict, c: int) -> str:
    names = run["classes"]
    return str(names[c]) if names and c < len(names) else str(c)


def top_flips(run: dict, matrix, k: int = TOP_FLIPS) -> list[str]:
    """The k most frequent (true class -> updated prediction) negative flips, "cat -> dog: 37"."""
    matrix = np.asarray(matrix)
    order = np.argsort(-matrix, axis=None, kind="stable")[:k]
    return [f"{class_name(run, r)} -> {class_name(run, c)}: {matrix[r, c]}"
            for r, c in zip(*np.unravel_index(order, matrix.shape)) if matrix[r, c] > 0]


def _num(x, digits=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _p_value(p) -> str:
    # Small p-values in scientific notation: "0.0000" would hide how small they are.
    return f"{p:.1e}" if p is not None and p < 1e-3 else _num(p, 4)


def _ci(value, interval) -> str:
    return f"{_num(value)} [{_num(interval[0])}, {_num(interval[1])}]"


def markdown(entries: list[dict], pair_list: list[dict], runs: list[dict], confidence: float,
             resamples: int) -> str:
    level = f"{100 * confidence:g}%"
    out = [f"### Runs ({level} percentile bootstrap intervals, {resamples} resamples)", "",
           "| # | Run | Method | C_old | Old-class samples | NFR | Rel-NFR | ER(Y_old) | ER(Y_all) | PFR |",
           "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, e in enumerate(entries):
        out.append(f"| {i} | {e['run']} | {e['method'] or '?'} | {e['num_old']} | {e['n_old']} | "
                   f"{_ci(e['nfr'], e['nfr_ci'])} | {_ci(e['rel_nfr'], e['rel_nfr_ci'])} | {_num(e['er_old'])} | "
                   f"{_ci(e['er_all'], e['er_all_ci'])} | {_num(e['pfr'])} |")
    out += ["", "### Pairs (same test set and old model)", ""]
    if pair_list:
        out += [f"| a | b | NFR(a) - NFR(b) [{level}, paired] | a only / b only flips | McNemar p |",
                "| ---: | ---: | ---: | ---: | ---: |"]
        out += [f"| {p['a']} | {p['b']} | {_ci(p['nfr_diff'], p['nfr_diff_ci'])} | {p['n01']} / {p['n10']} | "
                f"{_p_value(p['mcnemar_p'])} |" for p in pair_list]
    else:
        out.append("No two runs share the test set and the old model's predictions.")
    out += ["", f"### Most frequent negative flips (true class -> updated prediction, top {TOP_FLIPS})", ""]
    for i, (e, run) in enumerate(zip(entries, runs)):
        flips = top_flips(run, e["flip_to"])
        out.append(f"- {i} ({e['method'] or '?'}): " + ("; ".join(flips) if flips else "no negative flips"))
    with_margin = [(i, e) for i, e in enumerate(entries) if "margin" in e]
    if with_margin:
        out += ["", "### Margins z_y - max_{j != y} z_j (old-class samples)", "",
                "| # | Old model median | Updated median | Below zero, of the old model's correct (%) |",
                "| ---: | ---: | ---: | ---: |"]
        out += [f"| {i} | {_num(e['margin']['old_model_median'])} | {_num(e['margin']['median'])} | "
                f"{_num(e['margin']['share_below_zero_of_old_correct'])} |" for i, e in with_margin]
    out.append("")
    return "\n".join(out)


def _label(i: int, entry: dict) -> str:
    return f"{i}: {entry['method'] or '?'}"


def plot_per_class(entries: list[dict], out: Path):
    plt = pyplot()
    num_old = max(len(e["per_class"]) for e in entries)
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.35 * num_old * len(entries) ** 0.5 + 2), 30), 4))
    width = 0.8 / len(entries)
    for i, e in enumerate(entries):
        x = [c["class"] - 0.4 + width * (i + 0.5) for c in e["per_class"]]
        ax.bar(x, [c["nfr"] if c["nfr"] is not None and math.isfinite(c["nfr"]) else 0 for c in e["per_class"]],
               width, label=_label(i, e), color=f"C{i % 10}")
    first = max(entries, key=lambda e: len(e["per_class"]))["per_class"]
    ax.set_xticks(range(num_old), [c["name"] or str(c["class"]) for c in first],
                  rotation=90 if num_old > 10 else 0, fontsize=7 if num_old > 10 else 9)
    ax.set_xlabel("old class")
    ax.set_ylabel("NFR of the class's samples (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)


def plot_flip_matrix(entry: dict, run: dict, index: int, out: Path):
    plt = pyplot()
    matrix = np.asarray(entry["flip_to"])
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.4 * cols, 16), min(1.5 + 0.4 * rows, 12)))
    image = ax.imshow(matrix, cmap="Reds", aspect="auto")
    fig.colorbar(image, ax=ax, label="negative flips")
    if rows * cols <= 400:
        for r in range(rows):
            for c in range(cols):
                if matrix[r, c]:
                    ax.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=7)
    if cols <= 30:
        ax.set_xticks(range(cols), [class_name(run, c) for c in range(cols)], rotation=90, fontsize=7)
        ax.set_yticks(range(rows), [class_name(run, r) for r in range(rows)], fontsize=7)
    ax.axvline(rows - 0.5, color="grey", lw=0.8)  # old classes to its left, new ones to its right
    ax.set_xlabel("updated model's prediction")
    ax.set_ylabel("true (old) class")
    ax.set_title(f"{_label(index, entry)}  NFR {_num(entry['nfr'])}%", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def plot_margins(entries: list[dict], runs: list[dict], out: Path):
    plt = pyplot()
    shown = [(i, e, r["margins"]) for i, (e, r) in enumerate(zip(entries, runs)) if "margins" in r]
    # The old model's margins once per distinct old model (the first run that has its logits).
    olds = {}
    for i, e, m in shown:
        if m["old"] is not None:
            olds.setdefault(runs[i]["arrays"]["old_pred"].tobytes(), (i, m["old"]))
    values = [m["new"] for _, _, m in shown] + [g for _, g in olds.values()]
    values = np.concatenate([v for v in values if len(v)]) if any(len(v) for v in values) else np.zeros(1)
    # The axis spans the central 99.8% of all margins; the few beyond are counted in the edge bins,
    # so that outliers do not squeeze the bulk of the distribution into a few bins.
    low, high = np.percentile(values, [0.1, 99.9])
    bins = np.linspace(low, high if high > low else low + 1, 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, g in olds.values():
        ax.hist(np.clip(g, low, high), bins=bins, histtype="stepfilled", color="grey", alpha=0.35,
                label="old model" if len(olds) == 1 else f"old model (of run {i})")
    for i, e, m in shown:
        share = e["margin"]["share_below_zero_of_old_correct"]
        below = "" if share is None else f" ({_num(share, 1)}% of the old model's correct < 0)"
        ax.hist(np.clip(m["new"], low, high), bins=bins, histtype="step", lw=1.5, color=f"C{i % 10}",
                label=_label(i, e) + below)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("margin z_y - max_{j != y} z_j (old-class test samples; tails in the edge bins)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out: Path):
    fig.savefig(out, dpi=120)
    pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.flips", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of updates (main.py --output-dir)")
    p.add_argument("--out", required=True, metavar="DIR", help="write flips.json, flips.md and the figures here")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level in (0, 1) (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    return p


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
    entries = [analyse(r, args.resamples, args.confidence, args.seed) for r in runs]
    pair_list = pairs(runs, entries, args.resamples, args.confidence, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = json_safe({"runs": entries, "pairs": pair_list})
    (out / "flips.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    (out / "flips.md").write_text(markdown(entries, pair_list, runs, args.confidence, args.resamples))
    plot_per_class(report["runs"], out / "per_class_nfr.png")
    for i, (e, r) in enumerate(zip(report["runs"], runs)):
        plot_flip_matrix(e, r, i, out / f"flip_matrix_{i}.png")
    if any("margins" in r for r in runs):
        plot_margins(entries, runs, out / "margins.png")
    print(f"wrote {out / 'flips.json'}, {out / 'flips.md'} and the figures in {out}")
    return report


if __name__ == "__main__":
    main()
