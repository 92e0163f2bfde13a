"""The paper's tables from a folder of finished runs (every results.json below it).

One table per (data set, old architecture -> new architecture); rows in the paper's order
(Old model, New model, No_Treatment, PCT_*, ELODI*, MPT ablations, MPT_KL, MPT_LM), one row per b
for the MPT variants that use it (labelled "MPT_KL (b=2)" unless b is main.py's default for the
data set); columns ER(Y_old), ER(Y_all), NFR, Rel-NFR in percent, "mean ± sample std" over the
row's runs (usually seeds) and the number of runs. "–" marks a value that no run of the row has:
the old model only has ER(Y_old), the new reference model no flip metrics.

    python -m tools.tables runs/                 Markdown on stdout
    python -m tools.tables runs/ --out results/  results/tables.md and results/tables.csv
    python -m tools.tables runs/ --print         a compact plain-text table
    python -m tools.tables runs/ --split val     the validation metrics (runs with --val-fraction)
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from pathlib import Path

from tools.results import METRICS, Row, TableKey, find_runs, group
from utils.errors import exit_on_user_error

HEADERS = {"er_old": "ER(Y_old)", "er_all": "ER(Y_all)", "nfr": "NFR", "rel_nfr": "Rel-NFR"}
MISSING = "–"


def cell(row: Row, metric: str, split: str = "test") -> str:
    mean, std, n = row.stat(metric, split)
    if n == 0:
        return MISSING
    return f"{mean:.2f}" if math.isnan(std) else f"{mean:.2f} ± {std:.2f}"


def table_cells(rows: list[Row], split: str) -> list[list[str]]:
    """Header line and one line of cells per row."""
    lines = [["Method", "Runs", *(HEADERS[m] for m in METRICS)]]
    lines += [[row.label, str(len(row.runs)), *(cell(row, m, split) for m in METRICS)] for row in rows]
    return lines


def title(key: TableKey, split: str) -> str:
    return key.title() + (" (validation)" if split == "val" else "")


def markdown(tables: dict, split: str = "test") -> str:
    out = []
    for key, rows in tables.items():
        header, *body = table_cells(rows, split)
        out += [f"### {title(key, split)}", "", "| " + " | ".join(header) + " |",
                "|" + "|".join([" --- "] + [" ---: "] * (len(header) - 1)) + "|"]
        out += ["| " + " | ".join(line) + " |" for line in body]
        out.append("")
    return "\n".join(out)


def plain_text(tables: dict, split: str = "test") -> str:
    """Aligned columns for a terminal."""
    out = []
    for key, rows in tables.items():
        lines = table_cells(rows, split)
        widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
        out.append(title(key, split))
        out += ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                for line in lines]
        out.append("")
    return "\n".join(out)


def csv_text(tables: dict, split: str = "test") -> str:
    """One line per row of every table; numbers unformatted, empty where missing."""
    def number(x):
        return "" if math.isnan(x) else f"{x:.6g}"

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["dataset", "old_arch", "new_arch", "split", "row", "method", "b", "runs",
                     *(f"{m}_{s}" for m in METRICS for s in ("mean", "std"))])
    for key, rows in tables.items():
        for row in rows:
            stats = [row.stat(m, split)[:2] for m in METRICS]
            writer.writerow([*key, split, row.label, row.method, "" if row.b is None else f"{row.b:g}",
                             len(row.runs), *(number(x) for pair in stats for x in pair)])
    return buf.getvalue()


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.tables", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="RUNS", help="folders searched for results.json")
    p.add_argument("--out", metavar="DIR", help="write tables.md and tables.csv here instead of printing Markdown")
    p.add_argument("--print", dest="plain", action="store_true", help="print a compact plain-text table")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the metrics on the --val-fraction hold-out")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    tables = group(find_runs(args.folders))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(markdown(tables, args.split))
        (out / "tables.csv").write_text(csv_text(tables, args.split))
        print(f"wrote {out / 'tables.md'} and {out / 'tables.csv'}")
    if args.plain:
        print(plain_text(tables, args.split), end="")
    elif not args.out:
        print(markdown(tables, args.split), end="")


if __name__ == "__main__":
    main()
