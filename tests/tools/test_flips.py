"""python -m tools.flips and its statistics on hand-made predictions with answers counted by hand."""
import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_figure, assert_ok, script_env
from tools import flips
from utils.metrics import (
    bootstrap,
    bootstrap_interval,
    bootstrap_rates,
    flip_indicators,
    flip_intervals,
    flip_metrics,
    margins,
    margins_agreeing_with,
    percentile_interval,
    rate,
)

# Ten test samples, 4 classes, C_old = 2 (classes 0 and 1 are old); as in tests/utils/test_metrics.py.
#   sample      0  1  2  3  4  5  6  7  8  9
TARGETS = [0, 0, 1, 1, 1, 0, 2, 3, 2, 1]
OLD_PRED = [0, 0, 1, 0, 0, 0, 1, 0, 1, 1]
PRED = [0, 1, 3, 1, 0, 0, 2, 2, 2, 1]
# Class 0: samples 0 1 5; negative flip 1 (0 -> 1).
# Class 1: samples 2 3 4 9; negative flip 2 (1 -> 3), positive flip 3.
CLASSES = ["cat", "dog", "car", "ship"]


def write_run(folder, targets=TARGETS, old_pred=OLD_PRED, pred=PRED, role="update", method="MPT_KL",
              num_old=2, classes=CLASSES, dataset="cifar10", old_fraction=None, npz=None, record=None,
              code=None, seed=0):
    """A run folder as main.py writes it: results.json (metrics from flip_metrics) and
    predictions.npz; ``num_old=None`` / ``classes=None`` leave them out, ``npz`` adds arrays,
    ``record`` is results.json's "method" record and ``code`` its "code" (both absent without)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"method": method, "dataset": dataset, "old_ckpt": "old.pth", "seed": seed, "b": 4.0}
    if old_fraction is not None:
        config["old_fraction"] = old_fraction
    results = {"role": role, "checkpoint": str(folder / "checkpoint.pth"), "config": config}
    if record is not None:
        results["method"] = record
    if code is not None:
        results["code"] = code
    if role == "update":
        results.update(flip_metrics(targets, old_pred, pred, num_old or 2))
    if num_old is not None:
        results["num_old"] = num_old
    if classes is not None:
        results["classes"] = classes
    (folder / "results.json").write_text(json.dumps(results))
    if role == "update":
        np.savez(folder / "predictions.npz", targets=np.asarray(targets, np.int64),
                 old_pred=np.asarray(old_pred, np.int64), pred=np.asarray(pred, np.int64), **(npz or {}))
    return folder


@pytest.fixture
def saved_figures(monkeypatch) -> dict:
    """The figures tools.flips draws, by file name, kept open for a test to read (still saved)."""
    from tools import flip_figures

    figures = {}
    real_save = flip_figures._save

    def save(fig, out):
        figures[out.name] = fig
        real_save(fig, out)

    monkeypatch.setattr(flip_figures, "_save", save)
    return figures


def strict_json(path):
    """flips.json read back; a NaN or Infinity token fails (JSON has neither)."""
    def refuse(token):
        raise AssertionError(f"{token} written to {path}")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# The statistics
# ---------------------------------------------------------------------------------------------
def test_per_class_counts_and_flip_matrix_hand_counted():
    counts = flips.per_class_counts(TARGETS, OLD_PRED, PRED, 2)
    assert counts["n"].tolist() == [3, 4]
    assert counts["negative"].tolist() == [1, 1]
    assert counts["positive"].tolist() == [0, 1]
    matrix = flips.flip_matrix(TARGETS, OLD_PRED, PRED, 2, 4)
    # sample 1: cat -> dog (an old class); sample 2: dog -> ship (a new class)
    assert matrix.tolist() == [[0, 1, 0, 0], [0, 0, 0, 1]]
    assert matrix.sum() == flip_indicators(TARGETS, OLD_PRED, PRED, 2).negative.sum()


def test_mcnemar_exact_p_hand_computed():
    # n01 = 1 (a flips, b not), n10 = 6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    assert flips.mcnemar_p(a, b) == pytest.approx(0.125)
    assert flips.mcnemar_p(b, a) == pytest.approx(0.125)
    # balanced discordance: 2 * P(X <= 3 | 6, 1/2) > 1, capped at 1
    assert flips.mcnemar_p([1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]) == 1.0
    # no discordant sample: nothing against the null
    assert flips.mcnemar_p([1, 0, 1], [1, 0, 1]) == 1.0
    # n01 = 0, n10 = 5: 2 / 2^5
    assert flips.mcnemar_p([0] * 5, [1] * 5) == pytest.approx(2 / 32)


def test_small_p_values_keep_their_size_in_the_markdown():
    assert flips._p_value(0.5) == "0.5000"
    assert flips._p_value(1.6e-6) == "1.6e-06"
    assert flips._p_value(None) == "–"


def normal_interval(percent: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The textbook 95 % interval of a proportion p (given in percent, as ``rate`` returns it),
    p +- z sqrt(p (1 - p) / n): for a rate over hundreds of samples the percentile bootstrap must
    agree with it closely."""
    p = percent / 100
    half = z * math.sqrt(p * (1 - p) / n)
    return 100 * (p - half), 100 * (p + half)


def test_bootstrap_interval_agrees_with_the_normal_interval_and_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    x = rng.random(200) < 0.3
    point = rate(x)
    low, high = bootstrap_interval(rate, x, resamples=2000, seed=0)
    # Within about two steps of the rate's grid (0.5 points) and the noise of a 2.5 % quantile.
    assert (low, high) == pytest.approx(normal_interval(point, 200), abs=1.2)
    more = np.tile(x, 25)  # the same rate on 25 times the samples: a fifth of the width
    low25, high25 = bootstrap_interval(rate, more, resamples=2000, seed=0)
    assert (low25, high25) == pytest.approx(normal_interval(point, 5000), abs=0.3)
    assert (high25 - low25) == pytest.approx((high - low) / 5, rel=0.15)
    # seeded: the same seed, the same interval; a wider level, a wider interval
    assert bootstrap_interval(rate, x, resamples=2000, seed=0) == (low, high)
    low99, high99 = bootstrap_interval(rate, x, resamples=2000, confidence=0.99, seed=0)
    assert low99 < low and high99 > high


def test_bootstrap_chunks_do_not_change_the_resamples(monkeypatch):
    """Memory is bounded by drawing the index matrix in chunks of rows; the values must not
    depend on the chunk size when each chunk holds whole rows of an even length."""
    import utils.metrics

    x = np.arange(50) % 7 == 0
    whole = bootstrap(rate, x, resamples=300, seed=3)
    monkeypatch.setattr(utils.metrics, "BOOTSTRAP_CHUNK", 50 * 7)   # 7 rows at a time
    chunked = bootstrap(rate, x, resamples=300, seed=3)
    assert chunked.shape == (300,)
    np.testing.assert_array_equal(whole, chunked)


def test_percentile_interval_ignores_undefined_resamples():
    assert percentile_interval([1.0, math.nan, 3.0], 0.5) == (1.5, 2.5)
    assert all(math.isnan(v) for v in percentile_interval([math.nan, math.nan]))


