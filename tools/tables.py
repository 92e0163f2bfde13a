"""The paper's tables from a folder of finished runs (every results.json below it).

One table per (data set, old architecture -> new architecture); rows in the paper's order
(Old model, New model, No_Treatment, PCT_*, ELODI*, MPT ablations, MPT_KL, MPT_LM), one row per b
for the MPT variants that use it (labelled "MPT_KL (b=2)" unless b is the method's default on the
data set, as the run's results.json records it); columns ER(Y_old), ER(Y_all), NFR, Rel-NFR in
percent, "mean ± sample std" over the row's runs (usually seeds) and the number of runs. "–"
marks a value that no run of the row has: the old model only has ER(Y_old), the new reference
model no flip metrics.

    python -m tools.tables runs/                 Markdown on stdout
    python -m tools.tables runs/ --out results/  results/tables.md and results/tables.csv
    python -m tools.tables runs/ --print         a compact plain-text table
    python -m tools.tables runs/ --split val     the validation metrics (runs with --val-fraction)
    python -m tools.tables runs/ --ci            adds a column, an interval of NFR labelled as
        what it is: for a row of several runs (seeds), the t-interval of the mean NFR over them
        (mean +- t(n-1) sd / sqrt(n), scipy; "t, n seeds"), the uncertainty of the row's mean; for
        a row of one run, the percentile bootstrap interval over the test samples ("bootstrap"),
        from its predictions.npz (utils.metrics, seed 0): the uncertainty the finite test set
        gives that one trained model. Rows without either show "–".

Provenance (results.json's "code"): where the runs of a table differ in the code that made them
(commits, a changed, dirty, working tree, or code not recorded), a Code column names each row's
commits by letter, marks those of a dirty tree with "*" and runs of unknown code with "?", and a
line under the table says what the letters and marks mean; where all runs share one state, that
line alone names it. The CSV always has the row's commits ("commits"), its dirty runs and its
runs of unknown code.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from tools.flips import load_run, t_interval
from tools.results import METRICS, Row, Run, TableKey, find_runs, group
from tools.run_labels import code_marks
from utils.errors import UserError, exit_on_user_error, warn
from utils.metrics import bootstrap_interval, flip_indicators, rate

HEADERS = {"er_old": "ER(Y_old)", "er_all": "ER(Y_all)", "nfr": "NFR", "rel_nfr": "Rel-NFR"}
MISSING = "–"


def cell(row: Row, metric: str, split: str = "test") -> str:
    mean, std, n = row.stat(metric, split)
    if n == 0:
        return MISSING
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def run_nfr_interval(run: Run, resamples: int, confidence: float) -> tuple[float, float] | None:
    """The bootstrap interval of a run's NFR from its predictions.npz (the old-class test samples
    resampled, seed 0); None when the run has no predictions."""
    if run.role != "update" or not (run.path / "predictions.npz").is_file():
        return None
    try:
        loaded = load_run(str(run.path), with_margins=False)
    except UserError as err:
        warn(f"no NFR interval for {run.path}: {err}")
        return None
    a = loaded["arrays"]
    flips = flip_indicators(a["targets"], a["old_pred"], a["pred"], loaded["num_old"])
    return bootstrap_interval(rate, flips.negative, resamples=resamples, confidence=confidence, seed=0)


T_INTERVAL = "t"
BOOTSTRAP = "bootstrap"


def nfr_intervals(tables: dict, resamples: int, confidence: float) -> dict:
    """{id(row): (low, high, kind, runs behind it)} for the rows with an NFR interval: kind
    T_INTERVAL, the t-interval of the mean over a row's runs with a finite NFR where there are at
    least 2; BOOTSTRAP, the bootstrap interval over the test samples of a row's single run."""
    out = {}
    for rows in tables.values():
        for row in rows:
            values = [v for v in (r.metrics().get("nfr") for r in row.runs)
                      if isinstance(v, (int, float)) and math.isfinite(v)]
            if len(values) >= 2:
                out[id(row)] = (*t_interval(values, confidence), T_INTERVAL, len(values))
            elif len(row.runs) == 1:
                found = run_nfr_interval(row.runs[0], resamples, confidence)
                if found is not None and not any(map(math.isnan, found)):
                    out[id(row)] = (float(found[0]), float(found[1]), BOOTSTRAP, 1)
    return out


def ci_cell(row: Row, intervals: dict) -> str:
    if id(row) not in intervals:
        return MISSING
    low, high, kind, k = intervals[id(row)]
    what = (f"t, {k} seeds" + (", no spread" if low == high else "")) if kind == T_INTERVAL else "bootstrap"
    return f"[{low:.2f}, {high:.2f}] ({what})"


