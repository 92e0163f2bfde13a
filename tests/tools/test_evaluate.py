"""tools.evaluate: scoring checkpoints without training gives main.py's own results."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, assert_ok, common_args, run_script, script_env


def evaluate(*args) -> subprocess.CompletedProcess:
    """``python -m tools.evaluate ARGS`` as a user runs it, from the repository."""
    return subprocess.run([sys.executable, "-m", "tools.evaluate", *map(str, args)], cwd=REPO,
                          env=script_env(), capture_output=True, text=True, timeout=300)

METRICS = ("er_old", "er_all", "nfr", "rel_nfr", "pfr", "er_old_model")


@pytest.mark.slow
def test_evaluate_reproduces_main_py(tiny_data, old_ckpt, new_ckpt, tmp_path):
    """The same metrics and predictions as main.py, and the model's own training settings in
    results.json (none of them the scripts' defaults), so that tools.tables puts it in its row."""
    run = tmp_path / "run"
    trained_with = {"seed": 43, "lr": 0.01, "batch_size": 64, "epochs": 1}
    assert_ok(run_script("main.py", *common_args(tiny_data, **trained_with), "--method", "MPT_KL",
                         "--old-ckpt", old_ckpt, "--new-ckpt", new_ckpt, "--output-dir", run))
    out = tmp_path / "eval"
    proc = evaluate("--old-ckpt", old_ckpt, "--ckpt", run / "checkpoint.pth",
                      "--output-dir", out, "--device", "cpu")
    assert_ok(proc)
    trained, scored = (json.loads((d / "results.json").read_text()) for d in (run, out))
    assert {m: scored[m] for m in METRICS} == {m: trained[m] for m in METRICS}
    assert {k: scored["config"][k] for k in trained_with} == trained_with
    assert scored["config"] == trained["config"]
    assert scored["setting"] == trained["setting"]  # the same kind of update: the same table
    assert scored["evaluated"]["flags"]["device"] == "cpu" and "seed" not in scored["evaluated"]["flags"]
    a, b = np.load(run / "predictions.npz"), np.load(out / "predictions.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:  # NaN equal to NaN: the old model has no margin on new-class samples
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_evaluate_scores_a_new_reference_model(tiny_data, old_ckpt, new_ckpt, tmp_path):
    """The new reference model scored as an update of the old one: its er_all is the one its own
    run reported."""
    out = tmp_path / "eval"
    assert_ok(evaluate("--old-ckpt", old_ckpt, "--ckpt", new_ckpt,
                         "--output-dir", out, "--device", "cpu", "--data-root", tiny_data))
    scored = json.loads((out / "results.json").read_text())
    new_run = json.loads((new_ckpt.parent / "run" / "results.json").read_text())
    assert scored["er_all"] == new_run["er_all"] and scored["er_old"] == new_run["er_old"]
    assert scored["evaluated"]["role"] == "new"
    saved = np.load(out / "predictions.npz")  # NFR counted here from the predictions it wrote
    y, on_old = saved["targets"], saved["targets"] < int(saved["num_old"])
    flips = (saved["old_pred"][on_old] == y[on_old]) & (saved["pred"][on_old] != y[on_old])
    assert scored["nfr"] == pytest.approx(100 * flips.mean())


@pytest.mark.slow
def test_evaluate_refuses_a_missing_checkpoint(tmp_path, old_ckpt):
    proc = evaluate("--old-ckpt", old_ckpt, "--ckpt", tmp_path / "nope.pth",
                      "--output-dir", tmp_path / "out")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