def test_nfr_intervals_and_the_paired_difference():
    rng = np.random.default_rng(0)
    n = 2000
    targets = rng.integers(0, 4, n)
    old_pred = np.where(rng.random(n) < 0.8, targets, rng.integers(0, 2, n))
    pred = np.where(rng.random(n) < 0.8, targets, rng.integers(0, 4, n))
    f = flip_indicators(targets, old_pred, pred, 2)
    metrics = flip_metrics(targets, old_pred, pred, 2)
    ci = flip_intervals(f, resamples=1000)
    n_old = int((targets < 2).sum())  # NFR is a rate over the old-class samples, in percent
    assert ci["nfr"] == pytest.approx(normal_interval(metrics["nfr"], n_old), abs=0.6)
    assert ci["rel_nfr"][0] < metrics["rel_nfr"] < ci["rel_nfr"][1]
    # The rates of several indicators over shared resamples: each column is what bootstrap()
    # gives it alone with that seed, so columns of two runs differ as a paired bootstrap.
    pred_b = pred.copy()
    pred_b[:40] = targets[:40]
    fb = flip_indicators(targets, old_pred, pred_b, 2)
    rates = bootstrap_rates(np.stack([f.negative, fb.negative], axis=1), resamples=1000, seed=5)
    np.testing.assert_array_equal(rates[:, 1], bootstrap(rate, fb.negative, resamples=1000, seed=5))
    np.testing.assert_array_equal(rates[:, 0] - rates[:, 1],
                                  bootstrap(lambda x, y: rate(x) - rate(y), f.negative, fb.negative,
                                            resamples=1000, seed=5))
    # the paired interval is much narrower than what two independent intervals would allow
    low, high = percentile_interval(rates[:, 0] - rates[:, 1])
    assert 0 < low and high - low < 0.5 * (ci["nfr"][1] - ci["nfr"][0])


def test_margins_hand_computed():
    logits = np.array([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5], [1.0, 1.0, 0.0]])
    # sample 0, y=0: 3 - 1; sample 1, y=1: 2 - 2.5; sample 2, y=1: a tie, 1 - 1
    np.testing.assert_allclose(margins(logits, [0, 1, 1]), [2.0, -0.5, 0.0])
    # old model right on samples 0 and 2 of three old-class samples; updated margins -1, 3, -1
    old_correct = np.array([True, False, True])
    summary = flips.margin_summary(old_correct, np.array([-1.0, 3.0, -1.0]), np.array([2.0, -1.0, 3.0]))
    assert summary == {"old_model_median": 2.0, "median": -1.0, "share_below_zero_of_old_correct": 100.0}
    assert math.isnan(flips.margin_summary(old_correct, np.array([-1.0, 3.0, -1.0]))["old_model_median"])


def test_margins_in_chunks_and_agreeing_with_the_predictions(monkeypatch):
    import utils.metrics

    rng = np.random.default_rng(0)
    logits, targets = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    whole = margins(logits, targets)
    monkeypatch.setattr(utils.metrics, "MARGIN_CHUNK", 8)
    np.testing.assert_array_equal(margins(logits, targets), whole)
    # predictions not made from these logits: a sample predicted right whose margin is -0.01, one
    # predicted wrong whose margin is +0.01: both are taken as ties, 0; the others keep theirs
    pred, targets = np.array([0, 1, 2, 0]), np.array([0, 0, 2, 1])
    agreed = margins_agreeing_with(pred, targets, np.array([-0.01, 0.01, 1.5, -2.0]))
    np.testing.assert_array_equal(agreed, np.array([0.0, 0.0, 1.5, -2.0], np.float32))
    assert agreed[1] <= 0 <= agreed[0]


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------
def test_command_on_hand_made_runs(tmp_path, capsys):
    a = write_run(tmp_path / "a")
    b = write_run(tmp_path / "b", method="No_Treatment", pred=[1, 1, 3, 1, 0, 0, 2, 2, 2, 0])
    other_old = list(OLD_PRED)
    other_old[4] = 1
    c = write_run(tmp_path / "c", old_pred=other_old, method="PCT_KL")   # another old model
    report = flips.main([str(a), str(b), str(c), "--out", str(tmp_path / "out"), "--resamples", "500"])
    out = tmp_path / "out"
    assert strict_json(out / "flips.json") == report
    runs = report["runs"]
    assert [r["run"] for r in runs] == [str(a), str(b), str(c)]
    assert [r["method"] for r in runs] == ["MPT_KL", "No_Treatment", "PCT_KL"]
    assert [r["label"] for r in runs] == ["MPT_KL-b4-seed0", "No_Treatment-seed0", "PCT_KL-seed0"]
    first = runs[0]
    assert first["n_old"] == 7
    expected = flip_metrics(TARGETS, OLD_PRED, PRED, 2)
    for key in ("nfr", "rel_nfr", "er_old", "er_all"):
        assert first[key] == pytest.approx(expected[key]), key
    # the intervals are those of utils.metrics for the same seed: NFR and Rel-NFR over the
    # old-class samples, ER(Y_all) over all of them
    f = flip_indicators(TARGETS, OLD_PRED, PRED, 2)
    expected_ci = flip_intervals(f, resamples=500, seed=0)
    assert first["nfr_ci"] == pytest.approx(list(expected_ci["nfr"]))
    assert first["rel_nfr_ci"] == pytest.approx(list(expected_ci["rel_nfr"]))
    assert first["er_all_ci"] == pytest.approx(list(bootstrap_interval(rate, np.array(PRED) != np.array(TARGETS),
                                                                         resamples=500, seed=0)))
    assert first["per_class"] == {"name": ["cat", "dog"], "n": [3, 4], "nfr": [pytest.approx(100 / 3), 25.0],
                                  "pfr": [0.0, 25.0]}
    assert first["flip_to"] == [[0, 1, 1], [1, 3, 1]]  # cat -> dog once, dog -> ship once
    assert first["flips_to_new_classes"] == 50.0
    assert "margin" not in first  # no logits saved
    # b: samples 0 (cat -> dog) and 9 (dog -> cat) flip as well, sample 2 too: NFR 4/7.
    assert runs[1]["nfr"] == pytest.approx(400 / 7)
    # Only a and b share the old model's predictions.
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("MPT_KL-b4-seed0", "No_Treatment-seed0")]
    pair = report["pairs"][0]
    assert pair["nfr_diff"] == pytest.approx(200 / 7 - 400 / 7)
    assert pair["nfr_diff_ci"][0] <= pair["nfr_diff"] <= pair["nfr_diff_ci"][1]
    # a's flips (samples 1, 2) are among b's (0, 1, 2, 9): n01 = 0, n10 = 2, p = 2 / 4
    assert (pair["n01"], pair["n10"], pair["mcnemar_p"]) == (0, 2, pytest.approx(0.5))
    assert pair["p_holm"] == pytest.approx(0.5)  # one pair: nothing to adjust
    md = (out / "flips.md").read_text()
    assert md.startswith("### Groups")
    assert "cat -> dog: 1" in md and "dog -> ship: 1" in md
    assert "| MPT_KL-b4-seed0 | No_Treatment-seed0 |" in md
    for label in ("MPT_KL-b4-seed0", "No_Treatment-seed0", "PCT_KL-seed0"):
        assert_figure(out / f"flip_matrix_{label}.png", 200, 150)
    assert not (out / "margins.png").exists()


