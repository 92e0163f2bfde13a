"""Choose MPT's margin bias b from a sweep, on validation metrics only.

For each method that uses b (MPT_KL, MPT_LM, MPT_nodistillation) and each table (data set, old ->
new architecture), the chosen b has the lowest validation NFR among the values of b whose
validation ER(Y_all) is at most the b = 0 run's plus --tolerance points: a larger b trades
accuracy on the new classes for fewer flips, and the tolerance caps what may be given up.
Values are means over the seeds of each b; ties go to the smaller b. The sweep must have been
trained with --val-fraction F (tools/sweep_b.sh passes main.py flags through).

    python -m tools.select_b runs/sweep_b [--tolerance 1.0] [--out selected_b.json]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tools.results import find_runs, group, uses_b
from utils.errors import UserError, exit_on_user_error


def choose_b(points: dict[float, tuple[float, float]], tolerance: float) -> float:
    """``points`` maps b to (validation ER(Y_all), validation NFR)."""
    if 0.0 not in points or math.isnan(points[0.0][0]):
        raise UserError("no b = 0 run with validation metrics to compare ER(Y_all) against; "
                        "include 0 in the grid of b")
    limit = points[0.0][0] + tolerance
    eligible = [b for b, (er_all, nfr) in points.items() if er_all <= limit and not math.isnan(nfr)]
    if not eligible:
        raise UserError("no b has a validation NFR")
    return min(eligible, key=lambda b: (points[b][1], b))


def selections(folders, tolerance: float) -> list[dict]:
    """One record per (table, method that uses b with its other settings, as labelled in the
    tables): the points of the sweep and the chosen b."""
    out = []
    for key, rows in group(find_runs(folders)).items():
        curves = sorted({row.curve for row in rows if uses_b(row.method)})
        for curve in curves:
            points = {}
            for row in rows:
                er_all, _, n = row.stat("er_all", "val")
                if row.curve == curve and n:
                    points[row.b] = {"b": row.b, "runs": len(row.runs), "val_er_all": er_all,
                                     "val_nfr": row.stat("nfr", "val")[0]}
            if not points:
                continue
            record = {"dataset": key.dataset, "old_arch": key.old_arch, "new_arch": key.new_arch,
                      "method": curve, "tolerance": tolerance, "points": sorted(points.values(), key=lambda p: p["b"])}
            try:
                record["b"] = choose_b({b: (p["val_er_all"], p["val_nfr"]) for b, p in points.items()}, tolerance)
            except UserError as err:
                record["b"], record["error"] = None, str(err)
            out.append(record)
    if not out:
        raise UserError(f"no run of a method that uses b has validation metrics under "
                        f"{', '.join(map(str, folders))}; train the sweep with --val-fraction F")
    return out


def report(record: dict) -> str:
    lines = [f"{record['dataset']}: {record['old_arch']} -> {record['new_arch']}, {record['method']} (validation)",
             f"{'b':>6}  {'runs':>4}  {'ER(Y_all)':>9}  {'NFR':>6}"]
    for p in record["points"]:
        mark = "  <- selected" if p["b"] == record["b"] else ""
        lines.append(f"{p['b']:>6g}  {p['runs']:>4}  {p['val_er_all']:>9.2f}  {p['val_nfr']:>6.2f}{mark}")
    if record["b"] is None:
        lines.append(f"no b selected for {record['method']}: {record['error']}")
    else:
        lines.append(f"selected b = {record['b']:g} for {record['method']}: the lowest validation NFR with "
                     f"validation ER(Y_all) at most {record['tolerance']:g} above b = 0's")
    return "\n".join(lines) + "\n"


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.select_b", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", metavar="SWEEP", help="folders searched for results.json")
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="allowed rise of validation ER(Y_all) over b = 0, in percentage points")
    p.add_argument("--out", metavar="FILE", help="also write the selections as JSON")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if not (math.isfinite(args.tolerance) and args.tolerance >= 0):
        raise UserError(f"--tolerance must be a non-negative number, got {args.tolerance}")
    records = selections(args.folders, args.tolerance)
    print("\n".join(report(r) for r in records), end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(records, indent=2) + "\n")
        print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()
