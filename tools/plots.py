"""The paper's figures from finished runs (needs matplotlib).

    python -m tools.plots embeddings RUN [RUN ...] --out fig3.png   Figure 3: one panel per run of a
        --embed-dim 2 model, its 2-D test embeddings (model.features) coloured by class
    python -m tools.plots b-sweep SWEEP --out fig4.png              Figure 4: ER(Y_all) as bars and
        NFR as lines against b, for the MPT variants found under SWEEP (tools/sweep_b.sh); a
        _nobias ablation among them is its method's point at b = 0
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from tools.mpl import pyplot
from tools.results import REFERENCES, Row, TableKey, find_runs, group, uses_b
from tools.run_labels import NO_BIAS, run_method, sweep_point
from utils.checkpoint import load_model, read_checkpoint
from utils.data import load_dataset
from utils.errors import UserError, exit_on_user_error
from utils.inputs import eval_batches, normalizer
from utils.settings import flag


# ---------------------------------------------------------------------------------------------
# Figure 3: 2-D embeddings
# ---------------------------------------------------------------------------------------------
def run_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The model checkpoint of a run folder and its results.json ({} when absent). The path in
    results.json comes first (--save may have put it elsewhere), then the folder's own."""
    results_file = run_dir / "results.json"
    try:
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    except ValueError as err:
        raise UserError(f"{results_file} is not valid JSON ({err}); is the run finished?") from None
    candidates = [Path(results["checkpoint"])] if "checkpoint" in results else []
    candidates.append(run_dir / "checkpoint.pth")
    for path in candidates:
        if path.is_file():
            return path, results
    raise UserError(f"no model checkpoint for the run {run_dir} (looked at "
                    f"{', '.join(map(str, candidates))}); give finished run folders")


def embeddings(run_dir: Path, data_root: str | None, batch_size: int, device: str):
    """(2-D test embeddings, targets, class names, number of old classes, panel title)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    path, results = run_checkpoint(run_dir)
    header = read_checkpoint(path, "trained")
    if header.get("embed_dim") != 2:
        raise UserError(f"{path} has a {header.get('embed_dim') or 'full-size'} embedding; plot runs "
                        "trained with --embed-dim 2")
    role = header.get("role", "update")
    model, ckpt = load_model(path, role, num_classes=header["num_classes"], dataset=header["dataset"])
    config = ckpt.get("config", {})
    data = _dataset(ckpt["dataset"], data_root or config.get("data_root", "./data"))
    test = data.test.classes_below(ckpt["num_classes"])  # the old model never saw the new classes
    # The inputs exactly as the run evaluated them (statistics and size from its own flags).
    transform = normalizer(SimpleNamespace(**config))
    model = model.to(device)
    with torch.inference_mode():
        feats = [model.features(x.to(device)).float().cpu() for x, _ in eval_batches(test, batch_size, transform)]
    name = panel_name(role, results, config, run_dir.name)
    metrics = results or ckpt.get("metrics", {})
    if "nfr" in metrics:
        name += f"\nER(Y_all) {metrics['er_all']:.2f}  NFR {metrics['nfr']:.2f}"
    return torch.cat(feats).numpy(), test.targets.numpy(), data.classes, ckpt["num_old_classes"], name


def panel_name(role: str, results: dict, config: dict, folder: str) -> str:
    """A panel's title: the reference model, or the method with its b as results.json's "method"
    record gives them (older records: the checkpoint's config, b where the method uses it)."""
    if role in REFERENCES:
        return REFERENCES[role]
    method = run_method(results) if results else None
    if method is not None and method.recorded:
        name, b = method.name, method.b
    else:
        name = config.get("method", folder)
        b = config.get("b") if uses_b(name) else None
    return name if b is None else f"{name} (b={b:g})"


_DATASETS = {}


def _dataset(name: str, root: str):
    """Each data set is decoded once however many panels show it."""
    if (name, root) not in _DATASETS:
        _DATASETS[name, root] = load_dataset(name, root, download=False)
    return _DATASETS[name, root]


def plot_embeddings(run_dirs, out: Path, data_root=None, batch_size=512, device="cpu", max_points=None):
    plt = pyplot()
    panels = [embeddings(Path(d), data_root, batch_size, device) for d in run_dirs]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    num_classes = max(int(t.max()) + 1 for _, t, _, _, _ in panels)
    cmap = plt.get_cmap("tab10" if num_classes <= 10 else "tab20" if num_classes <= 20 else "turbo")
    colour = [cmap(c if num_classes <= 20 else c / max(num_classes - 1, 1)) for c in range(num_classes)]
    for ax, (z, t, classes, num_old, name) in zip(axes.flat, panels):
        keep = np.arange(len(t))
        if max_points and len(t) > max_points:  # the same subsample size in every panel
            keep = np.sort(rng.choice(len(t), max_points, replace=False))
        for c in np.unique(t):
            sel = keep[t[keep] == c]
            kind = "old" if c < num_old else "new"
            ax.scatter(z[sel, 0], z[sel, 1], s=2, color=colour[c], alpha=0.6, linewidths=0,
                       label=f"{classes[c]} ({kind})")
        ax.set_title(name, fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if num_classes <= 20:
        handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda hl: len(hl[0]))
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), markerscale=4,
                   fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.04 * math.ceil(len(labels) / 5), 1, 1))
    else:
        fig.tight_layout()
    _save(fig, out)