def test_nan_is_written_as_null(tmp_path):
    # The updated model is right on every old-class sample: ER(Y_old) = 0, Rel-NFR undefined.
    right = [t if t < 2 else 0 for t in TARGETS]
    run = write_run(tmp_path / "r", pred=right)
    flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "50"])
    text = (tmp_path / "out" / "flips.json").read_text()
    assert "NaN" not in text
    entry = strict_json(tmp_path / "out" / "flips.json")["runs"][0]
    assert entry["rel_nfr"] is None and entry["rel_nfr_ci"] == [None, None]
    assert entry["flips_to_new_classes"] is None  # no flips to share out
    assert entry["nfr"] == 0.0 and entry["er_old"] == 0.0


def test_margins_from_saved_logits(tmp_path):
    n = len(TARGETS)
    logits = np.zeros((n, 4), np.float16)
    logits[np.arange(n), PRED] = 2.0               # the updated model's argmax, margin +-2
    old_logits = np.zeros((n, 2), np.float16)
    old_logits[np.arange(n), np.minimum(OLD_PRED, 1)] = 1.0
    run = write_run(tmp_path / "r", npz={"logits": logits, "old_logits": old_logits})
    report = flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "50"])
    margin = report["runs"][0]["margin"]
    # Old-class samples 0 1 2 3 4 5 9: updated margins +2 where PRED is right (0 3 5 9), -2 else;
    # old margins +1 where OLD_PRED is right (0 1 2 5 9), -1 else.
    assert margin["median"] == 2.0 and margin["old_model_median"] == 1.0
    # of the old model's 5 right answers, 2 (samples 1 and 2) have a negative updated margin
    assert margin["share_below_zero_of_old_correct"] == pytest.approx(40.0)
    assert_figure(tmp_path / "out" / "margins.png", 200, 150)


def test_margins_png_draws_a_group_of_seeds_as_one_line_of_their_mean_counts(tmp_path, saved_figures):
    from matplotlib.patches import StepPatch

    n = len(TARGETS)
    runs = []
    for seed, size in ((1, 2.0), (2, 1.0)):   # margins +-2 at one seed, +-1 at the other
        logits = np.zeros((n, 4), np.float16)
        logits[np.arange(n), PRED] = size
        runs.append(write_run(tmp_path / f"seed{seed}", npz={"logits": logits}, seed=seed))
    flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "20"])
    ax = saved_figures["margins.png"].axes[0]
    (line,) = [p for p in ax.patches if isinstance(p, StepPatch)]
    data = line.get_data()
    counts, edges = data.values, data.edges
    margins_by_seed = [[2.0 if PRED[i] == t else -2.0 for i, t in enumerate(TARGETS) if t < 2],
                       [1.0 if PRED[i] == t else -1.0 for i, t in enumerate(TARGETS) if t < 2]]
    expected = np.mean([np.histogram(np.clip(m, edges[0], edges[-1]), bins=edges)[0] for m in margins_by_seed], axis=0)
    np.testing.assert_allclose(counts, expected)
    assert "(mean of 2 runs)" in line.get_label()


@pytest.mark.parametrize("results_num_old, arrays, classes, old_fraction, expected", [
    (3, {"num_old": np.int64(1)}, None, None, 3),                      # results.json first
    (None, {"num_old": np.int64(1)}, None, None, 1),                   # then the predictions'
    (None, {"old_logits": np.zeros((10, 3), np.float16)}, None, None, 3),  # the old head's width
    (None, {}, CLASSES, 0.75, 3),                                      # round(0.75 * 4 classes)
    (None, {}, None, None, 5),                                         # cifar10: round(0.5 * 10)
])
def test_number_of_old_classes(tmp_path, results_num_old, arrays, classes, old_fraction, expected):
    run = write_run(tmp_path / "r", num_old=results_num_old, classes=classes, old_fraction=old_fraction,
                    npz=arrays)
    loaded = flips.load_run(str(run))
    assert loaded["num_old"] == expected


def call_flips(capsys, *args) -> subprocess.CompletedProcess:
    """``python -m tools.flips args`` in this process: exit code, stdout, stderr."""
    capsys.readouterr()
    try:
        flips.main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def test_other_roles_are_skipped_and_errors_are_one_line(tmp_path, capsys):
    update = write_run(tmp_path / "update")
    new = write_run(tmp_path / "new", role="new")
    proc = call_flips(capsys, update, new, "--out", tmp_path / "out", "--resamples", 20)
    assert proc.returncode == 0 and "skipping" in proc.stderr and str(new) in proc.stderr
    assert len(strict_json(tmp_path / "out" / "flips.json")["runs"]) == 1
    proc = call_flips(capsys, new, "--out", tmp_path / "out2")
    # the warning about the skipped run, then one error line
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error: none of")
    (update / "predictions.npz").unlink()
    proc = call_flips(capsys, update, "--out", tmp_path / "out3")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "predictions.npz" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out3").exists()
    proc = call_flips(capsys, tmp_path / "missing", "--out", tmp_path / "out3")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "results.json" in proc.stderr


@pytest.mark.slow
def test_module_command_line(tmp_path):
    run = write_run(tmp_path / "r")
    proc = subprocess.run([sys.executable, "-m", "tools.flips", str(run), "--out", str(tmp_path / "out"),
                           "--resamples", "100", "--seed", "1", "--confidence", "0.9"],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=300)
    assert_ok(proc)
    assert strict_json(tmp_path / "out" / "flips.json")["runs"][0]["nfr"] == pytest.approx(200 / 7)


def test_results_without_a_role_count_as_an_update(tmp_path, capsys):
    """Run folders written by other code: results.json with no role and the method at its top
    level are analysed, not skipped."""
    run = write_run(tmp_path / "r")
    results = json.loads((run / "results.json").read_text())
    del results["role"], results["config"]
    results["method"] = "MyMethod"
    (run / "results.json").write_text(json.dumps(results))
    proc = call_flips(capsys, run, "--out", tmp_path / "out", "--resamples", 20)
    assert proc.returncode == 0 and "skipping" not in proc.stderr
    entry = strict_json(tmp_path / "out" / "flips.json")["runs"][0]
    assert entry["method"] == "MyMethod" and entry["nfr"] == pytest.approx(200 / 7)


# ---------------------------------------------------------------------------------------------
# A study: labels, groups over seeds, Holm, --baseline, flips.csv, the b sweep, the images
# ---------------------------------------------------------------------------------------------
def test_holm_against_a_hand_worked_example():
    # sorted 0.01, 0.02, 0.03, 0.5 scaled by 4, 3, 2, 1: 0.04, 0.06, 0.06, 0.5 (running maximum)
    assert flips.holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # 0.04 x 3 = 0.12, then 0.04 x 2 = 0.08 raised to the running maximum 0.12; 0.9 x 1
    assert flips.holm([0.04, 0.04, 0.9]) == pytest.approx([0.12, 0.12, 0.9])
    # 0.6 x 2 capped at 1, and 0.7 x 1 raised to it
    assert flips.holm([0.7, 0.6]) == pytest.approx([1.0, 1.0])
    assert flips.holm([]) == []


