"""python -m tools.flips and its statistics on hand-made predictions with answers counted by hand."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_ok, script_env
from tools import flips
from utils.metrics import (bootstrap, bootstrap_interval, bootstrap_rates, flip_indicators, flip_intervals,
                           flip_metrics, margins, margins_agreeing_with, percentile_interval, rate)

# Ten test samples, 4 classes, C_old = 2 (classes 0 and 1 are old); as in tests/utils/test_metrics.py.
#   sample      0  1  2  3  4  5  6  7  8  9
TARGETS = [0, 0, 1, 1, 1, 0, 2, 3, 2, 1]
OLD_PRED = [0, 0, 1, 0, 0, 0, 1, 0, 1, 1]
PRED = [0, 1, 3, 1, 0, 0, 2, 2, 2, 1]
# Class 0: samples 0 1 5; negative flip 1 (0 -> 1).
# Class 1: samples 2 3 4 9; negative flip 2 (1 -> 3), positive flip 3.
CLASSES = ["cat", "dog", "car", "ship"]


def write_run(folder, targets=TARGETS, old_pred=OLD_PRED, pred=PRED, role="update", method="MPT_KL",
              num_old=2, classes=CLASSES, dataset="cifar10", old_fraction=None, npz=None):
    """A run folder as main.py writes it: results.json (metrics from flip_metrics) and
    predictions.npz; ``num_old=None`` / ``classes=None`` leave them out, ``npz`` adds arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"method": method, "dataset": dataset, "old_ckpt": "old.pth", "seed": 0, "b": 4.0}
    if old_fraction is not None:
        config["old_fraction"] = old_fraction
    results = {"role": role, "checkpoint": str(folder / "checkpoint.pth"), "config": config}
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


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_samples():
    rng = np.random.default_rng(1)
    x = rng.random(200) < 0.3
    point = rate(x)
    low, high = bootstrap_interval(rate, x, resamples=2000, seed=0)
    assert low < point < high
    more = np.tile(x, 25)  # the same rate on 25 times the samples: about a fifth of the width
    low25, high25 = bootstrap_interval(rate, more, resamples=2000, seed=0)
    assert low25 < point < high25
    assert (high25 - low25) < 0.4 * (high - low)
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
    assert ci["nfr"][0] < metrics["nfr"] < ci["nfr"][1]
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
    # float16 rounding: a sample predicted right (fp32 argmax) whose rounded margin is -0.01, one
    # predicted wrong whose rounded margin is +0.01: both are ties, 0; the others keep theirs
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
    for key in ("nfr", "rel_nfr", "er_all"):
        low, high = first[f"{key}_ci"]
        assert low <= first[key] <= high, key
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
        assert (out / f"flip_matrix_{label}.png").stat().st_size > 0, label
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
    assert (tmp_path / "out" / "margins.png").stat().st_size > 0


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