# ---------------------------------------------------------------------------------------------
# Figure 4: the sweep of b
# ---------------------------------------------------------------------------------------------
def sweep_rows(folders) -> dict[TableKey, dict[str, list[Row]]]:
    """For each table, the rows of each curve (a method that uses b, with its other settings),
    in increasing b; a _nobias ablation's row is its method's point at b = 0 (``sweep_point``),
    under its own method's name."""
    out = {}
    for key, rows in group(find_runs(folders)).items():
        by_method = {}
        for row in rows:
            point = sweep_point(row.method, row.b)
            if point is not None:
                curve = replace(row, method=point[0]).curve
                by_method.setdefault(curve, []).append(replace(row, b=point[1]))
        if by_method:
            out[key] = {curve: sorted(rows, key=lambda row: row.b) for curve, rows in by_method.items()}
    if not out:
        raise UserError(f"no run of a method that uses b (MPT_KL, MPT_LM, ...) under "
                        f"{', '.join(map(str, folders))}")
    return out


def plot_b_sweep(folders, out: Path, split="test"):
    plt = pyplot()

    tables = sweep_rows(folders)
    fig, axes = plt.subplots(1, len(tables), figsize=(6.5 * len(tables), 4.2), squeeze=False)
    suffix = " (validation)" if split == "val" else ""
    for ax, (key, by_method) in zip(axes.flat, tables.items()):
        bs = sorted({row.b for rows in by_method.values() for row in rows})
        slot = {b: i for i, b in enumerate(bs)}  # evenly spaced, whatever the spacing of b
        width = 0.8 / len(by_method)
        nfr_ax = ax.twinx()
        for m, (method, rows) in enumerate(sorted(by_method.items())):
            colour = f"C{m}"
            er = [row.stat("er_all", split) for row in rows]
            nfr = [row.stat("nfr", split) for row in rows]
            x = [slot[row.b] - 0.4 + width * (m + 0.5) for row in rows]
            ax.bar(x, [s[0] for s in er], width, yerr=[0 if math.isnan(s[1]) else s[1] for s in er],
                   color=colour, alpha=0.45, label=f"{method} ER(Y_all)")
            nfr_ax.errorbar([slot[row.b] for row in rows], [s[0] for s in nfr],
                            yerr=[0 if math.isnan(s[1]) else s[1] for s in nfr], color=colour,
                            marker="o", label=f"{method} NFR")
        # b = 0 read from the _nobias ablations: the tick says so
        ablation_at = {row.b for rows in by_method.values() for row in rows if row.method.endswith(NO_BIAS)}
        ax.set_xticks(range(len(bs)), [f"{b:g}" + (f"\n(*{NO_BIAS})" if b in ablation_at else "") for b in bs])
        ax.set_xlabel("b")
        ax.set_ylabel(f"ER(Y_all) %{suffix} (bars)")
        nfr_ax.set_ylabel(f"NFR %{suffix} (lines)")
        nfr_ax.set_ylim(bottom=0)
        ax.set_title(key.title(), fontsize=10)
        handles, labels = (sum(pair, []) for pair in zip(ax.get_legend_handles_labels(),
                                                         nfr_ax.get_legend_handles_labels()))
        ax.legend(handles, labels, fontsize=7, ncol=len(by_method), loc="upper center",
                  bbox_to_anchor=(0.5, -0.2 if ablation_at else -0.15), frameon=False)
    fig.tight_layout()
    _save(fig, out)


def _save(fig, out: Path):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150)
    print(f"wrote {out}")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m tools.plots", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    e = sub.add_parser("embeddings", help="Figure 3: 2-D embeddings of --embed-dim 2 runs")
    e.add_argument("runs", nargs="+", metavar="RUN", help="run folders (one panel each)")
    e.add_argument("--out", default="embeddings.png", metavar="PNG")
    e.add_argument("--data-root", metavar="DIR", help="the test data (default: the run's own --data-root)")
    e.add_argument("--max-points", type=int, metavar="N", help="plot a random N test samples per panel")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    s = sub.add_parser("b-sweep", help="Figure 4: ER(Y_all) and NFR against b")
    s.add_argument("folders", nargs="+", metavar="SWEEP", help="folders searched for results.json")
    s.add_argument("--out", default="b_sweep.png", metavar="PNG")
    s.add_argument("--split", choices=["test", "val"], default="test")
    return p


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.figure == "embeddings":
        for setting in ("max_points", "batch_size"):
            if getattr(args, setting) is not None and getattr(args, setting) <= 0:
                raise UserError(f"{flag(setting)} must be positive, got {getattr(args, setting)}")
        plot_embeddings(args.runs, args.out, args.data_root, args.batch_size, args.device, args.max_points)
    else:
        plot_b_sweep(args.folders, args.out, args.split)


if __name__ == "__main__":
    main()