def test_welch_t_df_interval_and_p_are_scipys():
    from scipy.stats import ttest_ind

    a, b = [6.1, 6.1, 7.3], [15.42, 17.62]
    w = flips.welch(a, b, 0.9)
    expected = ttest_ind(a, b, equal_var=False)
    assert w.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert w.ci == pytest.approx(tuple(expected.confidence_interval(0.9)))
    assert (w.t, w.df, w.p) == pytest.approx((expected.statistic, expected.df, expected.pvalue))
    # Welch-Satterthwaite by hand: v = s^2 / n per side, df = (va + vb)^2 / (va^2 / (na-1) + vb^2 / (nb-1))
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 2
    assert w.df == pytest.approx((va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1))
    assert w.t == pytest.approx(w.diff / math.sqrt(va + vb))
    # no spread on either side: Welch has no degrees of freedom, so no t, interval or p
    w = flips.welch([6.1, 6.1], [15.4, 15.4], 0.95)
    assert w.diff == pytest.approx(-9.3) and all(math.isnan(x) for x in (*w.ci, w.t, w.df, w.p))


def test_t_interval_of_the_mean_is_scipys():
    from scipy.stats import t

    values = [6.1, 7.3, 9.0, 5.5]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    expected = t.interval(0.9, 3, loc=mean, scale=sd / 2)
    assert flips.t_interval(values, 0.9) == pytest.approx(expected)
    assert flips.t_interval([1.0, None, 3.0, math.nan], 0.95) == pytest.approx(
        t.interval(0.95, 1, loc=2.0, scale=math.sqrt(2) / math.sqrt(2)))   # undefined values left out
    assert all(map(math.isnan, flips.t_interval([4.0], 0.95)))             # one run: no interval
    assert flips.t_interval([6.1, 6.1], 0.95) == (6.1, 6.1)                # no spread: the mean itself


def test_no_tool_or_util_reads_code_with_ast():
    """Labels come from what results.json records, not from parsing the source."""
    import re

    for folder in ("tools", "utils"):
        for path in (REPO / folder).glob("*.py"):
            assert not re.search(r"^\s*(import ast\b|from ast import)", path.read_text(), re.M), path


def record(name, hyperparameters, defaults):
    """results.json's "method" record as utils/cli.py writes it (label by methods.method_label)."""
    from methods import method_label

    return {"name": name, "hyperparameters": hyperparameters, "defaults": defaults,
            "label": method_label(name, hyperparameters, defaults)}


MPT_KL_DEFAULTS = {"b": 4.0, "alpha": 1.0, "beta": 5.0, "tau": 5.0}


def test_labels_come_from_the_method_record():
    from tools.run_labels import labels

    def run(name, values, defaults, **config):
        # main.py's config holds the method's own hyperparameters, no other method's
        return {"config": {"method": name, **values, **config}, "method": record(name, values, defaults)}

    pct_lm = {"alpha": 1.0, "beta": 5.0, "lm_weight": 0.4}
    records = [
        run("MPT_KL", dict(MPT_KL_DEFAULTS, b=2.0), MPT_KL_DEFAULTS, dataset="cifar100", seed=1, arch="resnet18"),
        run("MPT_KL", dict(MPT_KL_DEFAULTS, tau=2.0), MPT_KL_DEFAULTS, dataset="cifar100", seed=1, arch="resnet18"),
        # ImageNet's b is 1.5: the record's defaults say so, and b is shown as always
        run("MPT_KL", dict(MPT_KL_DEFAULTS, b=1.5), dict(MPT_KL_DEFAULTS, b=1.5), dataset="imagenet", seed=7,
            arch="resnet50"),
        run("PCT_LM", dict(pct_lm, lm_weight=0.04), pct_lm, dataset="cifar100", seed=1, arch="resnet18"),
    ]
    names = labels(records)
    assert [n.label for n in names] == [
        "MPT_KL-b2-arch=resnet18-dataset=cifar100-seed1",
        "MPT_KL-b4-tau2-arch=resnet18-dataset=cifar100-seed1",   # tau off its default of 5
        "MPT_KL-b1.5-arch=resnet50-dataset=imagenet-seed7",
        # lm_weight is PCT_LM's own (in its method part), not a setting in which the runs differ
        "PCT_LM-lm_weight0.04-arch=resnet18-dataset=cifar100-seed1"]
    assert [n.group for n in names[:2]] == ["MPT_KL-b2-arch=resnet18-dataset=cifar100",
                                            "MPT_KL-b4-tau2-arch=resnet18-dataset=cifar100"]
    assert [n.curve for n in names[:2]] == ["MPT_KL-arch=resnet18-dataset=cifar100",
                                            "MPT_KL-tau2-arch=resnet18-dataset=cifar100"]
    # the same run twice: still two labels
    twice = labels([{"config": {"seed": 3}, "method": record("No_Treatment", {}, {})}] * 2)
    assert [n.label for n in twice] == ["No_Treatment-seed3", "No_Treatment-seed3#2"]


def test_labels_of_records_older_than_the_method_record():
    """Without results.json's "method": the config's method, b where the config has one and the
    name says the method takes it, every other difference as a setting."""
    from tools.run_labels import labels, run_method

    common = {"dataset": "cifar10", "alpha": 1.0, "tau": 5.0, "lm_weight": 0.4, "b": 4.0}
    records = [{"config": dict(common, method="MPT_KL", seed=1)},
               {"config": dict(common, method="MPT_KL", b=2.0, seed=2)},
               {"config": dict(common, method="MPT_KL_nobias", seed=1)},          # takes no b
               {"config": dict(common, method="MPT_nodistillation", seed=1)},
               {"config": dict(common, method="PCT_KL", seed=1)},                 # b given, not taken
               {"config": dict(common, method="PCT_LM", lm_weight=0.04, seed=1)}]
    assert [n.label for n in labels(records)] == [
        "MPT_KL-b4-lm_weight=0.4-seed1", "MPT_KL-b2-lm_weight=0.4-seed2", "MPT_KL_nobias-lm_weight=0.4-seed1",
        "MPT_nodistillation-b4-lm_weight=0.4-seed1", "PCT_KL-lm_weight=0.4-seed1", "PCT_LM-lm_weight=0.04-seed1"]
    assert run_method(records[1]).b == 2.0 and run_method(records[2]).b is None
    # old and new records together: the new record's own hyperparameters are in its method part
    new = {"config": {"dataset": "cifar10", "method": "MPT_KL", "seed": 1, **MPT_KL_DEFAULTS},
           "method": record("MPT_KL", MPT_KL_DEFAULTS, MPT_KL_DEFAULTS)}
    old = {"config": dict(common, method="MPT_KL", tau=2.0, seed=1)}
    # (lm_weight, held by the old record alone, tells nothing apart: no MPT_KL run has another one)
    assert [n.label for n in labels([new, old])] == ["MPT_KL-b4-seed1", "MPT_KL-b4-tau=2-seed1"]


