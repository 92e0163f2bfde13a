"""The figures of tools/flips.py, drawn from its report (flips.json's content) and runs.

Each group (runs differing only in the seed) has one colour in every figure; the figures that
compare runs share one scale; legends sit outside the data.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from tools.mpl import pyplot
from tools.run_labels import NO_BIAS

# Above this many old classes a flip matrix is a speckle: the top confusions are shown instead.
MATRIX_MAX_CLASSES = 30
TOP_CONFUSIONS = 10
SAMPLES_SHOWN = 24


def class_name(names: list, index: int) -> str:
    """The name of class ``index``, or its number where the run records no names."""
    return str(names[index]) if index < len(names) else str(index)


def draw_all(report: dict, runs: list[dict], shared: list[int], table: dict, images, out: Path):
    """Every figure the report calls for (see tools/flips.py) into the folder ``out``."""
    colours = group_colours(report["groups"])
    plot_per_class(report["groups"], runs[0], colours, out / "per_class_nfr.png")
    entries = report["runs"]
    if max(e["num_old"] for e in entries) <= MATRIX_MAX_CLASSES:
        vmax = max([t[2] for e in entries for t in e["flip_to"]], default=1)
        for e, run in zip(entries, runs):
            plot_flip_matrix(e, run, vmax, out / f"flip_matrix_{file_label(e['label'])}.png")
    else:
        plot_top_confusions(entries, runs, colours, out / "top_confusions.png")
    plot_flip_split(entries, colours, out / "flip_split.png")
    if any(e.get("margin") for e in entries):
        plot_margins(entries, runs, colours, out / "margins.png")
    curves = sweep_curves(report["groups"])
    if curves:
        plot_nfr_vs_b(curves, colours, out / "nfr_vs_b.png")
    if images is not None:
        plot_flipped_samples(runs, shared, table, images, out / "flipped_samples.png")


def file_label(label: str) -> str:
    """A run's label as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", label)


def group_colours(groups: list[dict]) -> dict:
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    return {g["label"]: cmap(i % cmap.N) for i, g in enumerate(groups)}


def _legend_below(ax, ncol: int):
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=max(1, ncol), fontsize=8, frameon=False)


def _class_names(run: dict, count: int) -> list[str]:
    names = run["classes"]
    return [str(names[c]) if names and c < len(names) else str(c) for c in range(count)]


def plot_per_class(groups: list[dict], run: dict, colours: dict, out: Path):
    """Per old class, each group's NFR (mean over its seeds, sd as error bar); above
    MATRIX_MAX_CLASSES classes, each group's per-class NFR sorted, as a line."""
    plt = pyplot()
    shown = [g for g in groups if g.get("per_class_nfr_mean")]
    num_old = max(len(g["per_class_nfr_mean"]) for g in shown)
    many = num_old > MATRIX_MAX_CLASSES
    fig, ax = plt.subplots(figsize=(8 if many else min(max(6.0, 0.3 * num_old * len(shown) ** 0.5 + 2), 20), 4.2))
    width = 0.8 / len(shown)
    for i, g in enumerate(shown):
        mean = np.array([math.nan if v is None else v for v in g["per_class_nfr_mean"]], dtype=float)
        sd = np.array([0 if v is None else v for v in g["per_class_nfr_sd"]], dtype=float)
        label = f"{g['label']} ({g['n']} run{'s' if g['n'] > 1 else ''})"
        if many:
            order = np.argsort(-np.nan_to_num(mean, nan=-1))
            ax.plot(np.arange(len(mean)), mean[order], color=colours[g["label"]], lw=1.2, label=label)
        else:
            x = np.arange(len(mean)) - 0.4 + width * (i + 0.5)
            ax.bar(x, np.nan_to_num(mean), width, yerr=sd if g["n"] > 1 else None, color=colours[g["label"]],
                   label=label, error_kw={"lw": 0.8})
    if many:
        ax.set_xlabel("old classes, each group's sorted by its mean NFR (no sd: too many classes)")
    else:
        ax.set_xticks(range(num_old), _class_names(run, num_old), rotation=45 if num_old > 6 else 0,
                      ha="right" if num_old > 6 else "center", fontsize=8)
        ax.set_xlabel("old class")
    ax.set_ylabel("NFR of the class's samples (%)")
    ax.set_title("Per-class NFR (mean ± sd over seeds)", fontsize=10)
    _legend_below(ax, min(len(shown), 3))
    fig.tight_layout()
    _save(fig, out)


