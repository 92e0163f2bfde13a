"""python -m tools.plots: the b sweep on fake runs, the embeddings on a tiny --embed-dim 2 sweep."""
import sys

import pytest

from conftest import assert_figure
from tools import plots


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib figures tools.plots saves, kept for their content (what is drawn)."""
    figures = []
    real_save = plots._save

    def save(fig, out):
        figures.append(fig)
        real_save(fig, out)

    monkeypatch.setattr(plots, "_save", save)
    return figures


def test_b_sweep_figure(tmp_path, fake_run, saved_figures):
    for method in ("MPT_KL", "MPT_LM"):
        for b in (0.0, 1.0, 4.0):
            for seed in (1, 2):
                fake_run(tmp_path / "sweep" / f"{method}-b{b}-{seed}", method=method, b=b, seed=seed,
                         er_all=30 + b + seed, nfr=5 - b + seed / 10)
    plots.main(["b-sweep", str(tmp_path / "sweep"), "--out", str(tmp_path / "fig4.png")])
    assert_figure(tmp_path / "fig4.png")
    (fig,) = saved_figures
    er_ax, nfr_ax = fig.axes
    # The bars: each method's mean ER(Y_all) over its two seeds at b = 0, 1, 4; the lines its NFR.
    heights = [p.get_height() for p in er_ax.patches]
    assert heights == pytest.approx([31.5 + b for b in (0.0, 1.0, 4.0)] * 2)
    curves = [line.get_ydata() for line in nfr_ax.get_lines() if line.get_marker() == "o"]
    assert [list(c) for c in curves] == [pytest.approx([5.15 - b for b in (0.0, 1.0, 4.0)])] * 2


def test_b_sweep_puts_the_nobias_ablation_at_b_0(tmp_path, fake_run, saved_figures):
    """MPT_KL_nobias is MPT_KL at b = 0 (CE with a bias of 0 is CE): one curve over b = 0, 2, 4,
    its b = 0 tick naming the ablation; a method without b stays out."""
    for method, b in (("MPT_KL", 4.0), ("MPT_KL_nobias", None), ("MPT_KL", 2.0), ("PCT_KL", None)):
        for seed in (1, 2):
            fake_run(tmp_path / f"{method}-b{b}-{seed}", method=method, b=b, seed=seed,
                     er_all=30 + (b or 0) + seed, nfr=9 - (b or 0) + seed / 10)
    plots.main(["b-sweep", str(tmp_path), "--out", str(tmp_path / "fig4.png")])
    (fig,) = saved_figures
    er_ax, nfr_ax = fig.axes
    assert [p.get_height() for p in er_ax.patches] == pytest.approx([31.5, 33.5, 35.5])
    (curve,) = [line for line in nfr_ax.get_lines() if line.get_marker() == "o"]
    assert list(curve.get_ydata()) == pytest.approx([9.15, 7.15, 5.15])
    assert [t.get_text() for t in er_ax.get_xticklabels()] == ["0\n(*_nobias)", "2", "4"]
    assert er_ax.get_legend_handles_labels()[1] == ["MPT_KL ER(Y_all)"]


def test_b_sweep_needs_runs_that_use_b(tmp_path, fake_run, capsys):
    fake_run(tmp_path / "pct", method="PCT_KL", er_all=1.0, nfr=1.0)
    with pytest.raises(SystemExit) as exc:
        plots.main(["b-sweep", str(tmp_path), "--out", str(tmp_path / "f.png")])
    assert exc.value.code == 2 and "uses b" in capsys.readouterr().err


def test_missing_matplotlib_is_one_line_and_exit_2(tmp_path, fake_run, monkeypatch, capsys):
    fake_run(tmp_path / "run", er_all=1.0, nfr=1.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(SystemExit) as exc:
        plots.main(["b-sweep", str(tmp_path), "--out", str(tmp_path / "f.png")])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("error: the plots need matplotlib; install it with: "
                                               "pip install matplotlib")


def test_embeddings_figure(tiny_sweep, tmp_path, capsys, saved_figures):
    runs = [tiny_sweep / "MPT_KL" / b / "seed42" for b in ("b0", "b2")]
    plots.main(["embeddings", *map(str, runs), "--out", str(tmp_path / "fig3.png"), "--max-points", "30"])
    assert_figure(tmp_path / "fig3.png")
    (fig,) = saved_figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2  # one per run, each the same 30 of the 40 test images, in 10 class colours
    for ax in panels:
        assert sum(len(c.get_offsets()) for c in ax.collections) == 30
        assert len(ax.collections) == 10


def test_embeddings_need_a_2d_model(old_ckpt, capsys):
    with pytest.raises(SystemExit) as exc:
        plots.main(["embeddings", str(old_ckpt.parent / "run"), "--out", str(old_ckpt.parent / "f.png")])
    assert exc.value.code == 2 and "--embed-dim 2" in capsys.readouterr().err


def test_panel_names_read_the_method_record():
    record = {"name": "MPT_KL", "hyperparameters": {"b": 1.5, "tau": 5.0}, "defaults": {"b": 1.5, "tau": 5.0},
              "label": "MPT_KL-b1.5"}
    assert plots.panel_name("update", {"method": record}, {"method": "MPT_KL", "b": 9.0}, "f") == "MPT_KL (b=1.5)"
    assert plots.panel_name("old", {}, {}, "f") == "Old model"
    # older records: the config's method, b where the method uses it
    assert plots.panel_name("update", {}, {"method": "MPT_KL", "b": 2.0}, "f") == "MPT_KL (b=2)"
    assert plots.panel_name("update", {}, {"method": "PCT_KL", "b": 2.0}, "f") == "PCT_KL"
    assert plots.panel_name("update", {}, {}, "folder") == "folder"