# 12 test samples, 6 classes, C_old = 3; the old model right on samples 0-7, wrong on 8.
STUDY_TARGETS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 4, 5]
STUDY_OLD = [0, 0, 0, 1, 1, 1, 2, 2, 1, 3, 3, 3]
# Which of the old model's right samples (0-7) each run flips, and to what; the rest it gets right.
STUDY = {  # (method, b, seed): {sample: updated prediction}
    ("MPT_KL", 2.0, 1): {0: 3},
    ("MPT_KL", 2.0, 2): {0: 3, 1: 4},
    ("MPT_KL", 2.0, 3): {0: 4, 4: 0, 6: 5},
    ("MPT_KL", 4.0, 1): {0: 1},
    ("MPT_KL", 4.0, 2): {},
    ("No_Treatment", 4.0, 1): {0: 3, 1: 3, 3: 4, 6: 1},
    ("No_Treatment", 4.0, 2): {0: 3, 2: 5, 3: 4, 6: 1, 7: 0},
}


def write_study(root):
    folders = []
    for (method, b, seed), flipped in STUDY.items():
        pred = [t if t < 3 or i >= 9 else t for i, t in enumerate(STUDY_TARGETS)]
        for sample, to in flipped.items():
            pred[sample] = to
        run = write_run(root / f"{method}-{b:g}-{seed}", targets=STUDY_TARGETS, old_pred=STUDY_OLD, pred=pred,
                        method=method, num_old=3, classes=list("abcdef"))
        results = json.loads((run / "results.json").read_text())
        results["config"].update(b=b, seed=seed)
        (run / "results.json").write_text(json.dumps(results))
        folders.append(run)
    return folders


def test_a_study_of_seven_runs(tmp_path):
    runs = write_study(tmp_path / "runs")
    out = tmp_path / "out"
    report = flips.main([*map(str, runs), "--out", str(out), "--resamples", "200"])
    assert [r["label"] for r in report["runs"]] == [
        "MPT_KL-b2-seed1", "MPT_KL-b2-seed2", "MPT_KL-b2-seed3", "MPT_KL-b4-seed1", "MPT_KL-b4-seed2",
        "No_Treatment-seed1", "No_Treatment-seed2"]
    groups = {g["label"]: g for g in report["groups"]}
    assert list(groups) == ["MPT_KL-b2", "MPT_KL-b4", "No_Treatment"]
    # NFR over the 9 old-class samples: b2 flips 1, 2, 3 samples; b4 1, 0; No_Treatment 4, 5
    for label, counts in (("MPT_KL-b2", [1, 2, 3]), ("MPT_KL-b4", [1, 0]), ("No_Treatment", [4, 5])):
        nfr = [100 * c / 9 for c in counts]
        assert groups[label]["n"] == len(counts)
        assert groups[label]["nfr_mean"] == pytest.approx(np.mean(nfr))
        assert groups[label]["nfr_sd"] == pytest.approx(np.std(nfr, ddof=1))
    assert groups["MPT_KL-b2"]["runs"] == ["MPT_KL-b2-seed1", "MPT_KL-b2-seed2", "MPT_KL-b2-seed3"]
    # sample 0 flips in every b2 run; samples 0, 3 and 6 in both No_Treatment runs; none in both b4 runs
    assert [groups[g]["flip_in_every_run"] for g in groups] == [1, 0, 3]
    # class a (samples 0-2) of b2: 1/3, 2/3, 1/3 flipped
    assert groups["MPT_KL-b2"]["per_class_nfr_mean"][0] == pytest.approx(100 * 4 / 9)
    assert groups["MPT_KL-b2"]["per_class_nfr_sd"][0] == pytest.approx(np.std([100 / 3, 200 / 3, 100 / 3], ddof=1))
    # into new classes (3, 4, 5): b2 seed 3 sends 2 of its 3 flips there
    assert report["runs"][2]["flips_to_new_classes"] == pytest.approx(200 / 3)
    # every pair of the 7 runs: 3 + 1 + 1 of two seeds of one group, 16 of two groups, each
    # McNemar p adjusted by Holm within its family
    assert len(report["pairs"]) == 21
    within = [x for x in report["pairs"] if x["same_group"]]
    assert [(x["a"], x["b"]) for x in within] == [
        ("MPT_KL-b2-seed1", "MPT_KL-b2-seed2"), ("MPT_KL-b2-seed1", "MPT_KL-b2-seed3"),
        ("MPT_KL-b2-seed2", "MPT_KL-b2-seed3"), ("MPT_KL-b4-seed1", "MPT_KL-b4-seed2"),
        ("No_Treatment-seed1", "No_Treatment-seed2")]
    for family in (within, [x for x in report["pairs"] if not x["same_group"]]):
        assert [x["p_holm"] for x in family] == pytest.approx(flips.holm([x["mcnemar_p"] for x in family]))
    # Welch between the groups of >= 2 runs: all three
    assert [(c["a"], c["b"]) for c in report["group_comparisons"]] == [
        ("MPT_KL-b2", "MPT_KL-b4"), ("MPT_KL-b2", "No_Treatment"), ("MPT_KL-b4", "No_Treatment")]
    # flips.csv: the 9 old-class samples, each flip count by hand
    with open(out / "flips.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(9))
    by_hand = [sum(s in flipped for flipped in STUDY.values()) for s in range(9)]
    assert [int(r["flips"]) for r in rows] == by_hand == [6, 2, 1, 2, 1, 0, 3, 1, 0]
    assert rows[0]["true_name"] == "a" and rows[0]["pred[MPT_KL-b2-seed3]"] == "4"
    assert_figure(out / "nfr_vs_b.png", 200, 150)
    assert (out / "flip_matrix_MPT_KL-b4-seed2.png").is_file()
    md = (out / "flips.md").read_text()
    assert md.index("| MPT_KL-b2 | 3 |") < md.index("| MPT_KL-b2-seed1 |")


def test_baseline_pairs_only_with_it(tmp_path):
    runs = write_study(tmp_path / "runs")
    report = flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "100",
                         "--baseline", "No_Treatment-seed1"])
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [
        (label, "No_Treatment-seed1") for label in ("MPT_KL-b2-seed1", "MPT_KL-b2-seed2", "MPT_KL-b2-seed3",
                                                    "MPT_KL-b4-seed1", "MPT_KL-b4-seed2", "No_Treatment-seed2")]
    assert [x["same_group"] for x in report["pairs"]] == [False] * 5 + [True]
    across = report["pairs"][:5]
    assert [x["p_holm"] for x in across] == pytest.approx(flips.holm([x["mcnemar_p"] for x in across]))
    assert report["pairs"][5]["p_holm"] == report["pairs"][5]["mcnemar_p"]   # a family of one
    assert [(c["a"], c["b"]) for c in report["group_comparisons"]] == [
        ("MPT_KL-b2", "No_Treatment"), ("MPT_KL-b4", "No_Treatment")]
    # the folder works as well as the label
    again = flips.main([*map(str, runs), "--out", str(tmp_path / "out2"), "--resamples", "100",
                        "--baseline", str(runs[5])])
    assert again["pairs"] == report["pairs"]


def test_baseline_must_be_one_of_the_runs(tmp_path, capsys):
    runs = write_study(tmp_path / "runs")
    proc = call_flips(capsys, *runs[:2], "--out", tmp_path / "out", "--baseline", "PCT_KL-seed9")
    assert proc.returncode == 2 and "PCT_KL-seed9" in proc.stderr and "MPT_KL-b2-seed1" in proc.stderr