def plot_flip_matrix(entry: dict, run: dict, vmax: int, out: Path):
    """True old class x the updated prediction, negative flips, on the scale shared by all runs."""
    plt = pyplot()
    rows, cols = entry["num_old"], run["num_classes"]
    matrix = np.zeros((rows, cols), dtype=np.int64)
    for r, c, n in entry["flip_to"]:
        matrix[r, c] = n
    fig, ax = plt.subplots(figsize=(2.5 + 0.45 * cols, 1.8 + 0.45 * rows))
    image = ax.imshow(matrix, cmap="Reds", vmin=0, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label="negative flips (one scale for all runs)")
    for r in range(rows):
        for c in range(cols):
            if matrix[r, c]:  # white on the dark cells, black on the light ones
                ax.text(c, r, str(matrix[r, c]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[r, c] > 0.55 * vmax else "black")
    names = _class_names(run, cols)
    ax.set_xticks(range(cols), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(rows), names[:rows], fontsize=8)
    ax.axvline(rows - 0.5, color="grey", lw=1)  # old classes to its left, new ones to its right
    ax.set_xlabel("updated model's prediction (old | new classes)")
    ax.set_ylabel("true (old) class")
    ax.set_title(f"{entry['label']}: NFR {_num(entry['nfr'])}%", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def plot_top_confusions(entries: list[dict], runs: list[dict], colours: dict, out: Path):
    """Each run's most frequent (true -> predicted) negative flips, one panel per run, one x scale."""
    plt = pyplot()
    cols = min(len(entries), 3)
    rows = math.ceil(len(entries) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.28 * TOP_CONFUSIONS * rows + 1.2 * rows),
                             squeeze=False)
    top = max([t[2] for e in entries for t in e["flip_to"]], default=1)
    for ax, e, run in zip(axes.flat, entries, runs):
        ranked = sorted(e["flip_to"], key=lambda t: (-t[2], t[0], t[1]))[:TOP_CONFUSIONS]
        names = run["classes"] or []
        ax.barh(range(len(ranked)), [t[2] for t in ranked], color=colours[e["group"]])
        ax.set_yticks(range(len(ranked)), [f"{class_name(names, r)} -> {class_name(names, c)}"
                                           + (" (new)" if c >= e["num_old"] else "") for r, c, _ in ranked],
                      fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.05)
        ax.set_title(f"{e['label']}: {_num(e['flips_to_new_classes'])}% of flips into new classes", fontsize=9)
        ax.set_xlabel("negative flips", fontsize=8)
    for ax in list(axes.flat)[len(entries):]:
        ax.set_visible(False)
    fig.tight_layout()
    _save(fig, out)


def plot_flip_split(entries: list[dict], colours: dict, out: Path):
    """Each run's NFR split into flips to another old class and flips into a new class."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.35 * len(entries)))
    y = np.arange(len(entries))
    # Undefined values (None or NaN: no old-class sample, no new class) draw no bar.
    nfr = np.nan_to_num(np.array([e["nfr"] for e in entries], dtype=float))
    into_new = nfr * np.nan_to_num(np.array([e["flips_to_new_classes"] for e in entries], dtype=float)) / 100
    colour = [colours[e["group"]] for e in entries]
    ax.barh(y, nfr - into_new, color=colour)
    ax.barh(y, into_new, left=nfr - into_new, color=colour, hatch="///", edgecolor="white")
    ax.set_yticks(y, [e["label"] for e in entries], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("NFR (%): negative flips of the old-class samples, by where they land")
    # the legend in grey: the bars' colours are the groups'
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="grey"),
               plt.Rectangle((0, 0), 1, 1, facecolor="grey", hatch="///", edgecolor="white")]
    ax.legend(handles, ["old -> another old class", "old -> a new class"], loc="upper center",
              bbox_to_anchor=(0.5, -0.35 if len(entries) < 6 else -0.15),
              ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, out)


def plot_margins(entries: list[dict], runs: list[dict], colours: dict, out: Path):
    """Histograms of the old-class samples' margins: the old model's once per old model, and each
    group's as a line (a group of several seeds: the mean count per bin over its runs, so that a
    study of many runs stays readable)."""
    plt = pyplot()
    shown = [(e, r) for e, r in zip(entries, runs) if r["margin"] is not None]
    olds = {}
    for _, r in shown:
        if r["old_margin"] is not None:
            olds.setdefault(r["arrays"]["old_pred"].tobytes(), r["old_margin"])
    values = np.concatenate([r["margin"] for _, r in shown] + list(olds.values()))
    values = values[np.isfinite(values)]
    # The axis spans the central 99.8% of all margins; the few beyond are counted in the edge bins,
    # so that outliers do not squeeze the bulk of the distribution into a few bins.
    low, high = np.percentile(values, [0.1, 99.9]) if len(values) else (0.0, 1.0)
    bins = np.linspace(low, high if high > low else low + 1, 60)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, g in enumerate(olds.values()):
        ax.hist(np.clip(g, low, high), bins=bins, histtype="stepfilled", color="grey", alpha=0.35,
                label="old model" if len(olds) == 1 else f"old model {k + 1}")
    groups = {}
    for e, r in shown:
        groups.setdefault(e["group"], []).append((e, r))
    for group, members in groups.items():
        counts = np.mean([np.histogram(np.clip(r["margin"], low, high), bins=bins)[0] for _, r in members], axis=0)
        shares = [e["margin"]["share_below_zero_of_old_correct"] for e, _ in members]
        shares = [x for x in shares if x is not None]
        name = members[0][0]["label"] if len(members) == 1 else f"{group} (mean of {len(members)} runs)"
        mean = float(np.mean(shares)) if shares else None
        spread = f" ± {_num(float(np.std(shares, ddof=1)), 1)}" if len(shares) > 1 else ""
        label = f"{name}: {_num(mean, 1)}{spread}% of the old model's correct < 0"
        ax.stairs(counts, bins, lw=1.4, color=colours[group], label=label)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("margin z_y - max_{j != y} z_j (old-class test samples; tails in the edge bins)")
    ax.set_ylabel("samples")
    _legend_below(ax, 2)
    fig.tight_layout()
    _save(fig, out)


def sweep_curves(groups: list[dict]) -> dict:
    """{curve: its groups in increasing b} for the curves (a method with its other settings) seen
    at two or more values of b; a _nobias ablation's group is its method's point at b = 0."""
    curves = {}
    for g in groups:
        if g["b"] is not None:
            curves.setdefault(g["curve"], []).append(g)
    return {c: sorted(gs, key=lambda g: g["b"]) for c, gs in curves.items() if len({g["b"] for g in gs}) > 1}


def plot_nfr_vs_b(curves: dict, colours: dict, out: Path):
    """NFR, ER(Y_all) and the share of flips into new classes against b, mean ± sd over seeds; a
    point of one run (no sd) is drawn without an error bar."""
    plt = pyplot()
    panels = [("nfr", "NFR (%)"), ("er_all", "ER(Y_all) (%)"), ("flips_to_new_classes", "flips into new classes (%)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, title) in zip(axes, panels):
        for k, (curve, gs) in enumerate(curves.items()):
            b = [g["b"] for g in gs]
            mean = [math.nan if g[f"{key}_mean"] is None else g[f"{key}_mean"] for g in gs]
            seeds = "/".join(str(g["n"]) for g in gs)
            ablation = "".join(f"; b = 0: {g['method']}" for g in gs if g["method"].endswith(NO_BIAS))
            ax.plot(b, mean, marker="o", color=f"C{k}", label=f"{curve} (runs per b: {seeds}{ablation})")
            spread = [i for i, g in enumerate(gs) if g[f"{key}_sd"] is not None and not math.isnan(g[f"{key}_sd"])]
            if spread:
                ax.errorbar([b[i] for i in spread], [mean[i] for i in spread],
                            yerr=[gs[i][f"{key}_sd"] for i in spread], fmt="none", capsize=3, color=f"C{k}")
        ax.set_xlabel("b")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, legend_labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, legend_labels, loc="lower center", ncol=min(len(curves), 3), fontsize=8, frameon=False)
    fig.suptitle("mean ± sample sd over seeds (a point of one run: no bar)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    _save(fig, out)


def stratified_samples(targets, flips, index, count: int = SAMPLES_SHOWN) -> list[int]:
    """Up to ``count`` positions of samples that flip in at least one run, stratified over their
    true classes: round after round, each class (in class order) gives its next sample, its
    samples ranked by the runs they flip in (most first), then by test-set index; a class with no
    sample left drops out. So no class fills the figure, and each shows its most flipped first."""
    targets, flips, index = (np.asarray(a) for a in (targets, flips, index))
    queues = []
    for c in np.unique(targets[flips > 0]):
        members = np.flatnonzero((targets == c) & (flips > 0))
        queues.append(members[np.lexsort((index[members], -flips[members]))].tolist())
    chosen = []
    for rank in range(max(map(len, queues), default=0)):
        chosen += [q[rank] for q in queues if rank < len(q)]
    return chosen[:count]


def plot_flipped_samples(runs: list[dict], shared: list[int], table: dict, images, out: Path):
    """Test images that flip, stratified over the true classes (``stratified_samples``), each
    captioned "true -> predicted (k of n runs)", the prediction being the one most of those runs
    make."""
    plt = pyplot()
    chosen = stratified_samples(table["target"], table["flips"], table["index"])
    if not chosen:
        return
    chosen = sorted(chosen, key=lambda k: int(table["target"][k]))  # shown by class, in the order chosen
    ref = runs[shared[0]]
    names = _class_names(ref, ref["num_classes"])
    preds = np.stack(table["pred"], axis=1)  # (samples, runs)
    cols = 6
    rows = math.ceil(len(chosen) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.1 * cols, 2.3 * rows), squeeze=False)
    for ax, k in zip(axes.flat, chosen):
        true = int(table["target"][k])
        wrong = preds[k][(preds[k] != true) & (table["old_pred"][k] == true)]
        predicted = int(np.bincount(wrong).argmax())
        ax.imshow(images.image(int(table["index"][k])), interpolation="nearest")
        ax.set_title(f"{names[true]} -> {names[predicted]}\n({table['flips'][k]} of {len(shared)} runs)", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_visible(False)
    classes = len(set(int(table["target"][k]) for k in chosen))
    fig.suptitle(f"test images that flip (true -> updated prediction): {len(chosen)} stratified over the "
                 f"{classes} true classes\n(the classes take turns, each giving its next most flipped image, "
                 "ties by lowest test index); shown by class", fontsize=10)
    fig.tight_layout()
    _save(fig, out)


def _num(x, digits=2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _save(fig, out: Path):
    fig.savefig(out, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