def code_cells(rows: list[Row]):
    """The Code column's cells (None where all the runs share one code state) and the line under
    the table (see the module's docstring)."""
    marks = code_marks(r.code for row in rows for r in row.runs)
    cells = [marks.mark([r.code for r in row.runs]) for row in rows] if marks.shown else None
    return cells, marks.footnote([r.code for row in rows for r in row.runs])


def table_cells(rows: list[Row], split: str, intervals: dict | None = None,
                confidence: float = 0.95) -> list[list[str]]:
    """Header line and one line of cells per row (and the NFR interval column with ``intervals``,
    the Code column where the runs need it)."""
    ci = [f"NFR {100 * confidence:g}% CI"] if intervals is not None else []
    codes, _ = code_cells(rows)
    lines = [["Method", "Runs", *(HEADERS[m] for m in METRICS), *ci, *(["Code"] if codes else [])]]
    lines += [[row.label, str(len(row.runs)), *(cell(row, m, split) for m in METRICS),
               *([ci_cell(row, intervals)] if ci else []), *([codes[i]] if codes else [])]
              for i, row in enumerate(rows)]
    return lines


def title(key: TableKey, split: str) -> str:
    return key.title() + (" (validation)" if split == "val" else "")


def markdown(tables: dict, split: str = "test", intervals: dict | None = None, confidence: float = 0.95) -> str:
    out = []
    for key, rows in tables.items():
        header, *body = table_cells(rows, split, intervals, confidence)
        out += [f"### {title(key, split)}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in body]
        out += ["", code_cells(rows)[1], ""]
    return "\n".join(out)


def plain_text(tables: dict, split: str = "test", intervals: dict | None = None, confidence: float = 0.95) -> str:
    """Aligned columns for a terminal."""
    out = []
    for key, rows in tables.items():
        lines = table_cells(rows, split, intervals, confidence)
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        out.append(title(key, split))
        out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                for line in lines]
        out += [code_cells(rows)[1], ""]
    return "\n".join(out)


def csv_text(tables: dict, split: str = "test", intervals: dict | None = None) -> str:
    """One line per row of every table; numbers unformatted, empty where missing; the row's
    commits (";"-separated), its runs of a dirty tree and of unknown code (with ``intervals``, also
    the NFR interval's bounds, its kind and the number of runs behind it)."""
    def number(x):
        return "" if math.isnan(x) else f"{x:.6g}"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*TableKey._fields, "split", "row", "method", "b", "runs",
                     *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")),
                     "commits", "dirty_runs", "unknown_code_runs",
                     *(["nfr_ci_low", "nfr_ci_high", "nfr_ci_kind", "nfr_ci_runs"] if intervals is not None else [])])
    for key, rows in tables.items():
        for row in rows:
            stats = [row.stat(m, split)[:2] for m in METRICS]
            ci = []
            if intervals is not None:
                low, high, kind, k = intervals.get(id(row), (math.nan, math.nan, "", 0))
                ci = [number(low), number(high), kind, k]
            codes = [r.code for r in row.runs]
            commits = ";".join(dict.fromkeys(c.commit for c in codes if c.commit))
            writer.writerow([*key, split, row.label, row.method, "" if row.b is None else f"{row.b:g}",
                             len(row.runs), *(number(x) for pair in stats for x in pair), commits,
                             sum(c.dirty for c in codes), sum(c.commit is None for c in codes), *ci])
    return buf.getvalue()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="RUNS", help="folders searched for results.json")
    p.add_argument("--out", metavar="DIR", help="write tables.md and tables.csv here instead of printing Markdown")
    p.add_argument("--print", dest="plain", action="store_true", help="print a compact plain-text table")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the metrics on the --val-fraction hold-out")
    p.add_argument("--ci", action="store_true",
                   help="add an interval of NFR: the t-interval of the mean over a row's seeds, or for a "
                        "row of one run the bootstrap interval over the test samples from its "
                        "predictions.npz (test split)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples for --ci (default 10000)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level for --ci (default 0.95)")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.ci and args.split != "test":
        raise UserError("--ci resamples the saved test predictions; it cannot go with --split val")
    if args.resamples < 1:
        raise UserError(f"--resamples must be positive, got {args.resamples}")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must lie in (0, 1), got {args.confidence}")
    tables = group(find_runs(args.folders))
    intervals = nfr_intervals(tables, args.resamples, args.confidence) if args.ci else None
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(markdown(tables, args.split, intervals, args.confidence))
        (out / "tables.csv").write_text(csv_text(tables, args.split, intervals))
        print(f"wrote {out / 'tables.md'} and {out / 'tables.csv'}")
    if args.plain:
        print(plain_text(tables, args.split, intervals, args.confidence), end="")
    elif not args.out:
        print(markdown(tables, args.split, intervals, args.confidence), end="")


if __name__ == "__main__":
    main()