def test_flipped_samples_from_an_image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for i, t in enumerate(STUDY_TARGETS):
        folder = root / "test" / "abcdef"[t]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (20 * i, 0, 0)).save(folder / f"{i:04d}.png")
    runs = write_study(tmp_path / "runs")
    flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "20", "--data-root", str(root)])
    with open(tmp_path / "out" / "flips.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows[:4]] == ["test/a/0000.png", "test/a/0001.png", "test/a/0002.png",
                                             "test/b/0003.png"]
    assert_figure(tmp_path / "out" / "flipped_samples.png", 200, 150)


def test_test_images_of_torchvision_cifar_pickles(tmp_path):
    import pickle

    from utils.image_files import TestImages

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": data, "labels": [3, 1]}, f)
    images = TestImages("cifar10", tmp_path)
    assert images.paths is None and images.targets.tolist() == [3, 1]
    # CHW rows of the pickle, shown as HWC
    np.testing.assert_array_equal(images.image(1), data[1].reshape(3, 32, 32).transpose(1, 2, 0))


def test_large_class_counts_get_top_confusions_and_compact_json(tmp_path):
    rng = np.random.default_rng(0)
    n, classes = 3000, 80
    targets = rng.integers(0, classes, n)
    old_pred = np.where(rng.random(n) < 0.7, targets, rng.integers(0, 40, n))
    pred = np.where(rng.random(n) < 0.6, targets, rng.integers(0, classes, n))
    run = write_run(tmp_path / "r", targets=targets, old_pred=old_pred, pred=pred, num_old=40,
                    classes=[f"c{i}" for i in range(classes)], dataset="cifar100")
    report = flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "20"])
    out = tmp_path / "out"
    assert (out / "top_confusions.png").is_file() and not list(out.glob("flip_matrix_*"))
    triples = report["runs"][0]["flip_to"]
    assert sum(t[2] for t in triples) == flip_indicators(targets, old_pred, pred, 40).negative.sum()
    text = (out / "flips.json").read_text()
    assert len(text.splitlines()) < 100  # numbers on lines of their own would be thousands of lines
    assert strict_json(out / "flips.json") == report


@pytest.mark.slow
def test_import_leaves_torch_unloaded():
    proc = subprocess.run([sys.executable, "-c", "import sys, tools.flips, tools.flip_figures; "
                           "print('torch' in sys.modules)"], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=120)
    assert_ok(proc)
    assert proc.stdout.strip() == "False"


def test_the_kind_of_update_names_runs_apart(tmp_path):
    """Runs of a data-growth update and a class-incremental one (results.json's "setting") never
    share a label or a group."""
    runs = write_study(tmp_path / "runs")[5:]
    results = json.loads((runs[1] / "results.json").read_text())
    results["setting"] = {"old_fraction": 0.5, "old_data_fraction": 0.5}
    results["config"]["seed"] = 1
    (runs[1] / "results.json").write_text(json.dumps(results))
    report = flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "20"])
    assert [r["label"] for r in report["runs"]] == ["No_Treatment-old_data_fraction=1-seed1",
                                                    "No_Treatment-old_data_fraction=0.5-seed1"]
    assert len(report["groups"]) == 2


def test_stored_margins_come_before_the_logits(tmp_path):
    """A predictions.npz with fp32 margins (main.py now writes them) is read for them, not for
    its float16 logits; the old model's NaN margins on new-class samples are never read."""
    n = len(TARGETS)
    margin = np.where(np.array(PRED) == np.array(TARGETS), 3.0, -3.0).astype(np.float32)
    old_margin = np.where(np.array(OLD_PRED) == np.array(TARGETS), 0.5, -0.5).astype(np.float32)
    old_margin[np.array(TARGETS) >= 2] = np.nan
    logits = np.zeros((n, 4), np.float16)  # all ties: margins 0 if they were read
    run = write_run(tmp_path / "r", npz={"margin": margin, "old_margin": old_margin, "logits": logits})
    report = flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "20"])
    assert report["runs"][0]["margin"] == {"old_model_median": 0.5, "median": 3.0,
                                           "share_below_zero_of_old_correct": pytest.approx(40.0)}
    with open(tmp_path / "out" / "flips.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["margin[MPT_KL-b4-seed0]"] for r in rows[:3]] == ["3", "-3", "-3"]
    assert rows[0]["old_margin"] == "0.5"


def test_a_same_class_update_counts_every_sample_and_has_no_flips_into_new_classes(tmp_path):
    """C_old = C (--old-fraction 1.0): every test sample is an old-class one; the share of flips
    into new classes is undefined (null), not 0, and the flip split draws no new-class part."""
    run = write_run(tmp_path / "r", num_old=4, old_fraction=1.0)
    flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "50"])
    entry = strict_json(tmp_path / "out" / "flips.json")["runs"][0]
    negative = sum(o == t and p != t for t, o, p in zip(TARGETS, OLD_PRED, PRED))
    assert entry["n_old"] == len(TARGETS) and entry["nfr"] == pytest.approx(100 * negative / len(TARGETS))
    assert entry["flips_to_new_classes"] is None
    assert sum(count for _, _, count in entry["flip_to"]) == negative


# ---------------------------------------------------------------------------------------------
# Inference at the right unit: seeds for methods, test samples for trained models
# ---------------------------------------------------------------------------------------------
def test_inference_over_seeds_and_over_samples_on_hand_made_runs(tmp_path):
    """Each group's t-interval of the mean over its seeds, Welch's t and df between groups (both
    scipy's), ER(Y_old)'s bootstrap interval per run, and the pairs marked same_group with Holm
    inside each family."""
    from scipy.stats import t, ttest_ind

    runs = write_study(tmp_path / "runs")[:4]   # MPT_KL-b2 (3 seeds), MPT_KL-b4 (1 run)
    report = flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "300",
                         "--confidence", "0.9"])
    entries = {e["label"]: e for e in report["runs"]}
    groups = {g["label"]: g for g in report["groups"]}
    b2 = groups["MPT_KL-b2"]
    for key in ("nfr", "rel_nfr", "er_old", "er_all"):
        values = [entries[r][key] for r in b2["runs"]]
        expected = t.interval(0.9, 2, loc=np.mean(values), scale=np.std(values, ddof=1) / math.sqrt(3))
        assert b2[f"{key}_mean_ci"] == pytest.approx(list(expected)), key
    assert groups["MPT_KL-b4"]["nfr_mean_ci"] == [None, None]   # one run: no interval over seeds
    # NFR of b2 by hand: 1, 2, 3 of the 9 old-class samples
    assert b2["nfr_mean_ci"] == pytest.approx(list(t.interval(0.9, 2, loc=200 / 9, scale=100 / 9 / math.sqrt(3))))
    # ER(Y_old): bootstrap over the old-class samples, the same resamples as the other rates
    for e, run in zip(report["runs"], runs):
        a = np.load(run / "predictions.npz")
        wrong = (a["pred"] != a["targets"])[a["targets"] < 3]
        assert e["er_old_ci"] == pytest.approx(list(bootstrap_interval(rate, wrong, resamples=300, confidence=0.9,
                                                                       seed=0)))
        assert e["er_old_ci"][0] <= e["er_old"] <= e["er_old_ci"][1]

    # Welch between groups of >= 2 runs, against scipy
    more = write_study(tmp_path / "more")
    report = flips.main([*map(str, more), "--out", str(tmp_path / "out2"), "--resamples", "100"])
    nfr = {e["label"]: e["nfr"] for e in report["runs"]}
    groups = {g["label"]: g for g in report["groups"]}
    assert len(report["group_comparisons"]) == 3
    for c in report["group_comparisons"]:
        a, b = ([nfr[r] for r in groups[g]["runs"]] for g in (c["a"], c["b"]))
        expected = ttest_ind(a, b, equal_var=False)
        assert (c["welch_t"], c["welch_df"], c["welch_p"]) == pytest.approx(
            (expected.statistic, expected.df, expected.pvalue))
        assert c["nfr_diff_ci"] == pytest.approx(list(expected.confidence_interval(0.95)))
        assert (c["n_a"], c["n_b"]) == (len(a), len(b))
    assert [c["p_holm"] for c in report["group_comparisons"]] == pytest.approx(
        flips.holm([c["welch_p"] for c in report["group_comparisons"]]))
    # the pairs: same_group exactly where both runs are of one group; Holm within each family
    label_group = {e["label"]: e["group"] for e in report["runs"]}
    for p in report["pairs"]:
        assert p["same_group"] == (label_group[p["a"]] == label_group[p["b"]])
    for family in (True, False):
        members = [p for p in report["pairs"] if p["same_group"] is family]
        assert members and [p["p_holm"] for p in members] == pytest.approx(
            flips.holm([p["mcnemar_p"] for p in members]))
    # flips.md: the comparisons over seeds (Welch t and df) before those over the test samples,
    # each headed with what it can show
    md = (tmp_path / "out2" / "flips.md").read_text()
    seeds = md.index("### Comparisons of groups over seeds")
    samples = md.index("### Pairs of runs over the test samples (whether two trained models differ, not "
                       "whether two methods do")
    assert md.index("### Groups") < seeds < samples
    assert "| a | b | Runs a / b | NFR(a) - NFR(b) | Welch t | Welch df | Welch p | Holm p |" in md
    c = report["group_comparisons"][0]
    assert f"| {c['a']} | {c['b']} | 3 / 2 | " in md and f"| {c['welch_t']:.2f} | {c['welch_df']:.2f} |" in md
    within, across = md.index("#### Two seeds of one group"), md.index("#### Runs of two groups")
    assert samples < within < across
    assert "Holm over these 5 pairs" in md and "Holm over these 16 pairs" in md
    # the groups' cells: mean ± sd [t-interval]
    b2 = groups["MPT_KL-b2"]
    assert f"| MPT_KL-b2 | 3 | {b2['nfr_mean']:.2f} ± {b2['nfr_sd']:.2f} [{b2['nfr_mean_ci'][0]:.2f}, " in md


def test_resamples_where_rel_nfr_is_undefined_are_counted(tmp_path):
    """The updated model wrong on one old-class sample alone: every resample without it has
    ER(Y_old) = 0 and no Rel-NFR; they are counted, left out of the interval and reported."""
    from utils.metrics import bootstrap_rates

    pred = [t if t < 2 else 0 for t in TARGETS]
    pred[1] = 1                          # sample 1: the old model right (cat), the updated wrong
    run = write_run(tmp_path / "r", pred=pred)
    report = flips.main([str(run), "--out", str(tmp_path / "out"), "--resamples", "200"])
    f = flip_indicators(TARGETS, OLD_PRED, pred, 2)
    rates = bootstrap_rates(np.stack([f.negative, f.old_correct, f.new_correct], axis=1), 200, 0)
    expected = int(np.sum((rates[:, 2] == 100) | (rates[:, 1] == 0)))
    entry = report["runs"][0]
    assert 0 < expected < 200 and entry["rel_nfr_undefined_resamples"] == expected
    assert entry["rel_nfr_ci"] == pytest.approx(list(flip_intervals(f, resamples=200)["rel_nfr"]))
    md = (tmp_path / "out" / "flips.md").read_text()
    assert f"left out of its interval): MPT_KL-b4-seed0 {expected} of 200." in md
    # a run whose Rel-NFR is defined in every resample says so
    report = flips.main([str(write_run(tmp_path / "s")), "--out", str(tmp_path / "out2"), "--resamples", "50"])
    assert report["runs"][0]["rel_nfr_undefined_resamples"] == 0
    assert "left out of its interval): none." in (tmp_path / "out2" / "flips.md").read_text()


# ---------------------------------------------------------------------------------------------
# Provenance, folders of predictions alone, figures
# ---------------------------------------------------------------------------------------------
A, B = "a" * 40, "b" * 40


def test_runs_of_other_code_are_marked(tmp_path):
    folders = [write_run(tmp_path / "r1", code={"commit": A, "dirty": False}),
               write_run(tmp_path / "r2", method="PCT_KL", code={"commit": A, "dirty": True}),
               write_run(tmp_path / "r3", method="No_Treatment", code={"commit": B, "dirty": False}),
               write_run(tmp_path / "r4", method="PCT_LM")]   # no "code": an older record
    report = flips.main([*map(str, folders), "--out", str(tmp_path / "out"), "--resamples", "20"])
    assert [e["code"] for e in report["runs"]] == [{"commit": A, "dirty": False}, {"commit": A, "dirty": True},
                                                   {"commit": B, "dirty": False}, None]
    assert [g["commits"] for g in report["groups"]] == [[A], [A], [B], []]
    md = (tmp_path / "out" / "flips.md").read_text()
    runs_table = md[md.index("### Runs"):md.index("### Pairs")]
    assert runs_table.splitlines()[2].endswith("| Flips into new classes (%) | Code |")
    cells = [line.rsplit("|", 2)[1].strip() for line in runs_table.splitlines()[4:8]]
    assert cells == ["a", "a*", "b", "?"]
    assert (f"Code: a = commit {A[:12]}; b = commit {B[:12]}; * = from a working tree with changes to that "
            "commit's tracked files (dirty); ? = code not recorded") in md
    # runs of one commit, clean: no column, a line naming the commit
    same = [write_run(tmp_path / f"s{i}", method=m, code={"commit": A, "dirty": False})
            for i, m in enumerate(("MPT_KL", "PCT_KL"))]
    flips.main([*map(str, same), "--out", str(tmp_path / "out2"), "--resamples", "20"])
    md = (tmp_path / "out2" / "flips.md").read_text()
    assert "| Code |" not in md and f"Code: every run made by commit {A[:12]}." in md


def write_predictions_alone(folder, targets=TARGETS, old_pred=OLD_PRED, pred=PRED, num_old=2, logits=True):
    """A folder with a predictions.npz alone, in the format of utils.outputs.save_predictions:
    targets, old_pred, pred, num_old and, with logits, margin, old_margin, logits, old_logits."""
    folder.mkdir(parents=True)
    arrays = {"targets": np.asarray(targets, np.int64), "old_pred": np.asarray(old_pred, np.int64),
              "pred": np.asarray(pred, np.int64), "num_old": np.int64(num_old)}
    if logits:
        n = len(targets)
        z = np.zeros((n, 4), np.float32)
        z[np.arange(n), pred] = 2.0
        old_z = np.zeros((n, num_old), np.float32)
        old_z[np.arange(n), np.minimum(old_pred, num_old - 1)] = 1.0
        old_margin = np.full(n, np.nan, np.float32)
        old = np.asarray(targets) < num_old
        old_margin[old] = margins(old_z[old], np.asarray(targets)[old])
        arrays.update(margin=margins(z, targets), old_margin=old_margin, logits=z.astype(np.float16),
                      old_logits=old_z.astype(np.float16))
    np.savez(folder / "predictions.npz", **arrays)
    return folder


def test_a_folder_of_predictions_alone(tmp_path):
    elsewhere = write_predictions_alone(tmp_path / "model_from_elsewhere")
    plain = write_predictions_alone(tmp_path / "other" / "plain", pred=[1, 1, 3, 1, 0, 0, 2, 2, 2, 0], logits=False)
    run = write_run(tmp_path / "r")
    report = flips.main([str(elsewhere), str(plain), str(run), "--out", str(tmp_path / "out"), "--resamples", "50"])
    first, second, third = report["runs"]
    # named by its folder, no seed, no method, a group of its own
    assert (first["label"], first["group"], first["seed"], first["method"]) == (
        "model_from_elsewhere", "model_from_elsewhere", None, None)
    assert (second["label"], third["label"]) == ("plain", "MPT_KL-b4-seed0")
    assert [g["label"] for g in report["groups"]] == ["model_from_elsewhere", "plain", "MPT_KL-b4"]
    assert all(g["n"] == 1 for g in report["groups"]) and not report["group_comparisons"]
    # C_old from the predictions' num_old, C from the logits; the same rates as the run's
    assert first["num_old"] == 2 and first["nfr"] == third["nfr"] == pytest.approx(200 / 7)
    assert first["margin"]["median"] == 2.0 and "margin" not in second
    assert second["nfr"] == pytest.approx(400 / 7)
    # compared over the test samples with the others; never a pair of one group
    assert [(p["a"], p["b"], p["same_group"]) for p in report["pairs"]] == [
        ("model_from_elsewhere", "plain", False), ("model_from_elsewhere", "MPT_KL-b4-seed0", False),
        ("plain", "MPT_KL-b4-seed0", False)]
    # the settings of the runs with results.json are not compared with an empty config
    assert third["label"] == "MPT_KL-b4-seed0"
    # two folders of one name stay apart
    twin = write_predictions_alone(tmp_path / "again" / "model_from_elsewhere")
    report = flips.main([str(elsewhere), str(twin), "--out", str(tmp_path / "out2"), "--resamples", "20"])
    assert [e["label"] for e in report["runs"]] == ["model_from_elsewhere", "model_from_elsewhere#2"]
    assert len(report["groups"]) == 2 and not report["pairs"][0]["same_group"]


def test_a_folder_without_predictions_or_results_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    proc = call_flips(capsys, tmp_path / "empty", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "results.json or predictions.npz" in proc.stderr


def test_nfr_vs_b_draws_no_error_bar_for_one_run(tmp_path, saved_figures):
    from matplotlib.container import ErrorbarContainer

    runs = write_study(tmp_path / "runs")[:4]      # b = 2: 3 runs; b = 4: 1 run
    flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "20"])
    fig = saved_figures["nfr_vs_b.png"]
    nfr_ax = fig.axes[0]
    bars = [c for c in nfr_ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    (segments,) = [lc.get_segments() for lc in bars[0].lines[2]]
    assert len(segments) == 1 and segments[0][0][0] == 2.0   # one bar, at b = 2
    (line,) = nfr_ax.get_lines()[:1]
    assert list(line.get_xdata()) == [2.0, 4.0]               # both points drawn


def test_nfr_vs_b_puts_the_nobias_ablation_at_b_0(tmp_path, saved_figures):
    """A _nobias group is its method's point at b = 0: on MPT_KL's curve, its group's b is 0."""
    runs = write_study(tmp_path / "runs")[:5]      # MPT_KL at b = 2 (3 runs) and b = 4 (2 runs)
    for seed, flipped in ((1, {0: 3, 1: 3, 2: 4}), (2, {0: 3, 1: 4})):
        pred = list(STUDY_TARGETS)
        for sample, to in flipped.items():
            pred[sample] = to
        run = write_run(tmp_path / "runs" / f"nobias-{seed}", targets=STUDY_TARGETS, old_pred=STUDY_OLD,
                        pred=pred, method="MPT_KL_nobias", num_old=3, classes=list("abcdef"), seed=seed)
        results = json.loads((run / "results.json").read_text())
        del results["config"]["b"]
        (run / "results.json").write_text(json.dumps(results))
        runs.append(run)
    report = flips.main([*map(str, runs), "--out", str(tmp_path / "out"), "--resamples", "20"])
    groups = {g["label"]: g for g in report["groups"]}
    assert groups["MPT_KL_nobias"]["b"] == 0.0 and groups["MPT_KL_nobias"]["curve"] == "MPT_KL"
    line = saved_figures["nfr_vs_b.png"].axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0.0, 2.0, 4.0]
    # NFR over the 8 old-class samples the old model gets right of 9: 3 and 2 flips at b = 0
    assert line.get_ydata()[0] == pytest.approx(100 * 2.5 / 9)
    assert "b = 0: MPT_KL_nobias" in line.get_label()


def test_flipped_samples_are_stratified_over_classes():
    from tools.flip_figures import stratified_samples

    targets = [0, 0, 0, 0, 1, 1, 2, 3]
    flip_counts = [3, 2, 2, 1, 1, 0, 1, 0]
    # round 1: each class with a flip gives its most flipped (0: sample 0, 1: sample 4, 2: sample 6);
    # round 2: class 0 alone has more (samples 1 and 2 tie at 2 flips: the lower index first)
    assert stratified_samples(targets, flip_counts, np.arange(8), count=4) == [0, 4, 6, 1]
    assert stratified_samples(targets, flip_counts, np.arange(8)) == [0, 4, 6, 1, 2, 3]
    assert stratified_samples(targets, [0] * 8, np.arange(8)) == []


def test_images_of_a_folder_of_predictions_alone(tmp_path, capsys):
    """The images are named by a run of the same test samples that records its data set; without
    one, a warning and no images."""
    from PIL import Image

    root = tmp_path / "data"
    for i, t in enumerate(STUDY_TARGETS):
        folder = root / "test" / "abcdef"[t]
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"{i:04d}.png")
    alone = write_predictions_alone(tmp_path / "alone", targets=STUDY_TARGETS, old_pred=STUDY_OLD,
                                    pred=[3] + STUDY_TARGETS[1:], num_old=3, logits=False)
    run = write_study(tmp_path / "runs")[0]
    proc = call_flips(capsys, alone, run, "--out", tmp_path / "out", "--resamples", "20", "--data-root", root)
    assert proc.returncode == 0 and (tmp_path / "out" / "flipped_samples.png").is_file()
    with open(tmp_path / "out" / "flips.csv") as f:
        assert next(csv.DictReader(f))["path"] == "test/a/0000.png"
    proc = call_flips(capsys, alone, "--out", tmp_path / "out2", "--resamples", "20", "--data-root", root)
    assert proc.returncode == 0 and "records no data set" in proc.stderr
    assert not (tmp_path / "out2" / "flipped_samples.png").exists()
